"""Bad input to the embed pipeline: clear errors before any work, or counted and reported items."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from gensim.models import KeyedVectors

from atr_core.errors import ConfigMismatchError, InputError, SchemaError
from atr_core.formats.vectors import read_vectors
from pipelines import embed
from tests.test_embed import (
    AUDIO_DIM,
    embed_args,
    make_captions,
    make_corpus,
    make_model,
    write_jsonl,
    write_shards,
)


def _assert_nothing_written(out):
    assert not out.exists() or not any(out.rglob("*.parquet"))


def test_model_from_another_feature_set_is_refused_before_work(tmp_path):
    c = make_corpus(tmp_path, n_models=0)
    caps = ["dog barks", "rain falls"]
    c.models = [make_model(tmp_path / "cnn14_model", 0, caps, feature="cnn14")]
    out = tmp_path / "out"
    with pytest.raises(ConfigMismatchError, match=r"cnn14_model.*feature 'cnn14' != shards feature 'lms'"):
        embed.run(embed_args(c, out))
    _assert_nothing_written(out)
    c.models = [make_model(tmp_path / "wide_model", 0, caps, audio_dim=AUDIO_DIM + 1)]
    with pytest.raises(ConfigMismatchError, match=r"audio_dim 7 != shards embedding_dim 6"):
        embed.run(embed_args(c, out))
    _assert_nothing_written(out)


def test_cli_turns_a_mismatch_into_one_line_and_exit_code_2(tmp_path):
    c = make_corpus(tmp_path, n_models=0)
    c.models = [make_model(tmp_path / "cnn14_model", 0, ["dog"], feature="cnn14")]
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.embed", *embed_args(c, tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("embed: error:")]
    assert len(errors) == 1 and "feature" in errors[0] and "Traceback" not in proc.stderr
    _assert_nothing_written(tmp_path / "out")


def test_other_word_vectors_are_refused(tmp_path):
    c = make_corpus(tmp_path)
    kv = KeyedVectors(8)
    rng = np.random.default_rng(0)
    kv.add_vectors(["dog", "barks", "rain"], rng.standard_normal((3, 8)).astype(np.float32))
    w2v = tmp_path / "other.txt"
    kv.save_word2vec_format(str(w2v), binary=False)
    with pytest.raises(ConfigMismatchError, match="word vectors"):
        embed.run(embed_args(c, tmp_path / "out", "--word2vec", str(w2v)))
    _assert_nothing_written(tmp_path / "out")


def test_empty_corpus_and_missing_shards(tmp_path):
    c = make_corpus(tmp_path)
    empty = write_shards(tmp_path / "empty_shards", {}, n_files=1)
    args = embed_args(c, tmp_path / "out")
    args[args.index("--segments") + 1] = str(empty)
    with pytest.raises(InputError, match="empty corpus"):
        embed.run(args)
    (tmp_path / "nothing").mkdir()
    args[args.index("--segments") + 1] = str(tmp_path / "nothing")
    with pytest.raises(SchemaError, match="no .parquet shards"):
        embed.run(args)
    _assert_nothing_written(tmp_path / "out")


def test_captions_without_any_clip_or_split(tmp_path):
    c = make_corpus(tmp_path)
    ghost = write_jsonl(tmp_path / "ghost.jsonl", {"nowhere/a.wav": ["dog barks"]}, "test")
    args = embed_args(c, tmp_path / "out")
    i = args.index("--captions")
    args[i + 1 : i + 3] = [str(ghost)]
    with pytest.raises(InputError, match=r"split 'test': none of its 1 captioned clips has a shard row"):
        embed.run(args)
    nosplit = write_jsonl(tmp_path / "captions.jsonl", {"val/clip00.wav": ["dog"]})
    args[i + 1] = str(nosplit)
    with pytest.raises(InputError, match=r"captions.jsonl: cannot tell the split.*--split"):
        embed.run(args)
    with pytest.raises(InputError, match="--split takes one name or one per"):
        embed.run([*args, "--split", "val", "test"])
    nocaps = write_jsonl(tmp_path / "nocaps.jsonl", {"val/clip00.wav": []}, "val")
    args[i + 1] = str(nocaps)
    with pytest.raises(InputError, match="no clip has a caption"):
        embed.run(args)
    _assert_nothing_written(tmp_path / "out")


def test_missing_clips_one_clip_split_and_nan_clip_are_accounted_for(tmp_path):
    """Captions of clips without a shard row or with a NaN vector are counted and reported;
    a split with one clip is evaluated (every query ranks first)."""
    rng = np.random.default_rng(11)
    clips = {f"test/c{i}.wav": rng.random((3, AUDIO_DIM)).astype(np.float16) for i in range(5)}
    clips["test/nan.wav"] = np.full((2, AUDIO_DIM), np.nan, dtype=np.float16)
    clips["val/only.wav"] = rng.random((4, AUDIO_DIM)).astype(np.float16)
    shards = write_shards(tmp_path / "shards", clips)
    test_entries = {a: make_captions(rng, 2) for a in clips if a.startswith("test/")}
    test_entries["test/gone.wav"] = ["a dog barks", "rain falls"]
    val_entries = {"val/only.wav": ["dog barks loud", "bird sings", "water"]}
    test_file = write_jsonl(tmp_path / "t.jsonl", test_entries)
    val_file = write_jsonl(tmp_path / "v.jsonl", val_entries)
    model = make_model(tmp_path / "m", 0, make_captions(rng, 30) + ["dog barks loud bird sings water"])
    out = tmp_path / "out"
    embed.run(
        [
            "--segments", str(shards), "--captions", str(test_file), str(val_file), "--split", "test", "val",
            "--model", str(model), "--output", str(out), "--runner=FnApiRunner", "--examples", "1",
        ]
    )  # fmt: skip
    summary = json.loads((out / embed.SUMMARY_FILE).read_text())
    assert summary["balanced"] is True
    assert summary["models"]["m"] == {
        "audio_vectors": 6,
        "audio_failed": 1,
        "caption_vectors": 15,
        "caption_failed": 0,
    }
    assert summary["captioned_clips_without_shard_row"] == 1
    assert summary["captions_without_audio_vector"] == 2  # the NaN clip's two captions

    test_meta = json.loads((out / "m" / "test" / "metrics.json").read_text())
    text = json.dumps(test_meta)
    assert "test/gone.wav" in text and "test/nan.wav#0" in text and "non_finite_vector" in text
    audio = read_vectors(str(out / "m" / "test"), kind="audio")
    assert sorted(audio.ids) == sorted(a for a in clips if a.startswith("test/c"))

    val = json.loads((out / "m" / "val" / "metrics.json").read_text())
    m = val.get("metrics", val)
    assert m["t2a"]["num_queries"] == 3 and m["a2t"]["num_queries"] == 1
    for direction in ("t2a", "a2t"):
        assert m[direction]["R1"] == 100.0 and m[direction]["MedR"] == 1.0
