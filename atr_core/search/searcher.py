"""Nearest-neighbour search over retrieval vectors, and the small Python search API.

- :class:`ExactIndex`: cosine search on L2-normalised float32 vectors (one matmul, top-k with
  ``argpartition``; ties broken by row order, so results are deterministic).
- :class:`AnnIndex`: an optional faiss index (``pip install 'atr[ann]'``) for corpora past a million
  vectors; faiss is imported lazily and its absence is a clear :class:`AnnUnavailableError`.
- :class:`Searcher`: text -> clips and audio file -> captions with a trained model directory and
  the vectors written by ``pipelines.embed``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from atr_core.errors import AnnUnavailableError, ConfigMismatchError, InputError, QueryError
from atr_core.formats.vectors import VectorSet, model_identity, read_vectors, same_model_identity
from atr_core.model.padding import pad_segments

DEFAULT_K = 10
log = logging.getLogger(__name__)


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Float32 copy of ``x`` (N, E) with unit-length rows (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns of each row of ``scores`` (Q, N): (indices, scores), each (Q, min(k, N)).

    Highest score first; equal scores keep column order.
    """
    scores = np.atleast_2d(scores)
    q, n = scores.shape
    k = min(int(k), n)
    if k <= 0:
        return np.zeros((q, 0), dtype=np.int64), np.zeros((q, 0), dtype=scores.dtype)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        # Columns tied with the k-th score may sit on either side of the partition: take the
        # lowest-index ones so that ties resolve by row order whatever argpartition did.
        cand = [np.flatnonzero(row >= t) for row, t in zip(scores, kth[:, 0], strict=True)]
    else:
        cand = [np.arange(n)] * q
    idx = np.empty((q, k), dtype=np.int64)
    for i, c in enumerate(cand):
        order = np.lexsort((c, -scores[i, c]))[:k]
        idx[i] = c[order]
    return idx, np.take_along_axis(scores, idx, axis=1)


class ExactIndex:
    """Exact inner-product search over L2-normalised vectors (cosine similarity)."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, *, normalized: bool = False):
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise InputError(f"index vectors must be (N, E), got shape {vectors.shape}")
        self.vectors = np.ascontiguousarray(vectors if normalized else normalize_rows(vectors))

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(self, queries: np.ndarray, k: int = DEFAULT_K) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (Q, min(k, N)), for queries (Q, E) or (E,)."""
        q = normalize_rows(np.atleast_2d(queries))
        _check_dim(q, self.dim)
        # One query: a matrix-vector product (BLAS gemv); several: one matrix product.
        sims = (self.vectors @ q[0])[None] if q.shape[0] == 1 else q @ self.vectors.T
        idx, scores = top_k(sims, k)
        return scores, idx


def _check_dim(q: np.ndarray, dim: int) -> None:
    if q.shape[1] != dim:
        raise QueryError(f"query vectors have dimension {q.shape[1]}, the index has {dim}")


def require_faiss() -> Any:
    """Import faiss or raise :class:`AnnUnavailableError` saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise AnnUnavailableError(
            "the ANN index needs faiss, which is not installed: pip install 'atr[ann]' (faiss-cpu)"
        ) from exc
    return faiss


def default_nlist(n: int) -> int:
    """IVF list count for ``n`` vectors: a power of two near sqrt(n), between 1 and 65536.

    (faiss suggests 4-16 sqrt(n) for throughput at scale; with 2048-d vectors on a few cores the
    k-means training and assignment cost, linear in the list count, dominates, so we stay lower.)
    """
    if n <= 0:
        return 1
    target = max(1.0, math.sqrt(n))
    return int(min(65536, 2 ** round(math.log2(target))))


@dataclass(frozen=True)
class AnnSpec:
    """How an ANN index is built and searched (a faiss ``index_factory`` string + nprobe)."""

    factory: str = "auto"
    nprobe: int = 32
    train_size: int = 100_000
    seed: int = 0

    def resolved_factory(self, n: int) -> str:
        """``auto`` -> IVF-Flat with :func:`default_nlist` lists (a flat scan below 4096 vectors)."""
        if self.factory != "auto":
            return self.factory
        return "Flat" if n < 4096 else f"IVF{default_nlist(n)},Flat"


class AnnIndex:
    """An approximate inner-product index (faiss) over L2-normalised vectors."""

    kind = "ann"

    def __init__(self, index: Any, spec: AnnSpec, fingerprint: str = ""):
        self.index = index
        self.spec = spec
        self.fingerprint = fingerprint
        self._set_nprobe(spec.nprobe)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def _set_nprobe(self, nprobe: int) -> None:
        faiss = require_faiss()
        try:
            ivf = faiss.extract_index_ivf(self.index)
        except RuntimeError:
            ivf = None
        if ivf is not None:
            ivf.nprobe = int(nprobe)
        elif hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = max(int(nprobe), 16)

    @classmethod
    def empty(cls, dim: int, n_expected: int, spec: AnnSpec | None = None, fingerprint: str = "") -> AnnIndex:
        """An untrained index sized for about ``n_expected`` vectors; fill it with train + add."""
        faiss = require_faiss()
        spec = spec or AnnSpec()
        factory = spec.resolved_factory(n_expected)
        try:
            index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InputError(f"bad faiss index factory {factory!r}: {exc}") from exc
        ivf = _extract_ivf(faiss, index)
        if ivf is not None:
            ivf.cp.seed = spec.seed
        return cls(index, AnnSpec(factory, spec.nprobe, spec.train_size, spec.seed), fingerprint)

    def train(self, sample: np.ndarray, *, normalized: bool = False) -> None:
        """Train the coarse quantiser (no-op for indexes that need none) on L2-normalised vectors."""
        if self.index.is_trained:
            return
        x = np.ascontiguousarray(sample if normalized else normalize_rows(sample), dtype=np.float32)
        ivf = _extract_ivf(require_faiss(), self.index)
        if ivf is not None and x.shape[0] < ivf.nlist:
            raise InputError(
                f"ANN index {self.spec.factory!r} needs at least {ivf.nlist} training vectors, "
                f"got {x.shape[0]}"
            )
        self.index.train(x)

    def add(self, vectors: np.ndarray, *, normalized: bool = False) -> None:
        """Append vectors (ids continue from the current size); the index must be trained."""
        if not self.index.is_trained:
            raise InputError("train the ANN index before adding vectors")
        self.index.add(
            np.ascontiguousarray(vectors if normalized else normalize_rows(vectors), dtype=np.float32)
        )

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        spec: AnnSpec | None = None,
        *,
        normalized: bool = False,
        fingerprint: str = "",
    ) -> AnnIndex:
        """Train (on a seeded sample of at most ``spec.train_size`` rows) and fill an index."""
        spec = spec or AnnSpec()
        x = np.ascontiguousarray(vectors if normalized else normalize_rows(vectors), dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise InputError(f"cannot build an ANN index from vectors of shape {x.shape}")
        out = cls.empty(x.shape[1], x.shape[0], spec, fingerprint)
        if not out.index.is_trained:
            rng = np.random.default_rng(spec.seed)
            n_train = min(x.shape[0], max(spec.train_size, 1))
            sample = x if n_train == x.shape[0] else x[np.sort(rng.choice(x.shape[0], n_train, False))]
            out.train(sample, normalized=True)
        out.add(x, normalized=True)
        return out

    def search(self, queries: np.ndarray, k: int = DEFAULT_K) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (Q, min(k, N)); approximate, ``-1`` rows mean too few results."""
        q = np.ascontiguousarray(normalize_rows(np.atleast_2d(queries)))
        _check_dim(q, self.dim)
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        scores, idx = self.index.search(q, k)
        return scores, idx.astype(np.int64)

    def save(self, path: str) -> None:
        """Write the index and a JSON sidecar (spec, fingerprint) next to it, atomically."""
        faiss = require_faiss()
        tmp = f"{path}.tmp-{os.getpid()}"
        faiss.write_index(self.index, tmp)
        os.replace(tmp, path)
        meta = {"spec": asdict(self.spec), "fingerprint": self.fingerprint, "ntotal": len(self)}
        with open(f"{path}.json.tmp", "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(f"{path}.json.tmp", f"{path}.json")

    @classmethod
    def load(cls, path: str, expected_fingerprint: str | None = None) -> AnnIndex:
        """Read an index written by :meth:`save`; a different fingerprint raises ConfigMismatchError."""
        faiss = require_faiss()
        try:
            with open(f"{path}.json") as f:
                meta = json.load(f)
            index = faiss.read_index(path)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"{path}: cannot read ANN index: {exc}") from exc
        if expected_fingerprint is not None and meta.get("fingerprint") != expected_fingerprint:
            raise ConfigMismatchError(
                f"{path}: ANN index was built for other vectors (fingerprint {meta.get('fingerprint')!r}, "
                f"expected {expected_fingerprint!r}); rebuild it"
            )
        return cls(index, AnnSpec(**meta["spec"]), meta.get("fingerprint", ""))


def _extract_ivf(faiss: Any, index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def recall_at_k(exact_idx: np.ndarray, approx_idx: np.ndarray, k: int | None = None) -> float:
    """Mean over queries of |exact top-k ∩ approx top-k| / k (the ANN recall@k against exact)."""
    exact_idx = np.atleast_2d(exact_idx)
    approx_idx = np.atleast_2d(approx_idx)
    k = exact_idx.shape[1] if k is None else k
    if exact_idx.shape[0] != approx_idx.shape[0]:
        raise InputError(f"{exact_idx.shape[0]} exact result rows but {approx_idx.shape[0]} approximate")
    if k == 0 or exact_idx.shape[0] == 0:
        return 1.0
    hits = [
        len(set(e[:k].tolist()) & set(a[:k].tolist()) - {-1})
        for e, a in zip(exact_idx, approx_idx, strict=True)
    ]
    return float(np.mean(hits) / k)


def vectors_fingerprint(vs: VectorSet) -> str:
    """A cheap identity of a vector set (model identity, count, ids) for index sidecars."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps(dict(vs.identity.model), sort_keys=True).encode())
    h.update(str(vs.vectors.shape).encode())
    for i in vs.ids:
        h.update(i.encode() + b"\0")
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    score: float
    id: str
    audio_id: str
    split: str | None
    caption: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hits_from(vs: VectorSet, scores: np.ndarray, idx: np.ndarray) -> list[Hit]:
    """Turn one row of (scores, indices) into :class:`Hit`s (skipping faiss's ``-1`` padding)."""
    out = []
    for s, i in zip(np.ravel(scores), np.ravel(idx), strict=True):
        if i < 0:
            continue
        out.append(Hit(len(out) + 1, float(s), vs.ids[i], vs.audio_ids[i], vs.splits[i], vs.captions[i]))
    return out


def build_index(vs: VectorSet, ann: AnnSpec | None = None, index_path: str | None = None):
    """Exact index, or an ANN index: loaded from ``index_path`` when it was built for these vectors,
    else built (and saved there, replacing a stale one)."""
    if ann is None:
        return ExactIndex(vs.vectors)
    fp = vectors_fingerprint(vs)
    if index_path and os.path.exists(index_path):
        try:
            loaded = AnnIndex.load(index_path, expected_fingerprint=fp)
        except ConfigMismatchError:
            log.info("%s: built for other vectors; rebuilding it", index_path)
        else:
            if loaded.spec.factory == ann.resolved_factory(len(vs)):
                loaded._set_nprobe(ann.nprobe)
                loaded.spec = AnnSpec(
                    loaded.spec.factory, ann.nprobe, loaded.spec.train_size, loaded.spec.seed
                )
                return loaded
            log.info(
                "%s: built as %s, %s asked for; rebuilding it", index_path, loaded.spec.factory, ann.factory
            )
    index = AnnIndex.build(vs.vectors, ann, fingerprint=fp)
    if index_path:
        index.save(index_path)
    return index


def _split_filter(vs: VectorSet, splits: Sequence[str] | None) -> VectorSet:
    if not splits:
        return vs
    return vs.select(np.isin(np.asarray(vs.splits, dtype=object), list(splits)))


# ------------------------------------------------------------------------------------- encoding inputs


def prepare_segments(segments: np.ndarray, max_segments: int) -> np.ndarray:
    """One clip's model input: its first ``max_segments`` segments as float32 (the training cap)."""
    return np.ascontiguousarray(np.asarray(segments)[:max_segments], dtype=np.float32)


def encode_segments(
    model: Any, batch: Sequence[np.ndarray], max_segments: int, device: Any = "cpu"
) -> np.ndarray:
    """Unit audio vectors (B, E) of clips given as (T_i, D) segment arrays (capped, padded, masked)."""
    import torch

    x, mask = pad_segments([prepare_segments(s, max_segments) for s in batch], max_segments)
    with torch.no_grad():
        out = model.encode_audio(torch.from_numpy(x).to(device), torch.from_numpy(mask).to(device))
    return out.float().cpu().numpy()


def encode_captions(
    model: Any, word_vectors: Any, captions: Sequence[str], max_words: int, device: Any = "cpu"
) -> np.ndarray:
    """Unit text vectors (B, E) of captions (word vectors -> ``model.encode_text``)."""
    import torch

    mat, mask = word_vectors.encode_many(list(captions), max_words)
    with torch.no_grad():
        out = model.encode_text(torch.from_numpy(mat).to(device), torch.from_numpy(mask).to(device))
    return out.float().cpu().numpy()


# ------------------------------------------------------------------------------------------ the API


class Searcher:
    """Text -> clips and audio -> captions over the vectors written by ``pipelines.embed``.

    Build it with :meth:`from_dirs`. Queries are embedded with the same model (checked against the
    vectors' recorded identity), then searched exactly (or with the optional ANN index).
    """

    def __init__(
        self,
        model: Any,
        config: Any,
        word_vectors: Any,
        audio: VectorSet,
        captions: VectorSet,
        *,
        ann: AnnSpec | None = None,
        index_dir: str | None = None,
        device: Any = "cpu",
        cnn14_checkpoint: str | None = None,
        cnn14_sha256: str | None = None,
    ):
        self.model = model
        self.config = config
        self.word_vectors = word_vectors
        self.audio = audio
        self.captions = captions
        self.device = device
        self._ann = ann
        self._index_dir = index_dir
        self._indexes: dict[str, Any] = {}
        self._cnn14 = (cnn14_checkpoint, cnn14_sha256)
        self._feature_model = None

    @classmethod
    def from_dirs(
        cls,
        vectors_dir: str,
        model_dir: str,
        *,
        splits: Sequence[str] | None = None,
        word_vectors: str | None = None,
        device: str = "cpu",
        ann: AnnSpec | None = None,
        cnn14_checkpoint: str | None = None,
        cnn14_sha256: str | None = None,
    ) -> Searcher:
        """Load a model directory and the vectors under ``vectors_dir`` (all splits, or ``splits``).

        Args:
            vectors_dir: what ``pipelines.embed`` wrote for one model (local or gs://).
            model_dir: the trained model directory those vectors were made with.
            splits: search only these splits (default: all).
            word_vectors: word vectors to use instead of the recorded source (same identity).
            device: torch device for encoding queries.
            ann: the faiss index to build (saved next to local vectors, reused while they do
                not change); None for exact search.
            cnn14_checkpoint, cnn14_sha256: needed only for :meth:`search_audio` with CNN14
                features.

        Returns:
            A ready :class:`Searcher`.

        Raises:
            ConfigMismatchError: the vectors come from another model (weights sha256, features
                or word vectors differ).
            SchemaError, CheckpointError: unreadable vectors or model directory.
        """
        from atr_core.model import directory as model_io
        from atr_core.runtime.device import resolve_device

        dev = resolve_device(device)
        config, meta = model_io.read_config(model_dir)
        vs = read_vectors(vectors_dir)
        want = model_identity(config, meta)
        if not same_model_identity(vs.identity.model, want):
            diff = sorted(k for k in want if vs.identity.model.get(k) != want[k] and k not in ("name",))
            raise ConfigMismatchError(
                f"{vectors_dir}: vectors were made by another model than {model_dir} "
                f"(differs in {', '.join(diff) or 'identity'}); embed again with this model"
            )
        model, config, wv = model_io.load_model(model_dir, word_vectors=word_vectors, device=dev)
        vs = _split_filter(vs, splits)
        kinds = np.asarray(vs.kinds, dtype=object)
        audio, caps = vs.select(kinds == "audio"), vs.select(kinds == "caption")
        index_dir = vectors_dir if os.path.isdir(vectors_dir) else None
        return cls(
            model,
            config,
            wv,
            audio,
            caps,
            ann=ann,
            index_dir=index_dir,
            device=dev,
            cnn14_checkpoint=cnn14_checkpoint,
            cnn14_sha256=cnn14_sha256,
        )

    # -- indexes

    def _index(self, kind: str):
        if kind not in self._indexes:
            vs = self.audio if kind == "audio" else self.captions
            if len(vs) == 0:
                raise QueryError(f"no {kind} vectors to search (empty corpus or split filter)")
            path = None
            if self._ann is not None and self._index_dir:
                path = os.path.join(self._index_dir, f"ann-{kind}.faiss")
            self._indexes[kind] = build_index(vs, self._ann, path)
        return self._indexes[kind]

    # -- text queries

    def embed_text(self, query: str) -> np.ndarray:
        """The (E,) vector of a text query.

        Raises :class:`QueryError` when the query is empty or entirely out of vocabulary.
        """
        if not isinstance(query, str) or not query.strip():
            raise QueryError("empty query: give some words to search for")
        if not self.word_vectors.tokens(query):
            raise QueryError(
                f"query {query!r}: none of its words is in the vocabulary of the word vectors "
                f"({self.word_vectors.identity.get('source', '?')}); try other words"
            )
        return encode_captions(self.model, self.word_vectors, [query], self.config.max_words, self.device)[0]

    def search_text(self, query: str, k: int = DEFAULT_K) -> list[Hit]:
        """Top-``k`` clips for a text query, best first."""
        q = self.embed_text(query)
        scores, idx = self._index("audio").search(q, _check_k(k))
        return hits_from(self.audio, scores[0], idx[0])

    # -- audio queries

    def embed_audio(self, path: str) -> np.ndarray:
        """The (E,) vector of an audio file: decode, segment features (the model's feature), encode."""
        from atr_core.audio.decode import decode_audio, pad_to_minimum
        from atr_core.audio.windows import extract_clip
        from atr_core.runtime.storage import open_uri

        try:
            with open_uri(path) as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise QueryError(f"{path}: no such audio file") from exc
        except OSError as exc:
            raise QueryError(f"{path}: cannot read audio file: {exc}") from exc
        wave, _ = pad_to_minimum(decode_audio(data, name=path).waveform)
        segments = extract_clip(self._features(), wave)
        return encode_segments(self.model, [segments], self.config.max_segments, self.device)[0]

    def _features(self):
        if self._feature_model is None:
            from atr_core.audio.cnn14 import resolve_checkpoint
            from atr_core.audio.features import build_feature_model, check_feature

            feature = check_feature(self.config.feature)
            info = None
            if feature == "cnn14":
                spec, sha = self._cnn14
                if not spec:
                    raise QueryError(
                        "audio queries with cnn14 features need the CNN14 weights the shards were made "
                        "with: pass cnn14_checkpoint (--cnn14_checkpoint)"
                    )
                info = resolve_checkpoint(spec, sha)
                want = self.config.checkpoint_sha256
                if want and info.sha256 != want:
                    raise ConfigMismatchError(
                        f"--cnn14_checkpoint {spec}: sha256 {info.sha256[:12]}... differs from the model's "
                        f"features (checkpoint sha256 {want[:12]}...)"
                    )
            self._feature_model = build_feature_model(feature, info, self.device)
        return self._feature_model

    def search_audio(self, path: str, k: int = DEFAULT_K) -> list[Hit]:
        """Top-``k`` captions for an audio file, best first."""
        q = self.embed_audio(path)
        scores, idx = self._index("caption").search(q, _check_k(k))
        return hits_from(self.captions, scores[0], idx[0])


def _check_k(k: int) -> int:
    if int(k) < 1:
        raise QueryError(f"k must be >= 1, got {k}")
    return int(k)
