"""Training data: segment shards joined with captions on ``audio_id``, batched for the model.

One dataset item is one clip with all its captions (reference section 5). Audio is capped at
``max_segments`` steps (31 AudioCaps / 90 Clotho), zero-padded (to the cap, or to the batch's
longest clip when the model masks padding) and masked; each caption is encoded once into
word-vector rows (at most ``max_words``), zero-padded to ``max_words`` and masked.

Two sources share one batch format (:class:`Batch`):

* :class:`ClipDataset` keeps the capped segments in memory as float16, in one contiguous array:
  the footprint is ``sum(min(T, max_segments)) x D x 2`` bytes (Clotho development, 3,839 clips
  x ~70 segments x 2048: about 1.1 GB).
* :class:`StreamingClips` re-reads the shards every epoch (in a seeded random shard order) through a
  seeded shuffle buffer of ``shuffle_buffer`` clips, for corpora larger than memory: its
  footprint is about ``shuffle_buffer x max_segments x D x 2`` bytes plus one shard.

Captions become a :class:`TextStore`: token indices into a de-duplicated table of the distinct
word-vector rows the split uses (exact float32 values, a few MB even for AudioCaps).

Batch order is a function of ``(seed, epoch)`` only, so an interrupted run that resumes at epoch
``e`` sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from atr_core.errors import InputError, SchemaError
from atr_core.formats.shards import ShardIdentity, check_consistent, iter_shard_tables, table_embeddings
from atr_core.model.padding import pad_segments
from atr_core.model.retrieval import DEFAULT_MAX_SEGMENTS

log = logging.getLogger(__name__)

#: Cap used when the dataset is unknown: the longest clip, but never more than Clotho's.
FALLBACK_MAX_SEGMENTS = 90
DEFAULT_SHUFFLE_BUFFER = 1024


def default_max_segments(dataset: str | None, longest: int) -> int:
    """The segment cap for ``dataset`` (``clotho`` 90, ``audiocaps`` 31), else ``min(90, longest)``."""
    if dataset in DEFAULT_MAX_SEGMENTS:
        return DEFAULT_MAX_SEGMENTS[dataset]
    return max(1, min(FALLBACK_MAX_SEGMENTS, longest))


# --------------------------------------------------------------------------- shards and the join


@dataclass
class ShardIndex:
    """Where every clip of a shard set lives, read from the ``audio_id`` and ``num_segments`` columns."""

    pattern: str
    identity: ShardIdentity
    paths: list[str]
    num_segments: dict[str, int]
    shard_of: dict[str, int]

    @property
    def dim(self) -> int:
        return self.identity.embedding_dim


def scan_shards(pattern: str) -> ShardIndex:
    """Index the shards at ``pattern`` (file, directory or glob; local or gs://).

    Raises :class:`SchemaError` for unknown schema versions and for shards of one set that disagree
    on feature, dimension or checkpoint, and :class:`InputError` for an audio_id found twice.
    """
    paths: list[str] = []
    idents: list[tuple[str, ShardIdentity]] = []
    num_segments: dict[str, int] = {}
    shard_of: dict[str, int] = {}
    for path, ident, table in iter_shard_tables(pattern, columns=["audio_id", "num_segments"]):
        idents.append((path, ident))
        for aid, n in zip(
            table.column("audio_id").to_pylist(), table.column("num_segments").to_pylist(), strict=True
        ):
            if aid in shard_of:
                raise InputError(
                    f"audio_id {aid!r} appears in two shards: {paths[shard_of[aid]]} and {path}"
                )
            if not n:
                raise InputError(f"{path}: audio_id {aid!r} has no segments (num_segments={n})")
            num_segments[aid] = int(n)
            shard_of[aid] = len(paths)
        paths.append(path)
    return ShardIndex(pattern, check_consistent(idents), paths, num_segments, shard_of)


@dataclass(frozen=True)
class JoinReport:
    """The caption/shard join: what was kept and what was left out, by count with examples.

    For every split, captioned clips in = ``joined`` + ``captions_without_audio``.
    """

    joined: dict[str, int]
    captions_without_audio: dict[str, list[str]]
    audio_without_captions: list[str]
    clips_without_captions: list[str]
    other_splits: dict[str, int]

    def lines(self, examples: int = 5) -> list[str]:
        """Human-readable summary lines (one per finding)."""
        ex = lambda ids: ", ".join(ids[:examples]) + (", ..." if len(ids) > examples else "")  # noqa: E731
        out = []
        for split, n in self.joined.items():
            missing = self.captions_without_audio[split]
            out.append(f"{split}: {n} clips joined, {len(missing)} captioned clips have no shard row")
            if missing:
                out.append(f"{split}: captions without audio (left out), e.g. {ex(missing)}")
        if self.audio_without_captions:
            out.append(
                f"{len(self.audio_without_captions)} shard rows have no captions in any split "
                f"(not used), e.g. {ex(self.audio_without_captions)}"
            )
        if self.clips_without_captions:
            out.append(
                f"{len(self.clips_without_captions)} manifest clips list no caption (left out), "
                f"e.g. {ex(self.clips_without_captions)}"
            )
        for split, n in self.other_splits.items():
            out.append(f"split {split!r}: {n} captioned clips not used for training or validation")
        return out

    def to_dict(self, examples: int = 20) -> dict:
        """JSON-ready summary with counts and up to ``examples`` ids per finding."""
        return {
            "joined": dict(self.joined),
            "captions_without_audio": {
                s: {"count": len(v), "examples": v[:examples]} for s, v in self.captions_without_audio.items()
            },
            "audio_without_captions": {
                "count": len(self.audio_without_captions),
                "examples": self.audio_without_captions[:examples],
            },
            "clips_without_captions": {
                "count": len(self.clips_without_captions),
                "examples": self.clips_without_captions[:examples],
            },
            "other_splits": dict(self.other_splits),
        }


def join_captions(entries: Sequence, index: ShardIndex, splits: Sequence[str]) -> tuple[dict, JoinReport]:
    """Join manifest ``entries`` (``ClipEntry``) with the shard ``index`` for each of ``splits``.

    Returns ``{split: [entry, ...]}`` (entries that have captions and a shard row, in manifest
    order) and the :class:`JoinReport`. An audio_id listed twice raises :class:`InputError`.
    """
    seen: dict[str, str | None] = {}
    by_split: dict[str, list] = {s: [] for s in splits}
    missing: dict[str, list[str]] = {s: [] for s in splits}
    other: dict[str, int] = {}
    no_captions: list[str] = []
    for e in entries:
        if e.audio_id in seen:
            raise InputError(
                f"audio_id {e.audio_id!r} is listed twice in the captions (splits {seen[e.audio_id]!r} "
                f"and {e.split!r}); merge its captions into one entry"
            )
        seen[e.audio_id] = e.split
        if not e.captions:
            no_captions.append(e.audio_id)
        elif e.split not in by_split:
            other[str(e.split)] = other.get(str(e.split), 0) + 1
        elif e.audio_id in index.num_segments:
            by_split[e.split].append(e)
        else:
            missing[e.split].append(e.audio_id)
    unmatched = [a for a in index.num_segments if a not in seen]
    report = JoinReport({s: len(v) for s, v in by_split.items()}, missing, unmatched, no_captions, other)
    return by_split, report


# --------------------------------------------------------------------------- stores


@dataclass
class TextStore:
    """Encoded captions: ``tokens[i, w]`` indexes ``table`` (padding = the zero row at the end)."""

    table: np.ndarray  # (V + 1, Dt) float32, last row zeros
    tokens: np.ndarray  # (n_captions, max_words) int32

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    @property
    def max_words(self) -> int:
        return self.tokens.shape[1]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @classmethod
    def encode(cls, word_vectors, captions: Sequence[str], max_words: int, chunk: int = 4096) -> TextStore:
        """Encode ``captions`` with ``word_vectors.encode_many`` and de-duplicate their vector rows."""
        ids: dict[bytes, int] = {}
        rows: list[np.ndarray] = []
        tokens = np.empty((len(captions), max_words), dtype=np.int64)
        dim = int(word_vectors.dim)
        for start in range(0, len(captions), chunk):
            mat, mask = word_vectors.encode_many(list(captions[start : start + chunk]), max_words)
            mat = np.ascontiguousarray(np.asarray(mat, dtype=np.float32)).reshape(-1, max_words, dim)
            keep = np.asarray(mask).reshape(-1, max_words).astype(bool)
            kept = np.ascontiguousarray(mat[keep])
            uniq, first, inverse = np.unique(
                kept.view(np.dtype((np.void, dim * 4))).ravel(), return_index=True, return_inverse=True
            )
            local = np.empty(len(uniq), dtype=np.int64)
            for j, (key, row) in enumerate(zip(uniq.tolist(), first, strict=True)):
                if key not in ids:
                    ids[key] = len(rows)
                    rows.append(kept[row])
                local[j] = ids[key]
            block = np.full(keep.shape, -1, dtype=np.int64)
            block[keep] = local[inverse.ravel()]
            tokens[start : start + len(block)] = block
        table = np.zeros((len(rows) + 1, dim), dtype=np.float32)
        if rows:
            table[:-1] = np.stack(rows)
        tokens[tokens < 0] = len(rows)
        return cls(table, tokens.astype(np.int32))

    def gather(self, caption_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(text (C, W, Dt) float32, mask (C, W) float32)`` for the given caption rows."""
        tok = self.tokens[caption_ids]
        mask = (tok < len(self.table) - 1).astype(np.float32)
        return torch.from_numpy(self.table[tok]), torch.from_numpy(mask)


@dataclass
class SegmentStore:
    """Variable-length clip segments in one contiguous float16 array: clip i is ``data[off[i]:off[i+1]]``."""

    data: np.ndarray  # (total_segments, D) float16
    offsets: np.ndarray  # (n + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i] : self.offsets[i + 1]]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def _checked_segments(emb: np.ndarray, cap: int, aid: str, path: str, dim: int) -> np.ndarray:
    """The first ``cap`` segments of one clip as float16; error on NaN/inf or float16 overflow."""
    if emb.ndim != 2 or emb.shape[1] != dim:
        raise SchemaError(f"{path}: audio_id {aid!r}: embedding shape {emb.shape}, expected (T, {dim})")
    seg = emb[:cap]
    if not np.isfinite(seg).all():
        raise InputError(f"{path}: audio_id {aid!r}: embedding contains NaN or infinite values")
    with np.errstate(over="ignore"):
        out = seg.astype(np.float16, copy=False)
    if out is not seg and not np.isfinite(out).all():
        raise InputError(f"{path}: audio_id {aid!r}: embedding values exceed the float16 range")
    return out


def _iter_rows(path: str, dim: int, wanted: dict[str, int] | set[str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(audio_id, embedding)`` for the wanted rows of one shard, checking the declared dimension."""
    for _, ident, table in iter_shard_tables(path, columns=["audio_id", "embedding"]):
        if ident.embedding_dim != dim:
            raise SchemaError(f"{path}: embedding_dim {ident.embedding_dim}, expected {dim}")
        col_dim = table.schema.field("embedding").type.value_type.list_size
        if col_dim != dim:
            raise SchemaError(f"{path}: embedding column has dimension {col_dim}, metadata says {dim}")
        ids = table.column("audio_id").to_pylist()
        embs = table_embeddings(table) if table.num_rows else []
        for aid, emb in zip(ids, embs, strict=True):
            if aid in wanted:
                yield aid, emb


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """A batch of clips, each with all of its captions (audio-major caption order).

    ``caption_clip[c]`` is the batch position of caption c's clip; clips may have different
    caption counts (AudioCaps val: 5, some clips fewer).
    """

    audio: torch.Tensor  # (B, T, Da) float32
    audio_mask: torch.Tensor  # (B, T) float32 0/1
    text: torch.Tensor  # (C, W, Dt) float32
    text_mask: torch.Tensor  # (C, W) float32 0/1
    caption_clip: torch.Tensor  # (C,) int64
    audio_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.audio.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device`` (non-blocking copies)."""
        mv = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(
            mv(self.audio), mv(self.audio_mask), mv(self.text), mv(self.text_mask), mv(self.caption_clip),
            self.audio_ids,
        )


def collate(
    items: Sequence[tuple[str, np.ndarray, np.ndarray]], text: TextStore, max_segments: int,
    pad_to_cap: bool = True,
) -> Batch:
    """Stack ``(audio_id, segments (T<=cap, D) float16, caption_ids)`` items into a :class:`Batch`.

    Audio is zero-padded to ``max_segments`` (the authors' fixed length), or with
    ``pad_to_cap=False`` only to the batch's longest clip (faster; the same embeddings whenever
    the model masks padding).
    """
    length = max_segments if pad_to_cap else min(max_segments, max(len(it[1]) for it in items))
    audio, amask = pad_segments([it[1] for it in items], length, dtype=np.float16)
    caps = [it[2] for it in items]
    clip_of = [np.full(len(cap_ids), j, dtype=np.int64) for j, cap_ids in enumerate(caps)]
    txt, tmask = text.gather(np.concatenate(caps))
    return Batch(
        torch.from_numpy(audio).float(), torch.from_numpy(amask), txt, tmask,
        torch.from_numpy(np.concatenate(clip_of)), [it[0] for it in items],
    )


def chunk_batches(items: Iterable, batch_size: int) -> Iterator[list]:
    """Consecutive lists of ``batch_size`` items; the last partial batch is kept.

    A last batch of a single item is merged into the previous one (training BatchNorm and the
    ranking loss need two clips), so no clip is ever dropped.
    """
    prev: list | None = None
    cur: list = []
    for it in items:
        cur.append(it)
        if len(cur) == batch_size:
            if prev is not None:
                yield prev
            prev, cur = cur, []
    if prev is not None:
        if len(cur) == 1:
            prev.extend(cur)
            cur = []
        yield prev
    if cur:
        yield cur


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator that orders epoch ``epoch``: a pure function of ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), int(epoch)])


# --------------------------------------------------------------------------- clip sources


class ClipSource:
    """A split's clips: :meth:`batches` yields :class:`Batch` es; order depends on (seed, epoch) only."""

    audio_ids: list[str]
    text: TextStore
    caption_offsets: np.ndarray  # clip i's captions are text rows [off[i], off[i+1])
    max_segments: int
    dim: int
    pad_to_cap: bool = True  # see collate()

    def __len__(self) -> int:
        return len(self.audio_ids)

    @property
    def n_captions(self) -> int:
        return len(self.text)

    def caption_to_clip(self) -> np.ndarray:
        """For every caption row (audio-major), the index of its clip in :attr:`audio_ids`."""
        return np.repeat(np.arange(len(self.audio_ids)), np.diff(self.caption_offsets))

    def caption_ids(self, i: int) -> np.ndarray:
        return np.arange(self.caption_offsets[i], self.caption_offsets[i + 1])

    def items(self, epoch: int, shuffle: bool, seed: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def batches(
        self, batch_size: int, epoch: int = 0, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Batch]:
        """All clips once, in batches of ``batch_size`` clips (shuffled by ``(seed, epoch)`` if asked)."""
        for chunk in chunk_batches(self.items(epoch, shuffle, seed), batch_size):
            yield collate(chunk, self.text, self.max_segments, self.pad_to_cap)

    def n_batches(self, batch_size: int) -> int:
        n = len(self)
        full, rest = divmod(n, batch_size)
        return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


def _caption_layout(entries: Sequence) -> tuple[list[str], np.ndarray]:
    captions = [c for e in entries for c in e.captions]
    offsets = np.zeros(len(entries) + 1, dtype=np.int64)
    np.cumsum([len(e.captions) for e in entries], out=offsets[1:])
    return captions, offsets


class ClipDataset(ClipSource):
    """A split held in memory: float16 segments (capped) plus encoded captions."""

    def __init__(
        self, audio_ids: list[str], segments: SegmentStore, text: TextStore, caption_offsets: np.ndarray,
        max_segments: int,
    ):
        self.audio_ids = audio_ids
        self.segments = segments
        self.text = text
        self.caption_offsets = caption_offsets
        self.max_segments = max_segments
        self.dim = segments.data.shape[1]

    @classmethod
    def load(
        cls, index: ShardIndex, entries: Sequence, word_vectors, max_segments: int, max_words: int
    ) -> ClipDataset:
        """Read the capped segments of ``entries`` (joined ``ClipEntry`` s) from the shards into memory."""
        captions, cap_off = _caption_layout(entries)
        text = TextStore.encode(word_vectors, captions, max_words)
        pos = {e.audio_id: i for i, e in enumerate(entries)}
        lengths = np.array(
            [min(index.num_segments[e.audio_id], max_segments) for e in entries], dtype=np.int64
        )
        offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty((int(offsets[-1]), index.dim), dtype=np.float16)
        loaded = 0
        for s in sorted({index.shard_of[e.audio_id] for e in entries}):
            path = index.paths[s]
            for aid, emb in _iter_rows(path, index.dim, pos):
                i = pos[aid]
                seg = _checked_segments(emb, max_segments, aid, path, index.dim)
                if len(seg) != lengths[i]:
                    raise InputError(
                        f"{path}: audio_id {aid!r} has {len(emb)} segments but num_segments says "
                        f"{index.num_segments[aid]}"
                    )
                data[offsets[i] : offsets[i + 1]] = seg
                loaded += 1
        if loaded != len(entries):
            raise InputError(
                f"{index.pattern}: {len(entries) - loaded} joined clips vanished from the shards"
            )
        log.info(
            "loaded %d clips, %d segments x %d dims: %.1f MB float16 in memory",
            len(entries), len(data), index.dim, data.nbytes / 1e6,
        )
        return cls([e.audio_id for e in entries], SegmentStore(data, offsets), text, cap_off, max_segments)

    def items(self, epoch: int, shuffle: bool, seed: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        order = epoch_rng(seed, epoch).permutation(len(self)) if shuffle else range(len(self))
        for i in order:
            yield self.audio_ids[i], self.segments[i], self.caption_ids(i)


class StreamingClips(ClipSource):
    """A split streamed from the shards every epoch through a seeded shuffle buffer."""

    def __init__(
        self, index: ShardIndex, entries: Sequence, word_vectors, max_segments: int, max_words: int,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    ):
        captions, self.caption_offsets = _caption_layout(entries)
        self.text = TextStore.encode(word_vectors, captions, max_words)
        self.audio_ids = [e.audio_id for e in entries]
        self.index = index
        self.max_segments = max_segments
        self.dim = index.dim
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self._pos = {a: i for i, a in enumerate(self.audio_ids)}
        self._shards = sorted({index.shard_of[a] for a in self.audio_ids})

    def _stream(self, shard_order: Iterable[int]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        seen = 0
        for s in shard_order:
            path = self.index.paths[s]
            for aid, emb in _iter_rows(path, self.dim, self._pos):
                seg = _checked_segments(emb, self.max_segments, aid, path, self.dim)
                seen += 1
                yield aid, np.array(seg, copy=True), self.caption_ids(self._pos[aid])
        if seen != len(self):
            raise InputError(f"{self.index.pattern}: expected {len(self)} clips in the shards, read {seen}")

    def items(self, epoch: int, shuffle: bool, seed: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        if not shuffle:
            yield from self._stream(self._shards)
            return
        rng = epoch_rng(seed, epoch)
        order = [self._shards[i] for i in rng.permutation(len(self._shards))]
        yield from shuffle_buffer(self._stream(order), self.shuffle_buffer, rng)


def shuffle_buffer(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Approximate shuffle with a buffer of ``size`` items: every item comes out exactly once."""
    buf: list = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = it
    for j in rng.permutation(len(buf)):
        yield buf[j]


def load_split(
    index: ShardIndex, entries: Sequence, word_vectors, max_segments: int, max_words: int,
    streaming: bool = False, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, pad_to_cap: bool = True,
) -> ClipSource:
    """An in-memory :class:`ClipDataset` or, with ``streaming``, a :class:`StreamingClips`.

    ``pad_to_cap=False`` pads each batch only to its longest clip (see :func:`collate`).
    """
    if not entries:
        raise InputError(f"{index.pattern}: no clips to load (the split is empty after the join)")
    if streaming:
        source = StreamingClips(index, entries, word_vectors, max_segments, max_words, shuffle_buffer)
    else:
        source = ClipDataset.load(index, entries, word_vectors, max_segments, max_words)
    source.pad_to_cap = pad_to_cap
    return source


__all__ = [
    "Batch", "ClipDataset", "ClipSource", "JoinReport", "SegmentStore", "ShardIndex",
    "StreamingClips", "TextStore", "chunk_batches", "collate", "default_max_segments", "epoch_rng",
    "join_captions", "load_split", "scan_shards", "shuffle_buffer",
]
