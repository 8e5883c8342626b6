"""Tests for pipelines.extract: shard contents, exactness, incremental runs, options, batching."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from atr_core.audio import features
from atr_core.audio.cnn14 import OFFICIAL_URL, SEGMENT_SAMPLES
from atr_core.audio.decode import decode_audio, pad_to_minimum
from atr_core.audio.windows import Window
from atr_core.errors import (
    CheckpointError,
    ConfigMismatchError,
    DecodeError,
    InputError,
    OutputExistsError,
)
from atr_core.formats import shards
from pipelines import extract
from pipelines.common import collect_counters, run_cli
from tests.audio_fixtures import write_audio

BASE_ARGS = ["--runner=FnApiRunner", "--num_threads=1"]


# ------------------------------------------------------------------------------------------- helpers


def run_extract(*args: str) -> dict:
    """Run the pipeline in-process; return the run's summary (read back from summary-<run>.json)."""
    argv = [*BASE_ARGS, *args]
    extract.run(argv)
    out = Path(argv[argv.index("--output") + 1])
    run_id = argv[argv.index("--run_id") + 1] if "--run_id" in argv else None
    paths = sorted(out.glob(f"summary-{run_id or '*'}.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(paths[-1].read_text())


def read_rows(out: Path, pattern: str = "segments*.parquet") -> dict[str, dict]:
    """All shard rows under ``out`` keyed by audio_id (the embedding as an ndarray)."""
    rows: dict[str, dict] = {}
    for _path, _ident, table in shards.iter_shard_tables(str(out / pattern)):
        embs = shards.table_embeddings(table)
        for row, emb in zip(table.drop_columns(["embedding"]).to_pylist(), embs, strict=True):
            assert row["audio_id"] not in rows, f"{row['audio_id']} written twice"
            rows[row["audio_id"]] = {**row, "embedding": np.array(emb)}
    return rows


def read_failures(out: Path) -> dict[str, dict]:
    """Failure records under ``out`` keyed by audio_id (one per id)."""
    recs: dict[str, dict] = {}
    for path in sorted(out.glob("failures*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            assert set(rec) == {"audio_id", "uri", "stage", "error_type", "message"}
            assert rec["audio_id"] not in recs
            recs[rec["audio_id"]] = rec
    return recs


def direct_features(model: torch.nn.Module, path: Path) -> np.ndarray:
    """The feature model run on one clip alone, whole (no windows, no batch)."""
    wave, _ = pad_to_minimum(decode_audio(str(path)).waveform)
    with torch.inference_mode():
        return model(torch.from_numpy(wave)[None, :])[0].float().numpy()


@pytest.fixture(scope="module")
def lms_model() -> torch.nn.Module:
    return features.build_feature_model("lms", None, "cpu")


# ------------------------------------------------------------------------------ LMS: glob, exactness


@pytest.fixture(scope="module")
def lms_run(tmp_path_factory):
    """One LMS run over a glob of assorted clips, long ones windowed (max window 4.5 s)."""
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("lms") / "audio"
    clips = {}
    specs = [
        ("a.wav", 1.0, 44100, 1),
        ("sub/b c.flac", 2.5, 48000, 2),
        ("sub/ünï/d.ogg", 0.6, 22050, 1),
        ("long.wav", 11.3, 32000, 1),
        ("sub/long2.flac", 7.77, 16000, 3),
        ("e.mp3", 1.4, 44100, 2),
    ]
    for name, secs, sr, ch in specs:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = rng.choice(["tone", "noise"])
        clips[name] = write_audio(path, secs, sr=sr, channels=ch, kind=kind, freq=rng.uniform(200, 2000))
    out = root.parent / "out"
    summary = run_extract(
        "--input", f"{root}/**", "--output", str(out), "--features", "lms", "--dtype", "float32",
        "--max_window_s", "4.5", "--batch_size", "3", "--max_batch_audio_s", "9", "--split", "validation",
        "--rows_per_row_group", "2",
    )  # fmt: skip
    return {"root": root, "clips": clips, "out": out, "summary": summary, "specs": specs}


def test_glob_rows_equal_direct_model(lms_run, lms_model):
    rows = read_rows(lms_run["out"])
    expected = {n for n, *_ in lms_run["specs"]}  # Beam 'root/**' matches files at any depth
    assert set(rows) == expected
    for name in expected:
        ref = direct_features(lms_model, lms_run["clips"][name])
        got = rows[name]["embedding"]
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4, err_msg=name)


def test_glob_row_metadata(lms_run):
    rows = read_rows(lms_run["out"])
    for name, secs, sr, ch in lms_run["specs"]:
        row = rows[name]
        assert Path(row["uri"]) == lms_run["clips"][name]
        assert row["split"] == "val"
        assert row["source_sample_rate"] == sr and row["source_channels"] == ch
        assert row["duration_s"] == pytest.approx(secs, abs=2e-3)
        assert (
            row["num_segments"]
            == row["embedding"].shape[0]
            == features.num_segments("lms", max(round(secs * 32000), 9920))
        )
        assert row["feature"] == "lms" and row["checkpoint_sha256"] == ""
    ident = shards.read_identity(str(next(lms_run["out"].glob("segments*.parquet"))))
    assert (ident.feature, ident.embedding_dim, ident.dtype) == ("lms", 64, "float32")


def test_glob_summary_balances(lms_run):
    s = lms_run["summary"]
    n = len(lms_run["specs"])
    assert s["inputs"] == n and s["clips_ok"] == n and s["clips_failed"] == 0 and s["balanced"]
    assert s["files_read"] == n
    assert s["clips_multi_window"] == 2 and s["windows"] > n + 2
    assert s["audio_seconds"] == pytest.approx(sum(x[1] for x in lms_run["specs"]), abs=0.01)
    assert read_failures(lms_run["out"]) == {}  # the failures file exists and is empty
    assert len(list(lms_run["out"].glob("failures-00000-of-00001.jsonl"))) == 1


def test_non_incremental_refuses_existing_output(lms_run):
    with pytest.raises(OutputExistsError, match="--incremental"):
        extract.run([*BASE_ARGS, "--input", f"{lms_run['root']}/*.wav", "--output", str(lms_run["out"]),
                     "--features", "lms"])  # fmt: skip


# ----------------------------------------------------------------------------- incremental, rerun


def test_incremental_skips_existing_and_rerun_is_byte_identical(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, secs in enumerate([1.0, 2.2, 0.5]):
        write_audio(audio / f"c{i}.wav", secs, kind="noise", seed=i)
    inc = tmp_path / "inc"
    args = ["--input", f"{audio}/*.wav", "--features", "lms", "--incremental", "--max_window_s", "4.2"]
    s1 = run_extract(*args, "--output", str(inc), "--run_id", "r1")
    assert (s1["inputs"], s1["clips_ok"], s1["skipped_existing"]) == (3, 3, 0)
    first = read_rows(inc)
    write_audio(audio / "c3.wav", 5.0, kind="noise", seed=3)  # a new file arrives
    s2 = run_extract(*args, "--output", str(inc), "--run_id", "r2")
    assert (s2["inputs"], s2["clips_ok"], s2["skipped_existing"], s2["balanced"]) == (4, 1, 3, True)
    assert sorted(p.name for p in inc.glob("segments*")) == [
        "segments-r1-00000-of-00001.parquet",  # no long clips in r1: no long-clip shard
        "segments-r2-00000-of-00001.parquet",  # an empty shard: r2's only clip is long
        "segments-r2-long-00000-of-00001.parquet",  # c3 (5 s > --max_window_s 4.2), windowed
    ]
    assert set(read_rows(inc, "segments-r2-*")) == {"c3.wav"}
    s3 = run_extract(*args, "--output", str(inc), "--run_id", "r3")  # nothing new
    assert (s3["inputs"], s3["clips_ok"], s3["skipped_existing"]) == (4, 0, 4)
    assert read_rows(inc, "segments-r3-*") == {}  # an empty shard, still readable
    # a fresh full rerun over the same inputs gives byte-identical arrays
    fresh = tmp_path / "fresh"
    run_extract("--input", f"{audio}/*.wav", "--features", "lms", "--output", str(fresh), "--batch_size", "1",
                "--num_shards", "2", "--rows_per_row_group", "1")  # fmt: skip
    assert sorted(p.name for p in fresh.glob("segments*")) == [
        "segments-00000-of-00002.parquet",
        "segments-00001-of-00002.parquet",
    ]  # no clip is longer than the default --max_window_s: no long-clip shards
    again, union = read_rows(fresh), read_rows(inc)
    assert set(again) == set(union) == {"c0.wav", "c1.wav", "c2.wav", "c3.wav"}
    for k in again:
        assert again[k]["embedding"].dtype == np.float16
        assert again[k]["embedding"].tobytes() == union[k]["embedding"].tobytes(), k
    for k in first:
        assert first[k]["embedding"].tobytes() == union[k]["embedding"].tobytes()


def test_incremental_refuses_other_identity(tmp_path):
    audio = tmp_path / "a"
    audio.mkdir()
    write_audio(audio / "x.wav", 0.5)
    out = tmp_path / "out"
    run_extract("--input", f"{audio}/*.wav", "--features", "lms", "--output", str(out), "--incremental")
    with pytest.raises(ConfigMismatchError, match="dtype"):
        extract.run([*BASE_ARGS, "--input", f"{audio}/*.wav", "--features", "lms", "--output", str(out),
                     "--incremental", "--dtype", "float32"])  # fmt: skip


# ------------------------------------------------------------------------------------------- CNN14


def test_cnn14_shards_equal_reference_per_clip(tmp_path, cnn14_checkpoint, cnn14_reference):
    audio = tmp_path / "audio"
    audio.mkdir()
    paths = {
        "one.wav": write_audio(audio / "one.wav", 1.0, sr=32000, kind="noise", seed=1),
        "two.flac": write_audio(audio / "two.flac", 1.6, sr=44100, channels=2, kind="tone"),
        "three.wav": write_audio(audio / "three.wav", 1.0, sr=32000, kind="noise", seed=2),  # same length
    }
    out = tmp_path / "out"
    ckpt = str(cnn14_checkpoint)
    s = run_extract("--input", f"{audio}/*", "--output", str(out), "--cnn14_checkpoint", ckpt,
                    "--dtype", "float32", "--batch_size", "4")  # fmt: skip
    assert (s["clips_ok"], s["clips_failed"], s["balanced"]) == (3, 0, True)
    assert s["checkpoint"] == ckpt and len(s["checkpoint_sha256"]) == 64
    rows = read_rows(out)
    for name, path in paths.items():
        ref = cnn14_reference(pad_to_minimum(decode_audio(str(path)).waveform)[0])
        got = rows[name]["embedding"]
        assert (
            got.shape
            == ref.shape
            == (features.num_segments("cnn14", round(rows[name]["duration_s"] * 32000)), 2048)
        )
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()), err_msg=name)
        assert rows[name]["checkpoint_sha256"] == s["checkpoint_sha256"]
    ident = shards.read_identity(str(next(out.glob("segments*.parquet"))))
    assert (ident.feature, ident.embedding_dim, ident.checkpoint_sha256) == (
        "cnn14",
        2048,
        s["checkpoint_sha256"],
    )
    # the same command again (same inputs, flags and batches): byte-identical arrays
    again = tmp_path / "again"
    run_extract("--input", f"{audio}/*", "--output", str(again), "--cnn14_checkpoint", ckpt, "--dtype",
                "float32", "--batch_size", "4", "--cnn14_sha256", s["checkpoint_sha256"])  # fmt: skip
    rows2 = read_rows(again)
    assert all(rows2[k]["embedding"].tobytes() == rows[k]["embedding"].tobytes() for k in rows)


def test_cnn14_windowed_long_clip_equals_whole(tmp_path, cnn14_model):
    audio = tmp_path / "audio"
    audio.mkdir()
    path = write_audio(audio / "long.wav", 5.5, sr=32000, kind="noise", seed=5)
    out = tmp_path / "out"
    s = run_extract("--input", str(path), "--output", str(out), "--cnn14_checkpoint", "random:0",
                    "--dtype", "float32", "--max_window_s", "5")  # fmt: skip
    assert s["clips_multi_window"] == 1 and s["windows"] == 2
    got = read_rows(out)["long.wav"]["embedding"]
    ref = direct_features(cnn14_model, path)  # the conftest checkpoint holds the random:0 weights
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))


def test_run_accepts_a_test_pipeline(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline

    audio = tmp_path / "a"
    audio.mkdir()
    write_audio(audio / "x.wav", 0.8)
    out = tmp_path / "out"
    pipeline = TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    result = extract.run(["--input", f"{audio}/*.wav", "--output", str(out), "--features", "lms",
                          "--run_id", "tp"], test_pipeline=pipeline)  # fmt: skip
    counters = collect_counters(result, extract.NS)
    assert (counters["inputs"], counters["clips_ok"]) == (1, 1)
    assert json.loads((out / "summary-tp.json").read_text())["clips_ok"] == 1
    assert set(read_rows(out)) == {"x.wav"}


def _applied_transforms(tmp_path) -> list:
    """The extraction graph's leaf transforms, built (not run) over one file."""
    import apache_beam as beam
    from apache_beam.pipeline import PipelineVisitor

    audio = tmp_path / "g"
    audio.mkdir()
    write_audio(audio / "x.wav", 0.5)
    opts = extract.ExtractOptions(
        ["--input", f"{audio}/*.wav", "--output", str(tmp_path / "o"), "--features", "lms"]
    )
    p = beam.Pipeline(runner="FnApiRunner")
    extract.build_pipeline(p, extract.plan_run(opts))
    found = []

    class Leaves(PipelineVisitor):
        def visit_transform(self, node):
            found.append(node)

    p.visit(Leaves())
    return found


def test_clip_features_never_pass_a_materialising_step_on_the_way_to_the_shards(tmp_path):
    """From RunInference to the shard writer of ordinary clips there is no Flatten and no shuffle.

    The local FnApiRunner holds a multi-input Flatten's (or a GroupByKey's) whole input in memory
    until its producers finish: on the clips' path that would be every clip's features at once.
    """
    import apache_beam as beam

    leaves = _applied_transforms(tmp_path)
    producer = {out: node for node in leaves for out in node.outputs.values()}
    (start,) = [n for n in leaves if n.full_label.startswith("WriteShards/ToRows")]
    path, node = [], start
    while not node.full_label.startswith("RunInference"):
        (pcoll,) = [i for i in node.main_inputs.values()]
        node = producer[pcoll]
        path.append(node)
    kinds = {type(n.transform) for n in path}
    assert beam.Flatten not in kinds and beam.GroupByKey not in kinds, [n.full_label for n in path]
    flattens = sorted(n.full_label for n in leaves if isinstance(n.transform, beam.Flatten))
    assert flattens == ["MergeFailures", "Stitch/MergeStitchFailures", "Stitch/MergeWindows"]


# ----------------------------------------------------------------------------------- fatal errors


def test_missing_checkpoint_fails_before_start(tmp_path, capsys):
    audio = tmp_path / "a"
    audio.mkdir()
    write_audio(audio / "x.wav", 0.5)
    out = tmp_path / "out"
    for extra in ([], ["--cnn14_checkpoint", str(tmp_path / "nope.pth")]):
        with pytest.raises(CheckpointError) as err:
            extract.run([*BASE_ARGS, "--input", f"{audio}/*.wav", "--output", str(out), *extra])
        assert "--cnn14_checkpoint" in str(err.value) and OFFICIAL_URL in str(err.value)
        assert not out.exists()
    argv = ["--input", f"{audio}/*.wav", "--output", str(out)]
    assert run_cli(lambda: extract.main(argv), "extract") == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert err_lines[-1].startswith("extract: error: --cnn14_checkpoint") and not out.exists()


def test_bad_sha256_fails_before_start(tmp_path, cnn14_checkpoint):
    audio = tmp_path / "a"
    audio.mkdir()
    write_audio(audio / "x.wav", 0.5)
    with pytest.raises(CheckpointError, match="sha256"):
        extract.run([*BASE_ARGS, "--input", f"{audio}/*.wav", "--output", str(tmp_path / "out"),
                     "--cnn14_checkpoint", str(cnn14_checkpoint), "--cnn14_sha256", "0" * 64])  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args,match",
    [
        ([], "exactly one of --input"),
        (["--input", "x/*.wav", "--captions", "c.csv"], "exactly one of --input"),
        (["--input", "/nonexistent_dir_h2/*.wav"], "matches no files"),
        (["--input", "x/*.wav", "--max_window_s", "1"], "--max_window_s 1"),
        (["--input", "x/*.wav", "--batch_size", "0"], "--batch_size"),
        (["--input", "x/*.wav", "--split", "holdout"], "unknown split"),
    ],
)
def test_option_errors(tmp_path, args, match):
    (tmp_path / "x").mkdir()
    write_audio(tmp_path / "x" / "a.wav", 0.2)
    argv = [a.replace("x/", f"{tmp_path}/x/") for a in args]
    with pytest.raises(InputError, match=match):
        extract.run([*BASE_ARGS, "--features", "lms", "--output", str(tmp_path / "out"), *argv])
    assert not (tmp_path / "out").exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        extract.run(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    parser = extract.build_parser()
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    assert len(flags) >= 20
    for action in parser._actions:
        if action.option_strings and action.option_strings[0] != "-h":
            assert action.help and len(action.help) > 15, action.option_strings
    for flag in flags:
        assert flag in text
    opts = extract.PipelineOptions(["--features", "lms"]).view_as(extract.ExtractOptions)
    assert (opts.features, opts.dtype, opts.device, opts.channels_last, opts.compile) == (
        "lms", "float16", "auto", True, False,
    )  # fmt: skip
    assert extract.PipelineOptions([]).view_as(extract.ExtractOptions).features == "cnn14"  # paper default


def test_options_tolerate_flags_registered_by_another_job():
    """Beam parses all PipelineOptions subclasses with one parser: shared flags must not clash."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default="other")
    parser.add_argument("--batch_size", type=int, default=999)
    extract.ExtractOptions._add_argparse_args(parser)  # no "conflicting option string" error
    ns, _ = parser.parse_known_args(["--features", "lms"])
    assert (ns.output, ns.batch_size, ns.features) == ("other", 999, "lms")
    view = extract.PipelineOptions(["--output", "o"]).view_as(extract.ExtractOptions)
    assert (view.output, view.batch_size) == ("o", 8)  # a view parses only its own flags


# ------------------------------------------------------------------------------ units: batching etc.


def _key(i: int) -> extract.WindowKey:
    info = extract.ClipInfo(f"id{i}", f"u{i}", None, 1.0, 32000, 1, 1, 1)
    return extract.WindowKey(info, Window(0, 0, 1, 0, 1, 0))


@pytest.mark.parametrize("seed", range(40))
def test_batch_windows_property(seed):
    rng = random.Random(seed)
    batch_size, max_samples = rng.randint(1, 6), rng.randint(5, 60)
    lengths = [rng.choice([3, 7, 7, 10, 20, 70]) for _ in range(rng.randint(0, 60))]
    fn = extract.BatchWindowsFn(batch_size, max_samples)
    fn.start_bundle()
    batches = []
    for i, n in enumerate(lengths):
        batches.extend(fn.process((_key(i), np.zeros(n, np.float32))))
        assert fn._count <= batch_size and (fn._samples <= max_samples or fn._count == 1)  # bounded buffer
    batches.extend(wv.value for wv in fn.finish_bundle())
    seen = [k.clip.audio_id for b in batches for k, _ in b]
    assert sorted(seen) == sorted(f"id{i}" for i in range(len(lengths)))  # each window exactly once
    for b in batches:
        assert b, "empty batch"
        total = sum(len(w) for _, w in b)
        assert len(b) <= batch_size and (total <= max_samples or len(b) == 1)


class _FailOnLength(torch.nn.Module):
    """(B, L) -> (B, T, 2): fails on inputs of a given length."""

    output_dim = 2

    def __init__(self, bad_length: int):
        super().__init__()
        self.bad = bad_length
        self.register_buffer("w", torch.ones(1))

    def forward(self, x):
        if x.shape[1] == self.bad:
            raise RuntimeError("boom")
        t = features.num_segments("lms", x.shape[1])
        return x[:, : t * SEGMENT_SAMPLES].reshape(x.shape[0], t, -1)[:, :, :2] + self.w


def test_handler_isolates_failing_window():
    handler = extract.SegmentModelHandler("lms", None, dtype="float16")
    waves = [np.full(SEGMENT_SAMPLES * n, n, np.float32) for n in (1, 2, 1, 3)]
    results = list(handler.run_inference(waves, _FailOnLength(2 * SEGMENT_SAMPLES)))
    assert [type(r.inference).__name__ for r in results] == [
        "ndarray",
        "InferenceFailure",
        "ndarray",
        "ndarray",
    ]
    assert results[1].inference.error_type == "inference_error" and "boom" in results[1].inference.message
    assert results[3].inference.dtype == np.float16 and results[3].inference.shape == (3, 2)
    assert handler.get_num_bytes(waves) == sum(w.nbytes for w in waves)


def test_dead_lettered_batch_becomes_one_failure_per_window():
    batch = [(_key(0), np.zeros(3)), (_key(1), np.zeros(3))]
    out = list(extract.dlq_to_results((batch, (MemoryError, "MemoryError('oom')", ["tb"]))))
    assert [k.clip.audio_id for k, _ in out] == ["id0", "id1"]
    assert all(r.inference == extract.InferenceFailure("inference_error", "MemoryError: MemoryError('oom')")
               for _, r in out)  # fmt: skip


def test_stitch_fn_failures():
    info = extract.ClipInfo("a", "u", None, 1.0, 32000, 1, SEGMENT_SAMPLES * 3, 2)
    w0, w1 = Window(0, 0, 1, 0, 2, 0), Window(1, 0, 1, 0, 1, 2)
    fn = extract.StitchFn("lms")
    ok = list(fn.process((info, [(w1, np.ones((1, 4))), (w0, np.zeros((2, 4)))])))
    assert len(ok) == 1 and ok[0][1].tolist() == [[0] * 4, [0] * 4, [1] * 4]
    (missing,) = fn.process((info, [(w0, np.zeros((2, 4)))]))
    assert missing.tag == extract.FAILED and missing.value["error_type"] == "missing_windows"
    bad = extract.InferenceFailure("inference_error", "x")
    (failed,) = fn.process((info, [(w0, np.zeros((2, 4))), (w1, bad)]))
    assert failed.value["stage"] == "inference" and failed.value["audio_id"] == "a"


def test_decode_error_type_names_are_counter_safe():
    """error_type becomes a metric name: the DecodeError reasons are plain identifiers."""
    with pytest.raises(DecodeError) as err:
        decode_audio(b"", name="x")
    assert err.value.reason.isidentifier()


@pytest.mark.parametrize("threads,ahead", [(1, 0), (3, 0), (2, 1), (2, 3), (1, 20)])
def test_decode_fn_threads_keep_every_input_and_order_free_results(tmp_path, threads, ahead):
    """Threaded read-ahead decoding: every entry becomes one clip or one failure, equal to decode_entry."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from atr_core.formats.manifest import ClipEntry

    entries = []
    for i in range(7):  # 7 entries: more and fewer than the files decoded ahead
        path = tmp_path / f"c{i}.wav"
        if i == 4:
            path.write_text("not audio")
        elif i != 5:  # c5 is missing
            write_audio(path, 0.5 + 0.1 * i, sr=22050, channels=2, kind="noise")
        entries.append(ClipEntry(audio_id=f"c{i}", uri=str(path), split=None, captions=()))
    expected = [extract.decode_entry(e) for e in entries]
    want_ok = [(o.clip[0].audio_id, o.clip[0].n_samples, float(o.clip[1].sum())) for o in expected if o.clip]
    want_failed = [(o.failure["audio_id"], o.failure["error_type"]) for o in expected if o.failure]
    assert sorted(e for _, e in want_failed) == ["missing_file", "unreadable"]
    with TestPipeline(runner="FnApiRunner") as p:
        clips, bad = (
            p
            | beam.Create(entries)
            | beam.ParDo(extract.DecodeFn(threads, ahead)).with_outputs(extract.FAILED, main="clips")
        )
        got_ok = clips | "OkKey" >> beam.Map(lambda c: (c[0].audio_id, c[0].n_samples, float(c[1].sum())))
        got_bad = bad | "BadKey" >> beam.Map(lambda r: (r["audio_id"], r["error_type"]))
        assert_that(got_ok, equal_to(want_ok), label="clips")
        assert_that(got_bad, equal_to(want_failed), label="failures")


@pytest.mark.parametrize("flag", ["--decode_threads", "--decode_ahead"])
def test_decode_options_are_checked(tmp_path, flag):
    with pytest.raises(InputError, match=flag):
        extract.plan_run(
            extract.ExtractOptions(
                ["--input", str(tmp_path / "*.wav"), "--output", str(tmp_path / "o"), "--features", "lms",
                 flag, "-1"]
            )
        )  # fmt: skip


def test_decode_fn_reads_ahead_in_input_order(monkeypatch):
    """A clip is emitted once ``ahead`` newer entries are queued behind it; the rest at bundle end."""
    from atr_core.formats.manifest import ClipEntry

    decoded_before_emit = []

    def fake_decode(entry):
        wave = np.full(16000, float(entry.audio_id[1:]), np.float32)
        info = extract.ClipInfo(entry.audio_id, entry.uri, None, 1.0, 16000, 1, len(wave), 1)
        return extract.DecodeOutcome(clip=(info, wave), file_read=True, audio_ms=1000)

    monkeypatch.setattr(extract.transforms, "decode_entry", fake_decode)
    fn = extract.DecodeFn(threads=2, ahead=3)
    fn.setup()
    fn.start_bundle()
    emitted = []
    try:
        for i in range(6):
            entry = ClipEntry(audio_id=f"c{i}", uri=f"/x/c{i}.wav", split=None, captions=())
            out = list(fn.process(entry, timestamp=0, window=None))
            decoded_before_emit.append(len(out))
            emitted += [v.value[0].audio_id for v in out]
        emitted += [v.value[0].audio_id for v in fn.finish_bundle()]
    finally:
        fn.teardown()
    assert decoded_before_emit == [0, 0, 0, 1, 1, 1]
    assert emitted == [f"c{i}" for i in range(6)]


def test_decode_ahead_default_covers_a_batch_and_every_thread():
    assert extract.default_decode_ahead(threads=2, batch_size=8) == 8
    assert extract.default_decode_ahead(threads=8, batch_size=8) == 16
    assert extract.ExtractOptions([]).idle_decode is True
    assert extract.ExtractOptions(["--no_idle_decode"]).idle_decode is False


def test_retain_memory_is_on_by_default_and_can_be_turned_off():
    assert extract.ExtractOptions([]).retain_memory is True
    assert extract.ExtractOptions(["--no_retain_memory"]).retain_memory is False
    handler = extract.SegmentModelHandler("lms", None, retain_memory=False)
    assert handler._retain_memory is False
