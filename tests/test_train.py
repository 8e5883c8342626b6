"""Tests for the training job: atr_core.training.loop and ``python -m pipelines.train``.

Tiny corpora (a few dozen clips, dims of 4-16, 2-3 epochs) keep every test to seconds on 2 cores.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from atr_core.formats.manifest import read_manifest
from atr_core.model.directory import load_model
from atr_core.model.retrieval import ModelConfig, RetrievalModel
from atr_core.training import loop as training
from atr_core.training.data import load_split, scan_shards
from atr_core.training.loop import RunDir, TrainConfig, fit
from atr_core.training.losses import caption_averaged_similarity, clip_averaged_similarity
from atr_core.training.optim import build_optimizer
from pipelines import train as train_job
from tests.test_data import (
    make_wv,
    random_caption,
    write_audiocaps_csv,
    write_clotho_csv,
    write_shards,
    write_w2v,
)

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--embed_dim", "16", "--audio_clusters", "2", "--text_clusters", "3", "--batch_size", "8",
    "--no_progress", "--checkpoint_interval", "0",
]


def make_inputs(root: Path, n_train: int = 20, n_val: int = 8, dim: int = 6, seed: int = 0,
                fmt: str = "clotho", val_caps=None) -> dict:
    """Shards + per-split captions files + a tiny word2vec file; returns their paths."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    ids = [f"clip{i:03d}.wav" for i in range(n_train + n_val)]
    clips = {a: rng.random((int(rng.integers(2, 9)), dim)).astype(np.float32) for a in ids}
    write_shards(root / "shards", clips, per_shard=5)
    write = write_clotho_csv if fmt == "clotho" else write_audiocaps_csv
    n_caps = 5 if fmt == "clotho" else 1
    train_caps = {a: [random_caption(prng) for _ in range(n_caps)] for a in ids[:n_train]}
    val_caps = val_caps or {a: [random_caption(prng) for _ in range(5)] for a in ids[n_train:]}
    name = "clotho_captions_{}.csv" if fmt == "clotho" else "{}.csv"
    return {
        "segments": str(root / "shards"),
        "train": str(write(root / name.format("development" if fmt == "clotho" else "train"), train_caps)),
        "val": str(write(root / name.format("validation" if fmt == "clotho" else "val"), val_caps)),
        "w2v": str(write_w2v(root / "w2v.txt")),
        "clips": clips,
    }


def cli_args(inp: dict, out: Path | str, *extra: str, epochs: int = 2) -> list[str]:
    return [
        "--segments", inp["segments"], "--captions", inp["train"], inp["val"], "--word2vec", inp["w2v"],
        "--output", str(out), "--epochs", str(epochs), *TINY, *extra,
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- caption averaging


def test_clip_average_equals_the_authors_reshape_for_uniform_counts():
    for case in range(25):
        g = torch.Generator().manual_seed(case)
        b, q, e = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g)), 7
        text, audio = torch.randn(b * q, e, generator=g), torch.randn(b, e, generator=g)
        owner = torch.arange(b).repeat_interleave(q)
        got = clip_averaged_similarity(text @ audio.T, owner, b)
        assert torch.allclose(got, caption_averaged_similarity(text, audio, q), atol=1e-6)


def test_clip_average_uses_each_clips_own_captions_for_any_counts():
    for case in range(25):
        g = torch.Generator().manual_seed(100 + case)
        b = int(torch.randint(1, 9, (1,), generator=g))
        counts = torch.randint(1, 6, (b,), generator=g)
        owner = torch.arange(b).repeat_interleave(counts)
        sims = torch.randn(len(owner), b, generator=g, requires_grad=True)
        got = clip_averaged_similarity(sims, owner, b)
        want = torch.stack([sims[owner == i].mean(0) for i in range(b)])
        assert torch.allclose(got, want, atol=1e-6)
        got.sum().backward()  # differentiable, each caption weighted 1/count
        assert torch.allclose(sims.grad[:, 0], 1.0 / counts[owner].float())


# --------------------------------------------------------------------------- the CLI end to end


def test_run_writes_every_output_and_follows_the_recipe(tmp_path):
    inp = make_inputs(tmp_path)
    out = tmp_path / "run"
    assert train_job.main(cli_args(inp, out, epochs=3)) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.pt", "config.json", "metrics.jsonl", "curves.png", "checkpoint.pt", "run.json",
            "data.json"} <= names
    # model.pt is a bare state_dict loadable with weights_only; config.json rebuilds the model
    state = torch.load(out / "model.pt", weights_only=True)
    model, config, wv = load_model(out)
    assert state_equal(state, model.state_dict())
    assert (config.audio_dim, config.text_dim, config.embed_dim, config.aggregation) == (6, 8, 16, "netrvlad")
    assert config.feature == "lms" and config.max_segments == 90  # Clotho captions -> Clotho cap
    assert wv.identity["sha256"] == config.word_vectors["sha256"]
    hist = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    for r in hist:
        assert r["lr"] == pytest.approx(0.01 * 0.95 ** (r["epoch"] - 1))  # StepLR after validation
        assert r["train_clips"] == 20 and r["train_batches"] == 3  # 8 + 8 + 4: last partial batch kept
        assert r["val"]["t2a"]["num_queries"] == 8 * 5  # independent captions at evaluation
        assert r["val"]["a2t"]["num_queries"] == 8
        for key in ("R1", "R5", "R10", "R50", "MedR", "MeanR", "geometric_mean"):
            assert key in r["val"]["t2a"] and key in r["val"]["a2t"]
    scores = [r["val"]["t2a"]["geometric_mean"] for r in hist]
    best = max(i for i, s in enumerate(scores) if s == max(scores))  # ties -> later epoch
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["best"]["epoch"] == best + 1 and ckpt["epoch"] == 3
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "run.json").read_text())["train"]["optimizer"] == "ranger"


def test_seeded_runs_are_deterministic_and_the_seed_matters(tmp_path):
    inp = make_inputs(tmp_path)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert train_job.main(cli_args(inp, tmp_path / name, "--seed", str(seed))) == 0
    load = lambda n: torch.load(tmp_path / n / "checkpoint.pt", weights_only=True)["model"]  # noqa: E731
    assert state_equal(load("a"), load("b"))
    assert not state_equal(load("a"), load("c"))


def test_kill_and_resume_ends_with_bit_identical_weights(tmp_path):
    """A run killed (SIGKILL) after epoch 1 and resumed equals an uninterrupted run, bit for bit.

    Every run is its own process, so all three see the same torch thread count (an in-process run
    would inherit whatever earlier tests set).
    """
    inp = make_inputs(tmp_path, n_train=19)
    extra = ("--word2vec", "train:5", "--aggregation", "netvlad")

    def train_process(out: str, *more: str, env: dict | None = None) -> subprocess.CompletedProcess:
        args = cli_args(inp, tmp_path / out, *extra, *more, epochs=3)
        return subprocess.run(
            [sys.executable, "-m", "pipelines.train", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    full_run = train_process("full")
    assert full_run.returncode == 0, full_run.stderr[-2000:]
    proc = train_process("cut", env={**os.environ, train_job.KILL_AFTER_EPOCH_ENV: "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == 1
    resumed = train_process("cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state_equal(full["model"], cut["model"])
    assert state_equal(torch.load(tmp_path / "full" / "model.pt", weights_only=True),
                       torch.load(tmp_path / "cut" / "model.pt", weights_only=True))
    assert full["optimizer"]["step_count"] == cut["optimizer"]["step_count"]
    assert state_equal(dict(enumerate(full["optimizer"]["slow"])), dict(enumerate(cut["optimizer"]["slow"])))
    drop_time = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]  # noqa: E731
    assert drop_time(read_jsonl(tmp_path / "full" / "metrics.jsonl")) == drop_time(
        read_jsonl(tmp_path / "cut" / "metrics.jsonl"))
    # resuming a finished run trains nothing more; more epochs continue it
    assert train_job.main(cli_args(inp, tmp_path / "cut", *extra, "--resume", epochs=3)) == 0
    assert len(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == 3
    assert train_job.main(cli_args(inp, tmp_path / "cut", *extra, "--resume", epochs=4)) == 0
    assert [r["epoch"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_audiocaps_val_with_fewer_captions_for_some_clips(tmp_path):
    prng = random.Random(5)
    ids = [f"clip{i:03d}.wav" for i in range(20, 28)]
    val = {a: [random_caption(prng) for _ in range(5 if i % 3 else 2)] for i, a in enumerate(ids)}
    inp = make_inputs(tmp_path, fmt="audiocaps", val_caps=val)
    assert [len(e.captions) for e in read_manifest(inp["val"])] == [len(v) for v in val.values()]
    out = tmp_path / "run"
    assert train_job.main(cli_args(inp, out, epochs=1)) == 0
    (rec,) = read_jsonl(out / "metrics.jsonl")
    assert rec["val"]["t2a"]["num_queries"] == sum(len(v) for v in val.values())
    assert rec["train_clips"] == 20
    assert load_model(out)[1].max_segments == 31  # AudioCaps captions -> AudioCaps cap


def test_streaming_mode_trains_every_clip_deterministically(tmp_path):
    inp = make_inputs(tmp_path)
    for name in ("s1", "s2"):
        assert train_job.main(cli_args(inp, tmp_path / name, "--streaming", "--shuffle_buffer", "4")) == 0
        assert all(r["train_clips"] == 20 for r in read_jsonl(tmp_path / name / "metrics.jsonl"))
    load = lambda n: torch.load(tmp_path / n / "checkpoint.pt", weights_only=True)["model"]  # noqa: E731
    assert state_equal(load("s1"), load("s2"))


def test_remote_output_is_staged_and_uploaded(tmp_path):
    import fsspec

    inp = make_inputs(tmp_path)
    url = "memory://atr-test-run"
    assert train_job.main(cli_args(inp, url, "--word2vec", "train:4", epochs=1)) == 0
    fs = fsspec.filesystem("memory")
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(url, detail=False)}
    assert {"model.pt", "config.json", "metrics.jsonl", "checkpoint.pt", "word_vectors"} <= names
    model, config, wv = load_model(url)
    assert wv.dim == 4 == config.text_dim
    assert train_job.main(cli_args(inp, url, "--word2vec", "train:4", "--resume", epochs=2)) == 0
    with fs.open(f"{url}/metrics.jsonl") as f:
        assert [json.loads(x)["epoch"] for x in f.read().decode().splitlines()] == [1, 2]
    fs.rm(url, recursive=True)


def test_help_documents_every_option():
    parser = train_job.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    text = parser.format_help()
    for opt in ("--segments", "--captions", "--word2vec", "--output", "--resume", "--overwrite",
                "--streaming", "--max_segments", "--aggregation", "--optimizer", "--device", "--seed"):
        assert opt in text
    required = ["--segments", "s", "--captions", "c", "--word2vec", "w", "--output", "o"]
    defaults = vars(parser.parse_args(required))
    assert (defaults["lr"], defaults["weight_decay"], defaults["seed"], defaults["aggregation"],
            defaults["optimizer"], defaults["bn_stats"]) == (0.01, 1e-3, 0, "netrvlad", "ranger", "precise")
    # batch size, epochs and lr factor default to automatic: the paper's for Clotho-sized training sets
    assert (defaults["batch_size"], defaults["epochs"], defaults["lr_gamma"]) == (None, None, None)
    clotho = training.resolve_schedule(3839, defaults["batch_size"], defaults["epochs"], defaults["lr_gamma"])
    assert (clotho.batch_size, clotho.epochs, clotho.lr_gamma) == (128, 20, 0.95)


# --------------------------------------------------------------------------- library: model selection


def _tiny_fit(tmp_path: Path, scores: list[float]):
    inp = make_inputs(tmp_path)
    index = scan_shards(inp["segments"])
    entries = read_manifest(inp["train"]) + read_manifest(inp["val"])
    wv = make_wv()
    src = lambda s: load_split(index, [e for e in entries if e.split == s], wv, 8, 20)  # noqa: E731
    config = ModelConfig(
        audio_dim=6, text_dim=8, embed_dim=8, audio_clusters=2, text_clusters=2, max_segments=8
    )
    training.seed_everything(0)
    model = RetrievalModel(config)
    opt = build_optimizer("ranger", model.parameters())
    snapshots, saved = [], []
    it = iter(scores)
    run = RunDir(str(tmp_path / "run"))
    run.prepare(pull=False)
    result = fit(
        model, opt, src("train"), src("val"), run,
        TrainConfig(epochs=len(scores), batch_size=8, progress=False),
        save_best=lambda d: saved.append({k: v.clone() for k, v in model.state_dict().items()}),
        device=torch.device("cpu"),
        on_epoch_end=lambda rec: snapshots.append({k: v.clone() for k, v in model.state_dict().items()}),
        score_fn=lambda metrics: next(it),
    )
    return result, snapshots, saved


def test_best_epoch_is_the_max_score_and_ties_go_to_the_later_epoch(tmp_path):
    result, snaps, saved = _tiny_fit(tmp_path / "a", [0.5, 0.9, 0.9, 0.1])
    assert result.best_epoch == 3
    assert state_equal(saved[-1], snaps[2]) and not state_equal(saved[-1], snaps[1])
    assert [r["best"] for r in result.history] == [True, True, True, False]
    result, snaps, saved = _tiny_fit(tmp_path / "b", [0.7, 0.2, 0.3])
    assert result.best_epoch == 1 and len(saved) == 1 and state_equal(saved[0], snaps[0])


def test_padding_to_the_longest_clip_gives_the_same_embeddings(tmp_path):
    """With masking, the batch-max padding the job uses equals the authors' pad-to-cap, for every pooling."""
    from atr_core.model.aggregation import AGGREGATIONS

    inp = make_inputs(tmp_path)
    index = scan_shards(inp["segments"])
    entries = read_manifest(inp["train"])
    src = load_split(index, entries, make_wv(), 12, 20)
    for aggregation in AGGREGATIONS:
        torch.manual_seed(0)
        model = RetrievalModel(ModelConfig(
            audio_dim=6, text_dim=8, embed_dim=8, aggregation=aggregation, audio_clusters=3, text_clusters=2,
            lstm_hidden=5, max_segments=12,
        ))
        model.train()
        with torch.no_grad():  # non-trivial BatchNorm running statistics
            for b in src.batches(7, shuffle=True):
                model.encode_audio(b.audio, b.audio_mask)
        outs = []
        for pad in (True, False):
            src.pad_to_cap = pad
            first = next(src.batches(5))
            longest = max(len(inp["clips"][a]) for a in first.audio_ids)
            assert first.audio.shape[1] == (12 if pad else longest) and longest < 12
            outs.append(training.encode_split(model, src, torch.device("cpu"), batch_size=5)[1])
        assert torch.allclose(outs[0], outs[1], atol=1e-5), aggregation


def test_unmasked_run_pads_to_the_cap(tmp_path, monkeypatch):
    inp = make_inputs(tmp_path)
    seen = []
    real = training.batch_loss
    record = lambda m, b, f: seen.append(b.audio.shape[1]) or real(m, b, f)  # noqa: E731
    monkeypatch.setattr(training, "batch_loss", record)
    args = cli_args(inp, tmp_path / "run", "--unmasked", "--max_segments", "12", epochs=1)
    assert train_job.main(args) == 0
    assert set(seen) == {12} and load_model(tmp_path / "run")[1].use_mask is False
