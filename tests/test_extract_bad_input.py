"""Bad inputs to pipelines.extract: every input ends as a row or a failure record, the job exits 0.

One pipeline run (LMS features, a JSON Lines manifest) covers the per-clip cases; each test checks
one input's outcome. Fatal input problems (captions file) are checked separately: exit code 2, one
line naming file and line, nothing written.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from atr_core.audio import features
from pipelines import extract
from pipelines.common import run_cli
from tests.audio_fixtures import write_audio
from tests.test_extract import BASE_ARGS, direct_features, read_failures, read_rows

NON_ASCII = "sp ace/名前 é ñ.wav"


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_bad_inputs(root: Path) -> list[dict]:
    """Write every kind of bad (and odd but valid) input; return the manifest rows, in order."""
    root.mkdir(parents=True)
    (root / "empty.wav").write_bytes(b"")
    _truncate(write_audio(root / "trunc.flac", 3.0, kind="noise"), 0.4)
    _truncate(write_audio(root / "trunc.mp3", 3.0, kind="noise"), 0.5)
    (root / "text.wav").write_text("this is not audio\n" * 20)
    sf.write(root / "nosamples.wav", np.zeros((0, 1), np.float32), 16000)
    write_audio(root / "one_ms.wav", 0.001, sr=32000)
    write_audio(root / "silent.wav", 1.0, kind="silence")
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        data = np.full((16000, 1), 0.1, np.float32)
        data[1234, 0] = bad
        sf.write(root / name, data, 32000, subtype="FLOAT")
    write_audio(root / "multi_96k.wav", 0.5, sr=96000, channels=8, kind="noise")
    write_audio(root / "long.flac", 12.0, sr=32000, kind="noise", seed=3)
    (root / NON_ASCII).parent.mkdir()
    write_audio(root / NON_ASCII, 0.7, sr=22050)
    names = [
        "empty.wav", "trunc.flac", "trunc.mp3", "text.wav", "nosamples.wav", "one_ms.wav", "silent.wav",
        "nan.wav", "inf.wav", "multi_96k.wav", "long.flac", NON_ASCII, "missing.wav",
    ]  # fmt: skip
    rows = [{"audio": n, "captions": [f"caption of {n}"], "split": "test"} for n in names]
    rows.append({"audio": "one_ms.wav", "captions": ["a later duplicate"], "split": "train"})
    return rows


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    rows = make_bad_inputs(base / "audio")
    manifest = base / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    out = base / "out"
    argv = [*BASE_ARGS, "--captions", str(manifest), "--audio_root", str(base / "audio"),
            "--output", str(out), "--features", "lms", "--dtype", "float32", "--max_window_s", "4.5",
            "--run_id", "bad"]  # fmt: skip
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run_cli(lambda: extract.main(argv), "extract")
    return {
        "code": code,
        "stdout": stdout.getvalue(),
        "root": base / "audio",
        "rows": read_rows(out),
        "failures": read_failures(out),
        "summary": json.loads((out / "summary-bad.json").read_text()),
        "n_inputs": len(rows),
    }


def _failure(bad_run, audio_id: str, error_type: str, stage: str = "decode") -> dict:
    assert audio_id not in bad_run["rows"]
    rec = bad_run["failures"][audio_id]
    assert (rec["error_type"], rec["stage"]) == (error_type, stage), rec
    assert audio_id.split("/")[-1] in rec["message"] and rec["uri"].endswith(audio_id)
    return rec


def test_exits_zero_and_every_input_is_accounted_for(bad_run):
    s = bad_run["summary"]
    assert bad_run["code"] == 0
    assert "[balanced]" in bad_run["stdout"] and "inputs 14 = ok 5 + failed 9" in bad_run["stdout"]
    assert s["inputs"] == bad_run["n_inputs"] == 14
    assert s["clips_ok"] == len(bad_run["rows"]) == 5
    assert s["clips_failed"] == len(bad_run["failures"]) == 9
    assert s["balanced"] and s["skipped_existing"] == 0
    assert sum(s["failed_by_reason"].values()) == s["clips_failed"]


def test_zero_byte_file(bad_run):
    _failure(bad_run, "empty.wav", "empty_file")
    assert bad_run["summary"]["failed_by_reason"]["empty_file"] == 1


def test_truncated_flac(bad_run):
    _failure(bad_run, "trunc.flac", "truncated")


def test_truncated_mp3(bad_run):
    _failure(bad_run, "trunc.mp3", "truncated")
    assert bad_run["summary"]["failed_by_reason"]["truncated"] == 2


def test_text_file_named_wav(bad_run):
    _failure(bad_run, "text.wav", "unreadable")


def test_wav_with_zero_samples(bad_run):
    _failure(bad_run, "nosamples.wav", "no_samples")


def test_nan_and_inf_samples(bad_run):
    for name in ("nan.wav", "inf.wav"):
        rec = _failure(bad_run, name, "non_finite")
        assert "frame 1234" in rec["message"]
    assert bad_run["summary"]["failed_by_reason"]["non_finite"] == 2


def test_missing_file_in_manifest(bad_run):
    _failure(bad_run, "missing.wav", "missing_file", stage="read")
    assert bad_run["summary"]["files_read"] == 12  # 14 inputs - missing - duplicate


def test_duplicate_audio_id_first_wins(bad_run):
    row = bad_run["rows"]["one_ms.wav"]
    assert row["split"] == "test"  # the first entry's split, not the duplicate's
    assert bad_run["summary"]["duplicates"] == 1
    assert bad_run["summary"]["failed_by_reason"]["duplicate_audio_id"] == 1


def test_one_ms_clip_is_padded(bad_run):
    row = bad_run["rows"]["one_ms.wav"]
    assert row["duration_s"] == pytest.approx(0.001)  # the real duration, before padding
    assert row["num_segments"] == 1 and row["embedding"].shape == (1, 64)
    assert np.isfinite(row["embedding"]).all()
    assert bad_run["summary"]["clips_padded"] == 1


def test_all_silent_clip_is_a_row(bad_run):
    row = bad_run["rows"]["silent.wav"]
    assert row["num_segments"] == features.num_segments("lms", 32000)
    assert np.isfinite(row["embedding"]).all()
    assert np.allclose(row["embedding"], -100.0)  # 10*log10(1e-10): log-mel floor of digital silence
    assert bad_run["summary"]["clips_silent"] == 1


def test_eight_channel_96k(bad_run):
    row = bad_run["rows"]["multi_96k.wav"]
    assert (row["source_channels"], row["source_sample_rate"]) == (8, 96000)
    assert row["duration_s"] == pytest.approx(0.5, abs=1e-3)
    lms = features.build_feature_model("lms", None, "cpu")
    np.testing.assert_allclose(
        row["embedding"], direct_features(lms, bad_run["root"] / "multi_96k.wav"), rtol=1e-5, atol=1e-4
    )


def test_long_file_windowed_equals_whole(bad_run):
    row = bad_run["rows"]["long.flac"]
    assert bad_run["summary"]["clips_multi_window"] == 1 and bad_run["summary"]["windows"] > 5
    lms = features.build_feature_model("lms", None, "cpu")
    ref = direct_features(lms, bad_run["root"] / "long.flac")
    assert row["embedding"].shape == ref.shape == (features.num_segments("lms", 12 * 32000), 64)
    np.testing.assert_allclose(row["embedding"], ref, rtol=1e-5, atol=1e-4)


def test_spaces_and_non_ascii_names(bad_run):
    row = bad_run["rows"][NON_ASCII]
    assert row["uri"] == str(bad_run["root"] / NON_ASCII) and row["split"] == "test"
    failures_text = "".join(json.dumps(r, ensure_ascii=False) for r in bad_run["failures"].values())
    assert "\\u" not in failures_text  # records keep non-ASCII as is


# ------------------------------------------------------------------------------- fatal: captions


CLOTHO_HEADER = b"file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"


@pytest.mark.parametrize(
    "name,content,where",
    [
        ("clotho_captions_evaluation.csv", CLOTHO_HEADER + b"a.wav,1,2,3,4,5\nb.wav,\xe9t\xe9,2,3,4,5\n",
         ":3: not UTF-8"),
        ("c.csv", CLOTHO_HEADER + b"a.wav,1,2\n", ":2: malformed row"),
        ("m.jsonl", b'{"audio": "a.wav"}\n{"audio": "b.wav",\n', ":2: invalid JSON"),
        ("ac.csv", b"audiocap_id,youtube_id,caption\n1,x,a dog\n",
         ":1: missing required column(s) start_time"),
    ],
)  # fmt: skip
def test_bad_captions_file_fails_with_file_and_line(tmp_path, capsys, name, content, where):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out"
    argv = [*BASE_ARGS, "--captions", str(path), "--output", str(out), "--features", "lms"]
    assert run_cli(lambda: extract.main(argv), "extract") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"extract: error: {path}{where}"), err
    assert not out.exists()
