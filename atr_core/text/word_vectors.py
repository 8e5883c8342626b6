"""Caption text features: the tokeniser rule and word2vec vectors (reference section 3, decision 1).

Tokeniser rule (the project's documented replacement for the authors' spaCy + SymSpell chain):

1. Unicode NFC; typographic apostrophes (U+2019, U+2018) become ``'``.
2. Word tokens are maximal runs of letters and digits, joined by inner apostrophes
   (regex ``[^\\W_]+(?:'[^\\W_]+)*``): ``"A dog's bark, 2 times!"`` -> ``A dog's bark 2 times``.
   Everything else (punctuation, underscores, symbols) separates tokens and is never a token.
3. Each token is looked up in the vocabulary as its surface form first, then lower-case, then
   Title case (first letter upper, rest lower); the first form found is kept.
4. Tokens still out of vocabulary are dropped. A caption with no token left becomes one row, the
   "unknown" vector: the mean of the vectors of the first 50,000 vocabulary words in lexicographic
   (code point) order.

The same caption always gives the same tokens. Captions are then cut to the first ``max_words``
kept tokens and zero-padded, with a 0/1 mask.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Container, Iterable
from functools import cached_property
from pathlib import Path

import numpy as np
from gensim.models import KeyedVectors, Word2Vec

from atr_core import __version__
from atr_core.errors import InputError, WordVectorsError
from atr_core.formats.sidecar import read_sidecar
from atr_core.runtime.storage import fetch, is_remote, open_uri, sha256_file

MAX_WORDS = 20
UNKNOWN_VOCAB_WORDS = 50_000
TRAIN_PREFIX = "train:"
TRAINED_SHA256 = "trained"
VECTORS_FILE = "vectors.bin"
IDENTITY_FILE = "identity.json"
IDENTITY_SCHEMA_VERSION = 1
IDENTITY_KIND = "atr-word-vectors"

_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})


def tokenize(caption: str, vocab: Container[str] | None = None) -> list[str]:
    """Word tokens of ``caption`` by the project rule (module docstring).

    Without ``vocab``: the surface word tokens. With ``vocab``: each token resolved to the first of
    (surface, lower, Title) in ``vocab``; tokens with no form in ``vocab`` are dropped.
    """
    if not isinstance(caption, str):
        raise InputError(f"caption must be a string, got {type(caption).__name__}: {caption!r}")
    words = _TOKEN_RE.findall(unicodedata.normalize("NFC", caption).translate(_APOSTROPHES))
    if vocab is None:
        return words
    kept = []
    for word in words:
        for form in (word, word.lower(), word[:1].upper() + word[1:].lower()):
            if form in vocab:
                kept.append(form)
                break
    return kept


def train_dim(spec: str) -> int | None:
    """The DIM of a ``train:DIM`` word-vectors spec, or None for a file spec."""
    if not spec.startswith(TRAIN_PREFIX):
        return None
    raw = spec[len(TRAIN_PREFIX) :]
    if not raw.isdigit() or int(raw) < 1:
        raise WordVectorsError(f"{spec}: expected train:DIM with a positive integer DIM")
    return int(raw)


class WordVectors:
    """word2vec vectors plus the caption -> matrix encoding used by training, embedding and search."""

    def __init__(self, kv: KeyedVectors, identity: dict):
        if len(kv) == 0:
            raise WordVectorsError(f"{identity.get('source', '?')}: word vectors have an empty vocabulary")
        self.kv = kv
        self.dim = int(kv.vector_size)
        self.identity = {**identity, "vocab_size": len(kv), "dim": self.dim}

    def __len__(self) -> int:
        return len(self.kv)

    @cached_property
    def unknown_vector(self) -> np.ndarray:
        """Mean vector of the first 50,000 vocabulary words in sorted order (computed once)."""
        first = sorted(self.kv.key_to_index)[:UNKNOWN_VOCAB_WORDS]
        idx = np.fromiter((self.kv.key_to_index[w] for w in first), dtype=np.int64, count=len(first))
        return self.kv.vectors[idx].astype(np.float64).mean(axis=0).astype(np.float32)

    def tokens(self, caption: str) -> list[str]:
        """The vocabulary keys kept for ``caption`` (may be empty)."""
        return tokenize(caption, self.kv.key_to_index)

    def lookup(self, caption: str) -> np.ndarray:
        """(n_kept, dim) float32 vectors of the kept tokens; one unknown-vector row if none is kept."""
        keys = self.tokens(caption)
        if not keys:
            return self.unknown_vector[None, :].copy()
        idx = [self.kv.key_to_index[k] for k in keys]
        return np.asarray(self.kv.vectors[idx], dtype=np.float32)

    def encode(self, caption: str, max_words: int = MAX_WORDS) -> tuple[np.ndarray, np.ndarray]:
        """(max_words, dim) zero-padded matrix of the first ``max_words`` kept tokens, and its 0/1 mask."""
        if max_words < 1:
            raise InputError(f"max_words must be >= 1, got {max_words}")
        vecs = self.lookup(caption)[:max_words]
        out = np.zeros((max_words, self.dim), dtype=np.float32)
        mask = np.zeros(max_words, dtype=np.float32)
        out[: len(vecs)] = vecs
        mask[: len(vecs)] = 1.0
        return out, mask

    def encode_many(
        self, captions: Iterable[str], max_words: int = MAX_WORDS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stacked :meth:`encode`: (N, max_words, dim) float32 and (N, max_words) float32 masks."""
        mats, masks = [], []
        for i, caption in enumerate(captions):
            try:
                mat, mask = self.encode(caption, max_words)
            except InputError as exc:
                raise InputError(f"caption {i}: {exc}") from exc
            mats.append(mat)
            masks.append(mask)
        if not mats:
            return np.zeros((0, max_words, self.dim), np.float32), np.zeros((0, max_words), np.float32)
        return np.stack(mats), np.stack(masks)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vectors.bin`` (word2vec binary) and ``identity.json`` into a local directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".vectors-", suffix=".bin")
        os.close(fd)
        try:
            self.kv.save_word2vec_format(tmp, binary=True)
            os.replace(tmp, d / VECTORS_FILE)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        meta = {
            "schema_version": IDENTITY_SCHEMA_VERSION,
            "kind": IDENTITY_KIND,
            "package_version": __version__,
            "identity": self.identity,
        }
        tmp_json = d / f".{IDENTITY_FILE}.tmp"
        tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp_json, d / IDENTITY_FILE)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> WordVectors:
        """Load vectors written by :meth:`save`; check the file against the recorded identity."""
        d = Path(directory)
        meta = read_sidecar(
            str(d / IDENTITY_FILE), kind=IDENTITY_KIND, schema_version=IDENTITY_SCHEMA_VERSION,
            what="word-vectors identity", missing=WordVectorsError,
            missing_hint="not a saved word-vectors directory",
        )
        identity = meta["identity"]
        kv = _read_word2vec(d / VECTORS_FILE, str(d / VECTORS_FILE), limit=None)
        actual = {"vocab_size": len(kv), "dim": int(kv.vector_size)}
        if "content_sha256" in identity:
            actual["content_sha256"] = content_sha256(kv)
        for key, value in actual.items():
            if identity.get(key) != value:
                raise WordVectorsError(
                    f"{d}: {key} of {VECTORS_FILE} is {value!r} but {IDENTITY_FILE} records "
                    f"{identity.get(key)!r}"
                )
        return cls(kv, identity)


def content_sha256(kv: KeyedVectors) -> str:
    """sha256 over the keys (in order) and the float32 vectors: identifies trained vectors."""
    h = hashlib.sha256()
    h.update("\n".join(kv.index_to_key).encode("utf-8"))
    h.update(np.ascontiguousarray(kv.vectors, dtype="<f4").tobytes())
    return h.hexdigest()


def load_word_vectors(
    spec: str,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> WordVectors:
    """Load a word2vec file (text or binary, optionally gzip), local, gs:// or https://.

    Args:
        spec: the file; its format is detected from the content.
        sha256: the expected checksum (checked when given).
        cache_dir: where remote files are fetched to, once (default: the atr cache).
        limit: keep only the first ``limit`` vectors.

    Returns:
        The vectors with their identity (source, sha256, vocabulary size, dim).

    Raises:
        WordVectorsError: a missing, unreadable or mismatching file, or a ``train:DIM`` spec
            (those are built by :func:`train_word_vectors`).
    """
    if train_dim(spec) is not None:
        raise WordVectorsError(
            f"{spec}: trained word vectors are built from the training captions by train_word_vectors()"
        )
    if limit is not None and limit < 1:
        raise WordVectorsError(f"{spec}: limit must be >= 1, got {limit}")
    try:
        path = fetch(spec, sha256=sha256, cache_dir=cache_dir)
    except WordVectorsError:
        raise
    except Exception as exc:  # FetchError (missing, checksum) and anything fsspec raises
        raise WordVectorsError(f"{spec}: cannot fetch word vectors: {exc}") from exc
    digest = sha256.lower() if sha256 else sha256_file(path)
    source = spec if is_remote(spec) else str(Path(spec).expanduser().resolve())
    kv = _read_word2vec(path, spec, limit=limit)
    return WordVectors(kv, {"source": source, "sha256": digest, "limit": limit})


def read_header(spec: str) -> tuple[int, int]:
    """``(vocab_size, dim)`` from the first line of a word2vec file (or a saved vectors directory).

    Reads a few bytes only (a remote file is not downloaded), so a launcher can check a 3.6 GB
    file against a model's recorded identity without loading it.

    Raises:
        WordVectorsError: missing, unreadable, or not a word2vec file.
    """
    local = Path(spec).expanduser()
    if not is_remote(spec) and (local / IDENTITY_FILE).is_file():
        meta = read_sidecar(
            str(local / IDENTITY_FILE), kind=IDENTITY_KIND, schema_version=IDENTITY_SCHEMA_VERSION,
            what="word-vectors identity", missing=WordVectorsError,
            missing_hint="not a saved word-vectors directory",
        )
        return int(meta["identity"]["vocab_size"]), int(meta["identity"]["dim"])
    try:
        with open_uri(spec) as raw:
            start = raw.read(2)
        with open_uri(spec) as raw, (gzip.open(raw, "rb") if start == b"\x1f\x8b" else raw) as f:
            header = f.readline(256)
    except (OSError, EOFError, ValueError) as exc:
        raise WordVectorsError(f"{spec}: unreadable word2vec file: {exc}") from exc
    fields = header.split()
    if len(fields) != 2 or not all(x.isdigit() for x in fields):
        raise WordVectorsError(
            f"{spec}: not a word2vec file: the first line must be '<vocab_size> <dim>', got {header[:60]!r}"
        )
    return int(fields[0]), int(fields[1])


#: Fallback vectors: at least this many epochs, and enough for this many word occurrences.
TRAIN_MIN_EPOCHS = 30
TRAIN_TARGET_TOKENS = 300_000
TRAIN_MAX_EPOCHS = 500


def train_word_vectors(
    captions: Iterable[str], dim: int, seed: int = 0, epochs: int | None = None, window: int = 5
) -> WordVectors:
    """Fallback vectors: gensim Word2Vec, skip-gram with negative sampling, on the (training) captions.

    Captions are tokenised by the same rule, lower-cased; min_count=1, one worker, seeded, so the
    result is deterministic. Skip-gram, for ``epochs`` passes (default: enough to see 300,000 word
    occurrences, at least 30 and at most 500), because a few hundred captions are far too little
    text for gensim's defaults (CBOW, 5 epochs): those leave every vector nearly parallel (mean
    pairwise cosine 0.95 on 930 captions, against 0.40 with this recipe), and the text side then
    cannot tell captions apart (docs/train.md). These vectors do not reproduce the paper's numbers.
    """
    if dim < 1:
        raise WordVectorsError(f"train:{dim}: DIM must be >= 1")
    sentences = [[w.lower() for w in tokenize(c)] for c in captions]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise WordVectorsError(f"train:{dim}: the training captions contain no word tokens")
    if epochs is None:
        tokens = sum(len(s) for s in sentences)
        epochs = min(TRAIN_MAX_EPOCHS, max(TRAIN_MIN_EPOCHS, -(-TRAIN_TARGET_TOKENS // tokens)))
    model = Word2Vec(
        sentences=sentences,
        vector_size=dim,
        window=window,
        min_count=1,
        workers=1,
        seed=seed,
        epochs=epochs,
        sg=1,
        negative=5,
    )
    kv = model.wv
    identity = {
        "source": f"{TRAIN_PREFIX}{dim}",
        "sha256": TRAINED_SHA256,
        "limit": None,
        "seed": seed,
        "epochs": epochs,
        "window": window,
        "algorithm": "skip-gram",
        "num_captions": len(sentences),
        "content_sha256": content_sha256(kv),
    }
    return WordVectors(kv, identity)


def _read_word2vec(path: Path, where: str, limit: int | None) -> KeyedVectors:
    """Sniff text/binary/gzip from the content and load with gensim; errors name ``where``."""
    gz, binary = _sniff(path, where)
    load_path = path
    with tempfile.TemporaryDirectory(prefix="atr-w2v-") as tmp:
        if gz != path.name.endswith(".gz"):
            # gensim picks (de)compression from the file name: give it a name that matches the content.
            load_path = Path(tmp) / ("vectors.bin.gz" if gz else "vectors.bin")
            os.symlink(path.resolve(), load_path)
        try:
            kv = KeyedVectors.load_word2vec_format(
                str(load_path), binary=binary, limit=limit, unicode_errors="replace"
            )
        except Exception as exc:  # EOFError, ValueError, UnicodeError, ...: all mean a bad file
            raise WordVectorsError(
                f"{where}: not a readable word2vec file: {type(exc).__name__}: {exc}"
            ) from exc
    return kv


def _sniff(path: Path, where: str) -> tuple[bool, bool]:
    """(gzip?, binary?) from the first bytes of a word2vec file."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            head = f.read(1 << 16)
    except (OSError, EOFError) as exc:
        raise WordVectorsError(f"{where}: unreadable word2vec file: {exc}") from exc
    header, sep, rest = head.partition(b"\n")
    fields = header.split()
    if not sep or len(fields) != 2 or not all(x.isdigit() for x in fields) or int(fields[1]) < 1:
        raise WordVectorsError(
            f"{where}: not a word2vec file: the first line must be '<vocab_size> <dim>', got {header[:60]!r}"
        )
    dim = int(fields[1])
    return gz, not _is_text_record(rest, dim)


def _is_text_record(rest: bytes, dim: int) -> bool:
    """True when the first record after the header is a text line 'word v1 ... v_dim'."""
    line, sep, _ = rest.partition(b"\n")
    if not sep:
        return False
    parts = line.rstrip().split(b" ")
    if len(parts) != dim + 1:
        return False
    try:
        [float(p) for p in parts[1:]]
    except ValueError:
        return False
    return True
