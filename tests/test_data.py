"""Tests for atr_core.training.data: the caption/shard join, stores, batching, streaming and shard checks.

The helpers at the top (shards, captions files, word2vec files) are shared by the training tests.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from gensim.models import KeyedVectors

from atr_core.errors import InputError, SchemaError
from atr_core.formats.manifest import ClipEntry
from atr_core.formats.shards import ShardIdentity, rows_to_table, segment_schema
from atr_core.text.word_vectors import WordVectors
from atr_core.training.data import (
    ClipDataset,
    StreamingClips,
    TextStore,
    chunk_batches,
    collate,
    default_max_segments,
    join_captions,
    load_split,
    scan_shards,
    shuffle_buffer,
)

VOCAB = [
    "dog", "barks", "a", "car", "engine", "rain", "falls", "water", "birds", "sing", "loud", "quiet", "tone",
]

# --------------------------------------------------------------------------- helpers (shared)


def write_shards(
    directory: Path, clips: dict[str, np.ndarray], per_shard: int = 3, feature: str = "lms",
    dtype: str = "float16", name: str = "part", split: str | None = None,
) -> list[Path]:
    """Write ``{audio_id: (T, D) array}`` as real segment shards of ``per_shard`` rows each."""
    directory.mkdir(parents=True, exist_ok=True)
    dim = next(iter(clips.values())).shape[1]
    schema = segment_schema(ShardIdentity(feature=feature, embedding_dim=dim, dtype=dtype))
    items = list(clips.items())
    paths = []
    for k in range(0, len(items), per_shard):
        rows = [
            {
                "audio_id": aid, "uri": f"mem://{aid}", "split": split, "duration_s": 0.32 * len(e),
                "source_sample_rate": 32000, "source_channels": 1, "num_segments": len(e), "feature": feature,
                "checkpoint_sha256": "", "package_version": "test", "embedding": e,
            }
            for aid, e in items[k : k + per_shard]
        ]
        path = directory / f"{name}-{k // per_shard:05d}.parquet"
        pq.write_table(rows_to_table(rows, schema), path)
        paths.append(path)
    return paths


def write_clotho_csv(path: Path, captions: dict[str, list[str]], encoding: str = "utf-8") -> Path:
    """A Clotho-format captions CSV (file_name, caption_1..caption_5)."""
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        for aid, caps in captions.items():
            w.writerow([aid] + list(caps))
    return path


def write_audiocaps_csv(path: Path, captions: dict[str, list[str]]) -> Path:
    """An AudioCaps-format captions CSV (one row per caption)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        n = 0
        for aid, caps in captions.items():
            for c in caps:
                n += 1
                w.writerow([n, aid, 0, c])
    return path


def make_kv(words=VOCAB, dim: int = 8, seed: int = 0) -> KeyedVectors:
    rng = np.random.default_rng(seed)
    kv = KeyedVectors(dim)
    kv.add_vectors(list(words), rng.normal(size=(len(words), dim)).astype(np.float32))
    return kv


def write_w2v(path: Path, words=VOCAB, dim: int = 8, seed: int = 0, binary: bool = False) -> Path:
    """A tiny word2vec file (text format by default)."""
    make_kv(words, dim, seed).save_word2vec_format(str(path), binary=binary)
    return path


def make_wv(dim: int = 8, seed: int = 0) -> WordVectors:
    return WordVectors(make_kv(dim=dim, seed=seed), {"source": "test", "sha256": "x", "limit": None})


def random_caption(rng: random.Random) -> str:
    pieces = VOCAB + ["zzz", "!", "...", "Dog", "RAIN"]
    return " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))


def random_corpus(rng: np.random.Generator, n: int, dim: int, t_max: int = 12):
    """Random clips ``{id: (T, D)}`` with T in 1..t_max."""
    return {f"clip{i:03d}.wav": rng.normal(size=(int(rng.integers(1, t_max + 1)), dim)).astype(np.float32)
            for i in range(n)}


def entries_for(ids, split: str, rng: random.Random, n_caps=None) -> list[ClipEntry]:
    out = []
    for aid in ids:
        k = n_caps if n_caps is not None else rng.randint(1, 5)
        out.append(ClipEntry(aid, aid, split, tuple(random_caption(rng) for _ in range(k))))
    return out


# --------------------------------------------------------------------------- join


def test_join_accounts_for_every_clip_over_random_cases(tmp_path):
    for case in range(15):
        rng = np.random.default_rng(case)
        prng = random.Random(case)
        clips = random_corpus(rng, int(rng.integers(3, 20)), 4)
        write_shards(tmp_path / f"c{case}", clips, per_shard=int(rng.integers(1, 6)))
        index = scan_shards(str(tmp_path / f"c{case}"))
        assert set(index.num_segments) == set(clips)
        assert all(index.num_segments[a] == len(e) for a, e in clips.items())
        ids = list(clips)
        ghosts = [f"ghost{i}" for i in range(prng.randint(0, 4))]
        captioned = prng.sample(ids, prng.randint(0, len(ids))) + ghosts
        splits = [prng.choice(["train", "val", "test"]) for _ in captioned]
        entries = [ClipEntry(a, a, s, ("a dog",)) for a, s in zip(captioned, splits, strict=True)]
        entries += [ClipEntry(f"nocap{i}", "x", "train", ()) for i in range(prng.randint(0, 2))]
        by_split, report = join_captions(entries, index, ["train", "val"])
        for split in ("train", "val"):
            n_in = sum(1 for s in splits if s == split)
            assert report.joined[split] + len(report.captions_without_audio[split]) == n_in
            assert [e.audio_id for e in by_split[split]] == [
                a for a, s in zip(captioned, splits, strict=True) if s == split and a in clips
            ]
            assert all(a.startswith("ghost") for a in report.captions_without_audio[split])
        assert sorted(report.audio_without_captions) == sorted(set(ids) - set(captioned))
        assert report.other_splits.get("test", 0) == splits.count("test")
        assert len(report.clips_without_captions) == len([e for e in entries if not e.captions])
        text = "\n".join(report.lines())
        for split in ("train", "val"):
            if report.captions_without_audio[split]:
                assert report.captions_without_audio[split][0] in text
        assert report.to_dict()["audio_without_captions"]["count"] == len(report.audio_without_captions)


def test_join_refuses_an_audio_id_listed_twice(tmp_path):
    write_shards(tmp_path, {"a.wav": np.ones((2, 3), np.float32), "b.wav": np.ones((2, 3), np.float32)})
    index = scan_shards(str(tmp_path))
    entries = [ClipEntry("a.wav", "a", "train", ("x",)), ClipEntry("a.wav", "a", "val", ("y",))]
    with pytest.raises(InputError, match="a.wav"):
        join_captions(entries, index, ["train", "val"])


def test_default_max_segments():
    assert default_max_segments("clotho", 5) == 90
    assert default_max_segments("audiocaps", 500) == 31
    assert default_max_segments(None, 12) == 12
    assert default_max_segments(None, 500) == 90


# --------------------------------------------------------------------------- stores and batches


def test_text_store_gathers_exactly_what_encode_many_gives():
    wv = make_wv()
    for case in range(20):
        prng = random.Random(case)
        caps = [random_caption(prng) for _ in range(prng.randint(1, 40))]
        caps += ["", "!!!", " ".join(["dog"] * 2000)]
        max_words = prng.randint(1, 25)
        store = TextStore.encode(wv, caps, max_words, chunk=prng.randint(1, 7))
        want_x, want_m = wv.encode_many(caps, max_words)
        ids = np.array(prng.sample(range(len(caps)), len(caps)))
        x, m = store.gather(ids)
        assert torch.equal(x, torch.from_numpy(want_x[ids]))
        assert torch.equal(m, torch.from_numpy(want_m[ids]))
        # each distinct word-vector row is stored once
        assert len(np.unique(store.table[:-1], axis=0)) == len(store.table) - 1


def test_dataset_keeps_capped_float16_segments_and_masks(tmp_path):
    for case in range(6):
        rng = np.random.default_rng(100 + case)
        prng = random.Random(case)
        dim = int(rng.integers(2, 9))
        clips = random_corpus(rng, int(rng.integers(2, 15)), dim, t_max=10)
        write_shards(tmp_path / f"c{case}", clips, per_shard=int(rng.integers(1, 5)),
                     dtype=prng.choice(["float16", "float32"]))
        index = scan_shards(str(tmp_path / f"c{case}"))
        ids = list(clips)
        prng.shuffle(ids)
        entries = entries_for(ids, "train", prng)
        cap = int(rng.integers(1, 12))
        ds = ClipDataset.load(index, entries, make_wv(), cap, 20)
        assert ds.segments.nbytes == sum(min(len(e), cap) for e in clips.values()) * dim * 2
        assert ds.n_captions == sum(len(e.captions) for e in entries)
        seen = []
        for batch in ds.batches(int(rng.integers(1, 6)), epoch=case, shuffle=True, seed=case):
            assert batch.audio.shape[1:] == (cap, dim) and batch.audio.dtype == torch.float32
            for j, aid in enumerate(batch.audio_ids):
                src = clips[aid][:cap].astype(np.float16).astype(np.float32)
                n = len(src)
                assert torch.equal(batch.audio[j, :n], torch.from_numpy(src))
                assert torch.all(batch.audio[j, n:] == 0)
                assert batch.audio_mask[j].tolist() == [1.0] * n + [0.0] * (cap - n)
                entry = entries[ids.index(aid)]
                rows = (batch.caption_clip == j).nonzero().ravel()
                assert len(rows) == len(entry.captions)
                want_x, want_m = make_wv().encode_many(entry.captions, 20)
                assert torch.equal(batch.text[rows], torch.from_numpy(want_x))
                assert torch.equal(batch.text_mask[rows], torch.from_numpy(want_m))
            # audio-major caption order
            assert torch.all(batch.caption_clip[1:] >= batch.caption_clip[:-1])
            seen.extend(batch.audio_ids)
        assert sorted(seen) == sorted(ids)


def test_chunk_batches_keeps_every_item_and_the_last_partial_batch():
    for n in range(0, 40):
        for bs in range(1, 9):
            chunks = list(chunk_batches(range(n), bs))
            assert [x for c in chunks for x in c] == list(range(n))
            if n:
                assert all(len(c) == bs for c in chunks[:-1])
                last = len(chunks[-1])
                assert 1 <= last <= bs + 1
                assert last != 1 or n == 1 or bs == 1
            n_full, rest = divmod(n, bs)
            assert len(chunks) == (n_full + (1 if rest > 1 or (rest == 1 and n_full == 0) else 0) if bs > 1
                                   else n)


def test_shuffle_buffer_emits_a_permutation():
    for case in range(30):
        rng = np.random.default_rng(case)
        n, size = int(rng.integers(0, 60)), int(rng.integers(1, 20))
        out = list(shuffle_buffer(range(n), size, np.random.default_rng(case)))
        assert sorted(out) == list(range(n))
        assert out == list(shuffle_buffer(range(n), size, np.random.default_rng(case)))


def test_batch_order_is_a_function_of_seed_and_epoch(tmp_path):
    rng = np.random.default_rng(0)
    clips = random_corpus(rng, 23, 3)
    write_shards(tmp_path, clips, per_shard=4)
    index = scan_shards(str(tmp_path))
    entries = entries_for(list(clips), "train", random.Random(0))
    for streaming in (False, True):
        src = load_split(index, entries, make_wv(), 8, 20, streaming=streaming, shuffle_buffer=5)

        def order(e, s, src=src):
            return [b.audio_ids for b in src.batches(4, epoch=e, shuffle=True, seed=s)]

        assert order(1, 0) == order(1, 0)
        assert order(1, 0) != order(2, 0) and order(1, 0) != order(1, 1)
        assert [len(b) for b in order(1, 0)] == [4, 4, 4, 4, 4, 3]
        assert len(order(3, 0)) == src.n_batches(4)
        assert sorted(sum(order(3, 0), [])) == sorted(clips)


def test_streaming_gives_the_same_batches_content_as_memory(tmp_path):
    rng = np.random.default_rng(1)
    clips = random_corpus(rng, 17, 5, t_max=9)
    write_shards(tmp_path, clips, per_shard=3)
    index = scan_shards(str(tmp_path))
    entries = entries_for(list(clips), "train", random.Random(1))
    mem = ClipDataset.load(index, entries, make_wv(), 6, 20)
    stream = StreamingClips(index, entries, make_wv(), 6, 20, shuffle_buffer=4)
    assert len(mem) == len(stream) == 17
    for shuffle in (False, True):
        got = {}
        for b in stream.batches(5, epoch=2, shuffle=shuffle, seed=3):
            for j, aid in enumerate(b.audio_ids):
                got[aid] = (b.audio[j], b.text[b.caption_clip == j])
        assert len(got) == 17
        for b in mem.batches(17):
            for j, aid in enumerate(b.audio_ids):
                assert torch.equal(got[aid][0], b.audio[j])
                assert torch.equal(got[aid][1], b.text[b.caption_clip == j])


def test_collate_pads_to_the_cap_or_to_the_longest_clip():
    store = TextStore.encode(make_wv(), ["a dog"], 4)
    rng = np.random.default_rng(4)
    for _ in range(20):
        lens = rng.integers(1, 12, size=int(rng.integers(1, 6)))
        items = [
            (str(i), rng.normal(size=(n, 3)).astype(np.float16), np.array([0])) for i, n in enumerate(lens)
        ]
        cap = int(rng.integers(1, 10))
        full, short = collate(items, store, cap), collate(items, store, cap, pad_to_cap=False)
        assert full.audio.shape[1] == cap and short.audio.shape[1] == min(cap, lens.max())
        n = short.audio.shape[1]
        assert torch.equal(full.audio[:, :n], short.audio) and torch.all(full.audio[:, n:] == 0)
        assert torch.equal(full.audio_mask[:, :n], short.audio_mask) and full.audio_mask[:, n:].sum() == 0


def test_collate_handles_different_caption_counts():
    wv = make_wv()
    store = TextStore.encode(wv, ["a dog", "rain", "water falls", "", "birds sing loud"], 4)
    items = [("x", np.ones((2, 3), np.float16), np.array([0, 1, 2])), ("y", np.ones((5, 3), np.float16),
                                                                      np.array([3])),
             ("z", np.ones((1, 3), np.float16), np.array([4]))]
    b = collate(items, store, 4)
    assert b.caption_clip.tolist() == [0, 0, 0, 1, 2]
    assert b.audio_mask.sum(1).tolist() == [2.0, 4.0, 1.0]
    assert b.text.shape == (5, 4, 8)
    assert b.text_mask[3].tolist() == [1.0, 0.0, 0.0, 0.0]  # empty caption: the unknown vector
    assert torch.equal(b.text[3, 0], torch.from_numpy(wv.unknown_vector))


# --------------------------------------------------------------------------- bad shards


def test_nan_in_a_shard_names_the_audio_id_and_the_shard(tmp_path):
    clips = random_corpus(np.random.default_rng(2), 6, 4)
    clips["clip003.wav"][1, 2] = np.nan
    paths = write_shards(tmp_path, clips, per_shard=2)
    index = scan_shards(str(tmp_path))
    entries = entries_for(list(clips), "train", random.Random(0))
    with pytest.raises(InputError, match=rf"{paths[1].name}.*clip003\.wav.*NaN"):
        ClipDataset.load(index, entries, make_wv(), 8, 20)
    stream = StreamingClips(index, entries, make_wv(), 8, 20)
    with pytest.raises(InputError, match=r"clip003\.wav.*NaN"):
        list(stream.batches(4))


def test_float32_beyond_float16_range_is_refused(tmp_path):
    clips = {"a.wav": np.full((2, 3), 1e6, np.float32), "b.wav": np.ones((2, 3), np.float32)}
    write_shards(tmp_path, clips, dtype="float32")
    index = scan_shards(str(tmp_path))
    with pytest.raises(InputError, match="a.wav.*float16"):
        ClipDataset.load(index, entries_for(list(clips), "train", random.Random(0)), make_wv(), 8, 20)


def test_shards_of_another_dimension_or_schema_version_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    write_shards(tmp_path / "mix", random_corpus(rng, 3, 4), name="a")
    write_shards(tmp_path / "mix", {"other.wav": np.ones((2, 6), np.float32)}, name="b")
    with pytest.raises(SchemaError, match="embedding_dim"):
        scan_shards(str(tmp_path / "mix"))
    paths = write_shards(tmp_path / "v2", random_corpus(rng, 3, 4))
    table = pq.read_table(paths[0])
    meta = dict(table.schema.metadata)
    meta[b"atr.schema_version"] = b"2"
    pq.write_table(table.replace_schema_metadata(meta), paths[0])
    with pytest.raises(SchemaError, match=rf"{paths[0].name}.*schema_version 2"):
        scan_shards(str(tmp_path / "v2"))


def test_duplicate_audio_id_across_shards_is_refused(tmp_path):
    write_shards(tmp_path, {"a.wav": np.ones((2, 3), np.float32)}, name="x")
    write_shards(tmp_path, {"a.wav": np.ones((2, 3), np.float32)}, name="y")
    with pytest.raises(InputError, match="a.wav.*two shards"):
        scan_shards(str(tmp_path))


def test_embedding_column_disagreeing_with_metadata_is_refused(tmp_path):
    clips = {"a.wav": np.ones((2, 3), np.float32), "b.wav": np.ones((2, 3), np.float32)}
    (path,) = write_shards(tmp_path, clips)
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    meta[b"atr.embedding_dim"] = b"5"
    pq.write_table(table.replace_schema_metadata(meta), path)
    index = scan_shards(str(tmp_path))
    with pytest.raises(SchemaError, match="dimension 3"):
        ClipDataset.load(index, entries_for(list(clips), "train", random.Random(0)), make_wv(), 8, 20)


def test_empty_split_is_an_error(tmp_path):
    write_shards(tmp_path, {"a.wav": np.ones((2, 3), np.float32)})
    with pytest.raises(InputError, match="empty"):
        load_split(scan_shards(str(tmp_path)), [], make_wv(), 8, 20)

