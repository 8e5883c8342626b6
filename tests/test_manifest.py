"""Tests for atr_core.formats.manifest: formats, splits, errors, globs, duplicates."""

from __future__ import annotations

import csv
import io
import json
import os
import random

import pytest

from atr_core.errors import CaptionsFormatError, InputError
from atr_core.formats.manifest import (
    AUDIOCAPS_COLUMNS,
    CLOTHO_COLUMNS,
    ClipEntry,
    audio_id_for,
    detect_format,
    glob_root,
    glob_split,
    infer_split,
    read_glob,
    read_manifest,
    split_duplicates,
    split_from_name,
)
from atr_core.runtime.storage import join_uri

ALPHABET = "abcdefghij XYZ,;\"'\n\té日本ñ-_.!?"


def rand_text(rng: random.Random, lo: int = 0, hi: int = 30) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(lo, hi)))


def rand_name(rng: random.Random) -> str:
    stem = "".join(rng.choice("abcdé日 _-,0123") for _ in range(rng.randint(1, 12))).strip() or "x"
    return f"{stem}{rng.randint(0, 10**6)}.wav"


def write_csv(path, header, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# ------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("seed", range(25))
def test_clotho_roundtrip_random(tmp_path, seed):
    rng = random.Random(seed)
    rows = [[rand_name(rng)] + [rand_text(rng) for _ in range(5)] for _ in range(rng.randint(1, 15))]
    path = tmp_path / "clotho_captions_development.csv"
    write_csv(path, CLOTHO_COLUMNS, rows)
    got = read_manifest(str(path), audio_root="/data/audio")
    assert [e.audio_id for e in got] == [r[0].strip() for r in rows]
    assert [e.captions for e in got] == [tuple(r[1:]) for r in rows]
    assert all(e.uri == os.path.join("/data/audio", e.audio_id) for e in got)
    assert {e.split for e in got} == {"train"}


@pytest.mark.parametrize("seed", range(25))
def test_audiocaps_grouping_random(tmp_path, seed):
    rng = random.Random(seed)
    ids = [f"yt{rng.randint(0, 10**9)}" for _ in range(rng.randint(1, 8))]
    rows, expected = [], {}
    for i in range(rng.randint(1, 40)):
        yid = rng.choice(ids)
        cap = rand_text(rng, 1)
        start = str(rng.choice([0, 30, 12.5]))
        rows.append([str(1000 + i), yid, start, cap])
        expected.setdefault(yid, {"caps": [], "first": (str(1000 + i), start)})["caps"].append(cap)
    path = tmp_path / "val.csv"
    write_csv(path, AUDIOCAPS_COLUMNS, rows)
    got = read_manifest(
        str(path), audio_root="gs://bucket/ac/", audio_pattern="{youtube_id}_{start_time}.flac"
    )
    order = list(dict.fromkeys(r[1] for r in rows))  # first-appearance order
    assert [e.audio_id for e in got] == order
    for e in got:
        assert e.captions == tuple(expected[e.audio_id]["caps"])
        assert e.uri == f"gs://bucket/ac/{e.audio_id}_{expected[e.audio_id]['first'][1]}.flac"
        assert e.split == "val"
    assert sum(len(e.captions) for e in got) == len(rows)


def test_audiocaps_default_pattern_and_audiocap_id(tmp_path):
    path = tmp_path / "test.csv"
    write_csv(path, AUDIOCAPS_COLUMNS, [["7", "abc", "30", "a dog"], ["8", "abc", "30", "a cat"]])
    (e,) = read_manifest(str(path), audio_root=str(tmp_path))
    assert e.uri == str(tmp_path / "abc.wav") and e.split == "test" and e.captions == ("a dog", "a cat")
    (e,) = read_manifest(str(path), audio_root="r", audio_pattern="{audiocap_id}-{youtube_id}.wav")
    assert e.uri == os.path.join("r", "7-abc.wav")
    with pytest.raises(InputError, match="audio pattern"):
        read_manifest(str(path), audio_pattern="{youtube}.wav")


@pytest.mark.parametrize("seed", range(20))
def test_jsonl_random(tmp_path, seed):
    rng = random.Random(seed)
    objs = []
    for _ in range(rng.randint(1, 12)):
        obj = {"audio": rng.choice(["sub/", "", "/abs/"]) + rand_name(rng)}
        if rng.random() < 0.8:
            obj["captions"] = [rand_text(rng) for _ in range(rng.randint(0, 5))]
        if rng.random() < 0.5:
            obj["split"] = rng.choice(["train", "validation", "evaluation", "TEST"])
        objs.append(obj)
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n\n".join(json.dumps(o, ensure_ascii=rng.random() < 0.5) for o in objs) + "\n")
    got = read_manifest(str(path), audio_root="/root")
    canon = {"train": "train", "validation": "val", "evaluation": "test", "TEST": "test"}
    for o, e in zip(objs, got, strict=True):
        assert e.audio_id == o["audio"]
        assert e.uri == (o["audio"] if o["audio"].startswith("/") else "/root/" + o["audio"])
        assert e.captions == tuple(o.get("captions", []))
        assert e.split == canon.get(o.get("split"))
    # an explicit split overrides the field
    assert {e.split for e in read_manifest(str(path), audio_root="/root", split="dev")} == {"train"}


def test_default_audio_root_is_captions_dir(tmp_path):
    path = tmp_path / "c.csv"
    write_csv(path, CLOTHO_COLUMNS, [["a b.wav", "1", "2", "3", "4", "5"]])
    (e,) = read_manifest(str(path))
    assert e.uri == str(tmp_path / "a b.wav") and e.split is None


def test_detect_format_and_override(tmp_path):
    assert detect_format("\n\nfile_name,caption_1\n") == "clotho"
    assert detect_format("audiocap_id,youtube_id,start_time,caption\n") == "audiocaps"
    assert detect_format('{"audio": "x"}\n') == "jsonl"
    with pytest.raises(CaptionsFormatError, match="unknown captions format"):
        detect_format("a,b,c\n", "f.csv")
    path = tmp_path / "weird.txt"
    write_csv(path, CLOTHO_COLUMNS, [["x.wav", "1", "2", "3", "4", "5"]])
    with pytest.raises(CaptionsFormatError, match="missing required column"):
        read_manifest(str(path), fmt="audiocaps")
    assert read_manifest(str(path), fmt="clotho")[0].audio_id == "x.wav"
    with pytest.raises(InputError, match="unknown captions format"):
        read_manifest(str(path), fmt="csv")


# -------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("seed", range(15))
def test_non_utf8_reports_line(tmp_path, seed):
    rng = random.Random(seed)
    n = rng.randint(1, 10)
    bad = rng.randint(1, n)
    lines = [",".join(CLOTHO_COLUMNS).encode()]
    for i in range(1, n + 1):
        cap = rand_text(rng, 1).replace("\n", " ").replace('"', "").replace(",", "").encode()
        if i == bad:
            cap = cap + b"\xff\xfe" + cap
        lines.append(b"f%d.wav," % i + b",".join([cap] * 5))
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(CaptionsFormatError) as err:
        read_manifest(str(path))
    assert f"{path}:{bad + 1}:" in str(err.value) and "UTF-8" in str(err.value)


def test_missing_columns(tmp_path):
    path = tmp_path / "c.csv"
    write_csv(path, ["file_name", "caption_1", "caption_2"], [["x.wav", "a", "b"]])
    with pytest.raises(CaptionsFormatError, match=r"c\.csv:1: missing required column\(s\) caption_3"):
        read_manifest(str(path))


def test_wrong_field_count_names_line(tmp_path):
    path = tmp_path / "c.csv"
    text = ",".join(CLOTHO_COLUMNS) + '\na.wav,1,2,3,4,5\n\nb.wav,"multi\nline",2,3,4,5\nc.wav,1,2\n'
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CaptionsFormatError, match=r"c\.csv:6: malformed row: 3 fields"):
        read_manifest(str(path))


def test_invalid_jsonl_names_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav"}\n\n{"audio": "b.wav", \n')
    with pytest.raises(CaptionsFormatError, match=r"m\.jsonl:3: invalid JSON"):
        read_manifest(str(path))
    for line, msg in [
        ('{"captions": []}', "'audio' must be"),
        ('{"audio": "a", "captions": "x"}', "'captions' must be"),
        ('{"audio": "a", "split": "nope"}', "unknown split"),
        ("[1, 2]", "JSON object"),
    ]:
        path.write_text('{"audio": "ok.wav"}\n' + line + "\n")
        with pytest.raises(CaptionsFormatError, match=r"m\.jsonl:2: malformed row") as err:
            read_manifest(str(path))
        assert msg in str(err.value)


def test_empty_and_missing_files(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("\n\n")
    with pytest.raises(CaptionsFormatError, match="empty"):
        read_manifest(str(path))
    with pytest.raises(InputError, match="not found"):
        read_manifest(str(tmp_path / "nope.csv"))


def test_empty_captions_are_kept(tmp_path):
    path = tmp_path / "c.csv"
    write_csv(path, CLOTHO_COLUMNS, [["x.wav", "", "b", "", "", ""]])
    assert read_manifest(str(path))[0].captions == ("", "b", "", "", "")


# -------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    "name,split",
    [
        ("clotho_captions_development.csv", "train"),
        ("clotho_captions_validation.csv", "val"),
        ("clotho_captions_evaluation.csv", "test"),
        ("gs://b/audiocaps/train.csv", "train"),
        ("val.csv", "val"),
        ("test_filtered.csv", "test"),
        ("/data/clotho/evaluation", "test"),
        ("/data/clotho/evaluation/", "test"),
        ("captions.csv", None),
        ("train_test.csv", None),
        ("contest.csv", None),
    ],
)
def test_split_from_name(name, split):
    assert split_from_name(name) == split


def test_infer_split_priority():
    assert infer_split("train.csv", explicit="Evaluation", field="val") == "test"
    assert infer_split("train.csv", field="validation") == "val"
    assert infer_split("train.csv") == "train"
    assert infer_split(None) is None
    with pytest.raises(InputError, match="unknown split"):
        infer_split("train.csv", explicit="holdout")


# --------------------------------------------------------------------------------------------- globs


def test_glob_ids_relative_posix(tmp_path):
    tmp_path = tmp_path / "my_test_run"  # not exactly a split name: no split
    names = ["a.wav", "sub dir/b é.wav", "sub dir/deeper/c.wav", "x.txt"]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"")
    got = read_glob(str(tmp_path / "**" / "*.wav"))
    assert sorted(e.audio_id for e in got) == sorted(n for n in names if n.endswith(".wav"))
    assert all(os.path.samefile(e.uri, tmp_path / e.audio_id) for e in got)
    assert all(e.split is None and e.captions == () for e in got)
    (e,) = read_glob(str(tmp_path / "a.wav"))
    assert e.audio_id == "a.wav"
    assert {e.split for e in read_glob(str(tmp_path / "*.wav"), split="val")} == {"val"}


def test_glob_root_and_ids():
    assert glob_root("gs://b/data/evaluation/*.wav") == "gs://b/data/evaluation"
    assert glob_root("gs://b/data/**/x?.wav") == "gs://b/data"
    assert audio_id_for("gs://b/data/sub/x1.wav", "gs://b/data") == "sub/x1.wav"
    assert glob_root("/data/[ab]/*.wav") == "/data"
    assert glob_root("/data/x.wav") == "/data"
    with pytest.raises(InputError, match="not under"):
        audio_id_for("/other/x.wav", "/data")
    assert audio_id_for("/data/..x.wav", "/data") == "..x.wav"


def test_glob_split_from_root_dir(tmp_path):
    d = tmp_path / "validation"
    d.mkdir()
    (d / "a.wav").write_bytes(b"")
    assert [e.split for e in read_glob(str(d / "*.wav"))] == ["val"]
    assert glob_split("gs://b/clotho/evaluation") == "test"
    assert glob_split("/x/evaluation", split="train") == "train"
    assert glob_split("/x/test_run") is None


def test_join_uri():
    assert join_uri("gs://b/x/", "y.wav") == "gs://b/x/y.wav"
    assert join_uri("gs://b/x", "gs://c/y.wav") == "gs://c/y.wav"
    assert join_uri("/r", "/abs.wav") == "/abs.wav"
    assert join_uri("", "rel.wav") == "rel.wav"


# ----------------------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize("seed", range(30))
def test_split_duplicates_property(seed):
    rng = random.Random(seed)
    entries = [ClipEntry(rng.choice("abcdefg"), f"u{i}", None, ()) for i in range(rng.randint(0, 30))]
    unique, dups = split_duplicates(entries)
    assert len(unique) + len(dups) == len(entries)
    assert [e.audio_id for e in unique] == list(dict.fromkeys(e.audio_id for e in entries))
    first = {}
    for e in entries:
        first.setdefault(e.audio_id, e)
    assert unique == list(first.values())  # first wins, input order kept
    assert all(first[d.audio_id] is not d for d in dups)
    assert sorted(unique + dups, key=entries.index) == entries


def test_csv_stringio_roundtrip_is_exact():
    """The CSV writer used by the tests quotes newlines/commas; the reader must undo it exactly."""
    buf = io.StringIO()
    csv.writer(buf).writerow(['x,\n"y"'])
    assert next(csv.reader(io.StringIO(buf.getvalue(), newline=""))) == ['x,\n"y"']
