"""The embed pipeline: vectors equal the model applied directly, distributed metrics equal the
single-process metrics, reports are written, several models give an aggregate report.

The corpus builders here are shared with tests/test_embed_bad_input.py and tests/test_search.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions

from atr_core.evaluation import metrics
from atr_core.evaluation.ranking import AudioIndex
from atr_core.formats.shards import ShardIdentity, rows_to_table, segment_schema
from atr_core.formats.vectors import read_vectors
from atr_core.model.compat import model_names
from atr_core.model.directory import load_model, save_model
from atr_core.model.padding import pad_segments
from atr_core.model.retrieval import ModelConfig, RetrievalModel
from atr_core.search import searcher as search
from atr_core.text.word_vectors import train_word_vectors
from pipelines import embed

WORDS = ["dog", "barks", "rain", "falls", "car", "engine", "bird", "sings", "loud", "soft", "water", "wind"]
AUDIO_DIM = 6
MAX_SEGMENTS = 5


@dataclass
class Corpus:
    """A tiny generated corpus on disk: shards, captions files and model directories."""

    root: Path
    shards: Path
    captions: dict[str, Path] = field(default_factory=dict)
    clips: dict[str, np.ndarray] = field(default_factory=dict)
    entries: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    models: list[Path] = field(default_factory=list)


def make_captions(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 9)))) for _ in range(n)]


def write_shards(
    directory: Path,
    clips: dict[str, np.ndarray],
    feature: str = "lms",
    dim: int = AUDIO_DIM,
    n_files: int = 2,
    dtype: str = "float16",
) -> Path:
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    schema = segment_schema(ShardIdentity(feature=feature, embedding_dim=dim, dtype=dtype))
    ids = sorted(clips)
    for f in range(n_files):
        rows = [
            {
                "audio_id": a,
                "uri": f"/audio/{a}",
                "num_segments": len(clips[a]),
                "feature": feature,
                "embedding": clips[a],
            }
            for a in ids[f::n_files]
        ]
        pq.write_table(rows_to_table(rows, schema), directory / f"segments-{f:05d}-of-{n_files:05d}.parquet")
    return directory


def write_jsonl(path: Path, entries: dict[str, list[str]], split: str | None = None) -> Path:
    with open(path, "w") as f:
        for aid, caps in entries.items():
            row = {"audio": aid, "captions": caps}
            if split:
                row["split"] = split
            f.write(json.dumps(row) + "\n")
    return path


def make_model(
    directory: Path,
    seed: int,
    train_captions: list[str],
    feature: str = "lms",
    audio_dim: int = AUDIO_DIM,
    aggregation: str = "netrvlad",
    wv=None,
) -> Path:
    """A randomly initialised tiny model (BatchNorm statistics randomised too) saved with model_io."""
    wv = wv or train_word_vectors(train_captions, dim=8, seed=0)
    config = ModelConfig(
        audio_dim=audio_dim,
        text_dim=8,
        embed_dim=5,
        aggregation=aggregation,
        audio_clusters=3,
        text_clusters=3,
        lstm_hidden=8,
        max_segments=MAX_SEGMENTS,
        max_words=6,
        feature=feature,
    )
    torch.manual_seed(seed)
    model = RetrievalModel(config)
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) + 0.5)
    save_model(directory, model, config, wv)
    return directory


def make_corpus(
    root: Path, seed: int = 0, n_models: int = 1, val_clips: int = 6, test_clips: int = 9, missing: int = 2
) -> Corpus:
    """Shards for val+test clips (plus two clips in no captions file), JSONL captions per split with
    ``missing`` test clips that have no shard row, and ``n_models`` model directories."""
    rng = np.random.default_rng(seed)
    shards = root / "shards"
    c = Corpus(root, shards)
    for split, n in (("val", val_clips), ("test", test_clips)):
        c.entries[split] = {}
        for i in range(n):
            aid = f"{split}/clip{i:02d}.wav"
            c.clips[aid] = rng.random((int(rng.integers(1, 9)), AUDIO_DIM)).astype(np.float16)
            c.entries[split][aid] = make_captions(rng, int(rng.integers(1, 6)))
    for i in range(2):
        c.clips[f"extra/clip{i}.wav"] = rng.random((3, AUDIO_DIM)).astype(np.float16)
    for i in range(missing):
        c.entries["test"][f"test/gone{i}.wav"] = make_captions(rng, 2)
    write_shards(shards, c.clips)
    for split in ("val", "test"):
        c.captions[split] = write_jsonl(root / f"{split}.jsonl", c.entries[split], split)
    train_caps = make_captions(rng, 40) + [w for w in WORDS]
    wv = train_word_vectors(train_caps, dim=8, seed=0)
    for m in range(n_models):
        c.models.append(make_model(root / "models" / f"seed{m}", seed + m, train_caps, wv=wv))
    return c


def embed_args(c: Corpus, out: Path, *extra: str) -> list[str]:
    return [
        "--segments",
        str(c.shards),
        "--captions",
        str(c.captions["val"]),
        str(c.captions["test"]),
        "--model",
        *map(str, c.models),
        "--output",
        str(out),
        "--runner=FnApiRunner",
        "--batch_size",
        "4",
        "--block_size",
        "5",
        "--examples",
        "2",
        *extra,
    ]


def direct_vectors(
    model_dir: Path, c: Corpus, split: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Audio and caption vectors computed one item at a time straight through the model."""
    model, config, wv = load_model(model_dir)
    audio, text = {}, {}
    with torch.no_grad():
        for aid, caps in c.entries[split].items():
            if aid in c.clips:
                seg = c.clips[aid][: config.max_segments].astype(np.float32)
                x = torch.zeros(1, config.max_segments, AUDIO_DIM)
                mask = torch.zeros(1, config.max_segments)
                x[0, : len(seg)] = torch.from_numpy(seg)
                mask[0, : len(seg)] = 1
                audio[aid] = model.encode_audio(x, mask)[0].numpy()
                for i, cap in enumerate(caps):
                    mat, m = wv.encode(cap, config.max_words)
                    text[f"{aid}#{i}"] = model.encode_text(
                        torch.from_numpy(mat)[None], torch.from_numpy(m)[None]
                    )[0].numpy()
    return audio, text


@pytest.fixture(scope="module")
def one_model_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed1")
    c = make_corpus(root)
    out = root / "out"
    embed.run(embed_args(c, out))
    return c, out


def test_vectors_equal_direct_model_application(one_model_run):
    c, out = one_model_run
    name = c.models[0].name
    for split in ("val", "test"):
        audio = read_vectors(str(out / name / split), kind="audio")
        caps = read_vectors(str(out / name / split), kind="caption")
        want_a, want_t = direct_vectors(c.models[0], c, split)
        assert sorted(audio.ids) == sorted(want_a)
        assert sorted(caps.ids) == sorted(want_t)
        assert set(audio.splits) == {split} and set(caps.splits) == {split}
        for aid, vec in zip(audio.ids, audio.vectors, strict=True):
            np.testing.assert_allclose(vec, want_a[aid], atol=2e-6, rtol=0)
        for cid, aid, text, vec in zip(caps.ids, caps.audio_ids, caps.captions, caps.vectors, strict=True):
            np.testing.assert_allclose(vec, want_t[cid], atol=2e-6, rtol=0)
            assert cid.startswith(aid + "#")
            assert text == c.entries[split][aid][int(cid.rsplit("#", 1)[1])]
        np.testing.assert_allclose(np.linalg.norm(audio.vectors, axis=1), 1.0, atol=1e-5)
        assert audio.identity.model["name"] == name
        assert audio.identity.model["feature"] == "lms"


def test_a_rerun_writes_byte_identical_vector_files(one_model_run, tmp_path):
    """Fixed batches (encoder and row groups): the same inputs give the same bytes, run after run."""
    c, out = one_model_run
    again = tmp_path / "again"
    embed.run(embed_args(c, again))
    files = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    assert files and files == sorted(p.relative_to(again) for p in again.rglob("*.parquet"))
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


def _metrics_from_files(directory: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    audio = read_vectors(str(directory), kind="audio")
    caps = read_vectors(str(directory), kind="caption")
    pos = {a: i for i, a in enumerate(audio.ids)}
    c2c = np.array([pos[a] for a in caps.audio_ids], dtype=np.int64)
    return metrics.retrieval_metrics(caps.vectors @ audio.vectors.T, c2c), caps.vectors, audio.vectors


def test_distributed_metrics_equal_single_process(one_model_run):
    c, out = one_model_run
    name = c.models[0].name
    for split in ("val", "test"):
        got = json.loads((out / name / split / "metrics.json").read_text())
        want, text, audio = _metrics_from_files(out / name / split)
        got_metrics = got.get("metrics", got)
        for direction in ("t2a", "a2t"):
            for key in metrics.METRIC_KEYS:
                assert got_metrics[direction][key] == pytest.approx(want[direction][key], abs=1e-12), (
                    split,
                    direction,
                    key,
                )
        assert got_metrics["t2a"]["num_queries"] == sum(
            len(v) for a, v in c.entries[split].items() if a in c.clips
        )


def test_report_files_and_accounting(one_model_run):
    c, out = one_model_run
    name = c.models[0].name
    for split in ("val", "test"):
        d = out / name / split
        for f in ("metrics.json", "report.md", "report.html"):
            assert (d / f).is_file() and (d / f).stat().st_size > 0, f
        assert list(d.glob("*.png"))
    meta = json.loads((out / name / "test" / "metrics.json").read_text())
    text = json.dumps(meta)
    assert "test/gone0.wav" in text and "test/gone1.wav" in text
    summary = json.loads((out / embed.SUMMARY_FILE).read_text())
    assert summary["balanced"] is True
    assert summary["shard_clips_read"] == len(c.clips)
    assert summary["clips_without_captions"] == 2
    assert summary["captioned_clips_without_shard_row"] == 2
    assert summary["splits"]["test"]["clips"] == 9


def test_several_models_give_an_aggregate_report(tmp_path):
    c = make_corpus(tmp_path, seed=3, n_models=2, val_clips=3, test_clips=4, missing=0)
    out = tmp_path / "out"
    embed.run(embed_args(c, out))
    runs = []
    for m in c.models:
        for split in ("val", "test"):
            assert (out / m.name / split / "metrics.json").is_file()
        want, _, _ = _metrics_from_files(out / m.name / "test")
        runs.append(want)
    agg_dir = out / "test"
    assert (agg_dir / "metrics.json").is_file() and (agg_dir / "report.md").is_file()
    agg = metrics.aggregate_runs(runs)
    text = (agg_dir / "metrics.json").read_text()
    r1 = agg["t2a"]["R1"]
    assert f"{r1['mean']}" in text or json.dumps(r1["mean"]) in text
    # A second run into the same output is refused unless --overwrite.
    from atr_core.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="--overwrite"):
        embed.plan_run(PipelineOptions(embed_args(c, out)).view_as(embed.EmbedOptions))
    assert os.path.isdir(out / "test")


def test_model_names_are_unique_and_short():
    assert model_names(["runs/a", "runs/b/"]) == ["a", "b"]
    assert model_names(["x/seed0/model", "x/seed1/model"]) == ["seed0_model", "seed1_model"]
    with pytest.raises(Exception, match="twice"):
        model_names(["a", "a/"])


def test_pad_segments_and_prepare_segments():
    rng = np.random.default_rng(0)
    for _ in range(30):
        segs = [
            rng.random((int(rng.integers(1, 9)), 3)).astype(np.float16)
            for _ in range(int(rng.integers(1, 5)))
        ]
        prepared = [search.prepare_segments(s, 5) for s in segs]
        x, mask = pad_segments(prepared, 5)
        for i, s in enumerate(segs):
            n = min(len(s), 5)
            np.testing.assert_array_equal(x[i, :n], s[:n].astype(np.float32))
            assert mask[i].sum() == n and not x[i, n:].any()


def _rank_like_the_pipeline(rng, text, audio, a_ids, c_ids, c_aud):
    """The pipeline's ranking functions without Beam: random caption order and random blocks."""
    index = AudioIndex.build(
        [embed.Vector(a, "audio", "s", a, None, v) for a, v in zip(a_ids, audio, strict=True)], audio.shape[1]
    )
    caps = [embed.Vector(c, "caption", "s", a, "x", v) for c, a, v in zip(c_ids, c_aud, text, strict=True)]
    caps = [caps[i] for i in rng.permutation(len(caps))]
    cuts = np.sort(
        rng.choice(np.arange(1, len(caps)), size=min(len(caps) - 1, int(rng.integers(0, 4))), replace=False)
    )
    make = embed.MakeBlocks()
    make.setup()
    blocks, missing = [], []
    for part in np.split(np.arange(len(caps)), cuts):
        for out in make.process([caps[i] for i in part], index):
            (missing.append(out.value) if hasattr(out, "tag") else blocks.append(out))
    merge = embed.MergeOwnScores()
    accs = [merge.add_input(merge.create_accumulator(), embed.own_scores(b, index)) for b in blocks]
    window = embed.a2t_window(merge.extract_output(merge.merge_accumulators(accs)), index)
    comb = embed.CombineScored()
    accs = [comb.add_input(comb.create_accumulator(), embed.score_block(b, index, window)) for b in blocks]
    return embed.split_metrics(comb.extract_output(comb.merge_accumulators(accs)), window, index), missing


def test_pipeline_ranking_equals_single_process_metrics_with_ties():
    rng = np.random.default_rng(42)
    for case in range(60):
        n_clips, dim = int(rng.integers(1, 12)), int(rng.integers(1, 6))
        # Quantised values (multiples of 1/2, small dims): every dot product is exact in float32, so
        # ties are real ties and any order of summation gives the same similarities.
        audio = rng.integers(-2, 3, size=(n_clips, dim)).astype(np.float32) / 2
        a_ids = [f"c{j:02d}" for j in range(n_clips)]
        per = rng.integers(0 if n_clips > 1 else 1, 4, size=n_clips)
        per[rng.integers(n_clips)] = max(per.max(), 1)
        c_aud = [a_ids[j] for j in range(n_clips) for _ in range(per[j])]
        c_ids = [f"{a}#{i}" for i, a in enumerate(c_aud)]
        text = rng.integers(-2, 3, size=(len(c_ids), dim)).astype(np.float32) / 2
        if case % 3 == 0:
            text[: len(text) // 2] = audio[[a_ids.index(a) for a in c_aud[: len(text) // 2]]]  # duplicates
        orphan = rng.random() < 0.3
        if orphan:  # a caption whose clip has no vector: left out, reported as missing
            c_ids.append("gone#0")
            c_aud.append("gone")
            text = np.vstack([text, np.ones((1, dim), np.float32)])
        got, missing = _rank_like_the_pipeline(rng, text, audio, a_ids, c_ids, c_aud)
        keep = [i for i, a in enumerate(c_aud) if a != "gone"]
        c2c = np.array([a_ids.index(c_aud[i]) for i in keep])
        want = metrics.retrieval_metrics(text[keep] @ audio.T, c2c)
        assert got["metrics"] == want, case
        want_ranks = metrics.rank_vectors(text[keep] @ audio.T, c2c)
        order = np.argsort(np.asarray([c_ids[i] for i in keep], dtype=object), kind="stable")
        np.testing.assert_array_equal(got["ranks"]["t2a"], want_ranks["t2a"][order])
        np.testing.assert_array_equal(got["ranks"]["a2t"], want_ranks["a2t"])
        assert missing == (["gone#0"] if orphan else [])
