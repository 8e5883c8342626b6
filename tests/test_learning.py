"""A real learning test: the whole training path learns audio-text retrieval from audio content.

Corpus (:mod:`atr_core.synthetic`): each clip is a tone of low / middle / high pitch, steady /
pulsing / beeping, over silence / white-noise hiss / brown-noise rumble, and its five captions name
those properties. Audio is written with soundfile and decoded back with :func:`decode_audio`;
segment features come from the real feature code (LMS, and CNN14 with the random weights of the
``cnn14_checkpoint`` fixture) through :func:`extract_batch`; shards are written with
:mod:`atr_core.shards`; training runs ``python -m pipelines.train`` (in process) on the train split
with validation-based model selection; the selected model is evaluated on a held-out test split.

Pass mark: t2a R@10 >= 3x chance (chance R@10 = 10 / test clips). Learning only the background
(one of three factors) gives exactly 3x chance in expectation, so passing needs at least two.

About random CNN14 weights: ``random:SEED`` / the fixture's checkpoint calibrate their BatchNorm
statistics on a fixed signal (:func:`atr_core.cnn14.init_random_`), so untrained CNN14 features still
follow the audio content; with random statistics they would be nearly identical for every clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from gensim.models import KeyedVectors

from atr_core.audio import decode_audio
from atr_core.data import join_captions, load_split, scan_shards
from atr_core.features import feature_identity
from atr_core.manifest import read_manifest
from atr_core.model_io import load_model
from atr_core.shards import rows_to_table, segment_schema
from atr_core.synthetic import generate
from atr_core.text import tokenize
from atr_core.training import evaluate
from atr_core.windows import extract_batch
from pipelines import train as train_job

SECONDS = 1.28  # 4 segments of 0.32 s
SPLITS = {"train": 81, "val": 27, "test": 54}  # 3, 1 and 2 clips of each of the 27 combinations
W2V_DIM = 24
TRAIN_ARGS = ["--embed_dim", "64", "--audio_clusters", "4", "--text_clusters", "4", "--batch_size", "16"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """WAV files, a JSONL captions file with train/val/test splits, and a random word2vec file."""
    root = tmp_path_factory.mktemp("learning")
    clips = generate(sum(SPLITS.values()), seconds=SECONDS, seed=0)
    split_of = [s for s, n in SPLITS.items() for _ in range(n)]
    (root / "audio").mkdir()
    waveforms = {}
    with open(root / "captions.jsonl", "w") as f:
        for clip, split in zip(clips, split_of, strict=True):
            path = root / "audio" / clip.audio_id
            sf.write(path, clip.waveform, 32000, subtype="PCM_16")
            waveforms[clip.audio_id] = decode_audio(path, clip.audio_id).waveform
            row = {"audio": clip.audio_id, "captions": list(clip.captions), "split": split}
            f.write(json.dumps(row) + "\n")
    # word vectors: one random vector per caption word, so words are distinguishable but carry no meaning
    words = sorted({w.lower() for c in clips for cap in c.captions for w in tokenize(cap)})
    kv = KeyedVectors(W2V_DIM)
    kv.add_vectors(words, np.random.default_rng(0).normal(size=(len(words), W2V_DIM)).astype(np.float32))
    kv.save_word2vec_format(str(root / "w2v.txt"))
    return {
        "root": root, "waveforms": waveforms,
        "captions": str(root / "captions.jsonl"), "w2v": str(root / "w2v.txt"),
        "split_of": dict(zip([c.audio_id for c in clips], split_of, strict=True)),
    }


def write_feature_shards(corpus: dict, model: torch.nn.Module, feature: str, checkpoint=None) -> str:
    """Extract every clip's segments with the real feature code and write them as two shards."""
    ids = list(corpus["waveforms"])
    feats = extract_batch(model, [corpus["waveforms"][a] for a in ids])
    schema = segment_schema(feature_identity(feature, checkpoint))
    out = corpus["root"] / f"shards_{feature}"
    out.mkdir()
    rows = [
        {"audio_id": a, "uri": str(corpus["root"] / "audio" / a), "split": corpus["split_of"][a],
         "duration_s": SECONDS, "source_sample_rate": 32000, "source_channels": 1, "num_segments": len(x),
         "feature": feature, "checkpoint_sha256": "", "package_version": "test", "embedding": x}
        for a, x in zip(ids, feats, strict=True)
    ]
    for k, chunk in enumerate((rows[::2], rows[1::2])):
        pq.write_table(rows_to_table(chunk, schema), out / f"part-{k:05d}.parquet")
    return str(out)


def train_then_test(corpus: dict, segments: str, output: Path, extra: list[str]) -> tuple[dict, list[dict]]:
    """Train with the CLI on train (selecting on val), then evaluate the saved model on test."""
    args = ["--segments", segments, "--captions", corpus["captions"], "--word2vec", corpus["w2v"],
            "--output", str(output), "--no_progress", *TRAIN_ARGS, *extra]
    assert train_job.main(args) == 0
    model, config, wv = load_model(output)
    index = scan_shards(segments)
    by_split, report = join_captions(read_manifest(corpus["captions"]), index, ["test"])
    assert report.joined["test"] == SPLITS["test"]
    test = load_split(index, by_split["test"], wv, config.max_segments, config.max_words)
    history = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return evaluate(model, test, torch.device("cpu"))["metrics"], history


def assert_learned(metrics: dict, history: list[dict]) -> None:
    chance = 100.0 * 10 / SPLITS["test"]
    assert metrics["t2a"]["num_queries"] == SPLITS["test"] * 5
    assert metrics["t2a"]["R10"] >= 3 * chance, (metrics["t2a"], chance)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_learns_from_lms_features(corpus, lms_model, tmp_path):
    segments = write_feature_shards(corpus, lms_model, "lms")
    metrics, history = train_then_test(corpus, segments, tmp_path / "run", ["--epochs", "12"])
    assert_learned(metrics, history)


def test_learns_from_random_weight_cnn14_features(corpus, cnn14_checkpoint, tmp_path):
    from atr_core.cnn14 import load_cnn14, resolve_checkpoint

    info = resolve_checkpoint(str(cnn14_checkpoint))
    model = load_cnn14(info)
    segments = write_feature_shards(corpus, model, "cnn14", info)
    metrics, history = train_then_test(corpus, segments, tmp_path / "run", ["--epochs", "12"])
    assert_learned(metrics, history)
