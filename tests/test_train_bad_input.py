"""Bad input to ``python -m pipelines.train``: one clear error line (exit 2) naming the file, row or
audio_id, or, for odd-but-valid input, a run that trains and reports what it left out."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines import train as train_job
from tests.test_data import write_clotho_csv, write_shards
from tests.test_train import cli_args, make_inputs, read_jsonl


def run_err(args: list[str], capsys) -> str:
    """Run the CLI expecting failure; return its one stderr line."""
    assert train_job.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: error: "), err
    return err[0]


def test_captions_csv_in_the_wrong_encoding(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    caps = {f"clip{i:03d}.wav": ["un café bruyant"] * 5 for i in range(20, 28)}
    bad = write_clotho_csv(tmp_path / "clotho_captions_validation_latin1.csv", caps, encoding="latin-1")
    err = run_err(cli_args({**inp, "val": f"val={bad}"}, tmp_path / "out"), capsys)
    assert f"{bad}:2" in err and "UTF-8" in err


def test_captions_csv_with_missing_columns(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    bad = tmp_path / "clotho_captions_validation.csv"
    bad.write_text("file_name,caption_1,caption_2\nclip020.wav,a dog,a car\n")
    err = run_err(cli_args({**inp, "val": str(bad)}, tmp_path / "out"), capsys)
    assert str(bad) in err and "caption_3" in err and "missing" in err


def test_empty_punctuation_and_huge_captions_train(tmp_path):
    odd = ["", "?!...,;", " ".join(["dog barks"] * 1000), "a car", "rain falls"]
    val = {f"clip{i:03d}.wav": odd for i in range(20, 28)}
    inp = make_inputs(tmp_path, val_caps=val)
    out = tmp_path / "out"
    assert train_job.main(cli_args(inp, out, epochs=1)) == 0
    (rec,) = read_jsonl(out / "metrics.jsonl")
    assert rec["val"]["t2a"]["num_queries"] == 8 * 5  # none of them is dropped
    assert np.isfinite(rec["val_loss"]) and np.isfinite(rec["train_loss"])


def test_captions_for_audio_without_a_shard_row_are_reported(tmp_path, caplog):
    val = {f"clip{i:03d}.wav": ["a dog"] * 5 for i in range(20, 28)}
    val.update({f"missing{i}.wav": ["a car"] * 5 for i in range(3)})
    inp = make_inputs(tmp_path, val_caps=val)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert train_job.main(cli_args(inp, out, epochs=1)) == 0
    report = json.loads((out / "data.json").read_text())
    assert report["captions_without_audio"]["val"]["count"] == 3
    assert report["captions_without_audio"]["val"]["examples"] == [f"missing{i}.wav" for i in range(3)]
    assert report["joined"] == {"train": 20, "val": 8}
    assert "missing0.wav" in caplog.text and "3 captioned clips have no shard row" in caplog.text


def test_shards_of_another_schema_version(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    path = sorted(Path(inp["segments"]).glob("*.parquet"))[1]
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"atr.schema_version": b"7"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    err = run_err(cli_args(inp, tmp_path / "out"), capsys)
    assert path.name in err and "schema_version 7" in err


def test_shards_of_another_feature_dimension(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    (odd,) = write_shards(Path(inp["segments"]), {"extra.wav": np.ones((3, 9), np.float32)}, name="zz")
    err = run_err(cli_args(inp, tmp_path / "out"), capsys)
    assert odd.name in err and "embedding_dim" in err


def test_resume_against_shards_of_another_dimension_is_refused(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    out = tmp_path / "out"
    assert train_job.main(cli_args(inp, out, epochs=1)) == 0
    other = make_inputs(tmp_path / "other", dim=4)
    err = run_err(cli_args({**inp, "segments": other["segments"]}, out, "--resume", epochs=2), capsys)
    assert "audio_dim" in err and "different settings" in err


def test_nan_in_a_shard_names_the_audio_id_and_shard(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    clips = dict(inp["clips"])
    clips["clip007.wav"] = clips["clip007.wav"].copy()
    clips["clip007.wav"][0, 3] = np.nan
    paths = write_shards(tmp_path / "nan_shards", clips, per_shard=5)
    err = run_err(cli_args({**inp, "segments": str(tmp_path / "nan_shards")}, tmp_path / "out"), capsys)
    assert "clip007.wav" in err and paths[1].name in err and "NaN" in err


def test_a_word2vec_file_that_is_not_one(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    bad = tmp_path / "vectors.bin"
    bad.write_bytes(b"\x00\x01 this is not word2vec \xff" * 20)
    err = run_err(cli_args({**inp, "w2v": str(bad)}, tmp_path / "out"), capsys)
    assert str(bad) in err and "word2vec" in err


def test_an_output_directory_holding_another_run(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    out = tmp_path / "out"
    assert train_job.main(cli_args(inp, out, epochs=1)) == 0
    before = (out / "model.pt").read_bytes()
    err = run_err(cli_args(inp, out, "--seed", "3", epochs=1), capsys)
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert (out / "model.pt").read_bytes() == before  # untouched
    err = run_err(cli_args(inp, out, "--seed", "3", "--resume", epochs=1), capsys)
    assert "seed" in err and "different settings" in err
    assert train_job.main(cli_args(inp, out, "--seed", "3", "--overwrite", epochs=1)) == 0
    assert json.loads((out / "run.json").read_text())["train"]["seed"] == 3
    assert (out / "model.pt").read_bytes() != before
    # a directory with unrelated files only is fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    assert train_job.main(cli_args(inp, other, epochs=1)) == 0
    assert (other / "notes.txt").read_text() == "hello"


def test_an_output_path_that_is_a_file(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    out = tmp_path / "out.txt"
    out.write_text("not a directory")
    err = run_err(cli_args(inp, out), capsys)
    assert str(out) in err and "not a directory" in err


def test_a_split_without_enough_clips(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    val = write_clotho_csv(tmp_path / "clotho_captions_validation.csv", {"nowhere.wav": ["a dog"] * 5})
    err = run_err(cli_args({**inp, "val": str(val)}, tmp_path / "out"), capsys)
    assert "'val'" in err and "0 clips" in err


def test_missing_inputs(tmp_path, capsys):
    inp = make_inputs(tmp_path)
    err = run_err(cli_args({**inp, "segments": str(tmp_path / "nothing")}, tmp_path / "out"), capsys)
    assert "nothing" in err and "no .parquet shards" in err
    err = run_err(cli_args({**inp, "train": str(tmp_path / "absent.csv")}, tmp_path / "out"), capsys)
    assert "absent.csv" in err


def test_cuda_requested_without_a_gpu(tmp_path, capsys, monkeypatch):
    inp = make_inputs(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = run_err(cli_args(inp, tmp_path / "out", "--device", "cuda"), capsys)
    assert "cuda" in err


def test_a_diverging_loss_stops_with_a_clear_error(tmp_path, capsys, monkeypatch):
    from atr_core.training import loop as training

    inp = make_inputs(tmp_path)
    nan_loss = lambda model, batch, loss_fn: torch.tensor(float("nan"), requires_grad=True)  # noqa: E731
    monkeypatch.setattr(training, "batch_loss", nan_loss)
    err = run_err(cli_args(inp, tmp_path / "out"), capsys)
    assert "epoch 1" in err and "nan" in err and "--lr" in err
