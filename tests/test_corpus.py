"""The real-sound corpus: packaged recordings, Clotho layout, captions, stratified splits, determinism."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from atr_core.audio.decode import decode_audio
from atr_core.corpus import AUDIO_DIR, CORPUS_FILE, SPLITS, build_corpus, locate_sources
from atr_core.corpus.build import inventory_from, stratified_splits, write_shuffled_captions
from atr_core.corpus.catalogue import BACKGROUNDS, SOUNDS
from atr_core.corpus.compose import SR, Library, compose
from atr_core.corpus.sources import SOUNDFONT_FILE, SOUNDFONT_PACKAGE, STAMPS_DIR, STAMPS_PACKAGE
from atr_core.errors import OutputExistsError
from atr_core.formats.manifest import read_manifest
from pipelines import corpus as corpus_job


@pytest.fixture(scope="module")
def sources():
    return locate_sources()


def test_every_catalogued_recording_is_in_the_package(sources):
    stamps = sources[STAMPS_PACKAGE].root / STAMPS_DIR
    missing = [s.key for s in SOUNDS if not (stamps / f"{s.key}.ogg").is_file()]
    assert missing == []
    assert set(BACKGROUNDS) <= {s.key for s in SOUNDS}
    assert (sources[SOUNDFONT_PACKAGE].root / SOUNDFONT_FILE).stat().st_size > 1_000_000


def test_the_corpus_is_in_the_clotho_layout_with_five_true_captions(real_corpus: Path):
    info = json.loads((real_corpus / CORPUS_FILE).read_text())
    assert info["splits"] == {"development": 100, "validation": 40, "evaluation": 60}
    assert {p["package"] for p in info["packages"]} == {STAMPS_PACKAGE, SOUNDFONT_PACKAGE}
    assert all(p["licence"].startswith("GPL-2") for p in info["packages"])
    seen = set()
    for split in SPLITS:
        entries = read_manifest(str(real_corpus / f"clotho_captions_{split}.csv"))
        assert len(entries) == info["splits"][split]
        for e in entries:
            assert e.audio_id not in seen
            seen.add(e.audio_id)
            assert len(e.captions) == 5 and len(set(e.captions)) == 5
            assert all(c[0].isupper() and len(c.split()) >= 3 for c in e.captions)
        with open(real_corpus / f"clotho_metadata_{split}.csv", newline="") as f:
            meta = list(csv.DictReader(f))
        assert [m["file_name"] for m in meta] == [e.audio_id for e in entries]
        assert all(m["license"] and m["sources"] for m in meta)


def test_clips_are_real_audio_in_mixed_formats_and_rates(real_corpus: Path):
    import soundfile as sf

    files = sorted((real_corpus / AUDIO_DIR).iterdir())
    assert len(files) == 200
    exts = Counter(p.suffix for p in files)
    assert set(exts) == {".wav", ".flac", ".ogg", ".mp3"}
    rates = {sf.info(p).samplerate for p in files}
    assert {8000, 96000} <= rates and len(rates) >= 5
    durations = []
    for p in files[::10]:
        d = decode_audio(p, p.name)
        durations.append(len(d.waveform) / 32000)
        assert np.abs(d.waveform).max() > 0.05
    assert min(durations) >= 1.9 and max(durations) <= 27.5


def test_captions_follow_the_recipe_that_made_each_clip(real_corpus: Path):
    with open(real_corpus / "clotho_metadata_development.csv", newline="") as f:
        meta = {m["file_name"]: m for m in csv.DictReader(f)}
    entries = read_manifest(str(real_corpus / "clotho_captions_development.csv"))
    recipes = Counter(m["recipe"] for m in meta.values())
    assert set(recipes) == {"repeat", "background", "sequence", "instrument", "percussion", "speech"}
    for e in entries:
        m = meta[e.audio_id]
        text = " ".join(e.captions).lower()
        if m["recipe"] == "speech":
            assert m["keywords"].split(";")[0].lower() in text  # the language is named
        if m["recipe"] in ("repeat", "background"):
            assert m["keywords"].split(";")[0].lower() in text  # the sound's source is named


def test_same_seed_same_clips_other_seed_other_clips(sources):
    stamps = sources[STAMPS_PACKAGE].root / STAMPS_DIR
    soundfont = (sources[SOUNDFONT_PACKAGE].root / SOUNDFONT_FILE).read_bytes()
    inv = inventory_from(stamps, True)
    import soundfile as sf

    lib = Library(lambda k: sf.read(stamps / f"{k}.ogg", dtype="float32", always_2d=True), soundfont)
    a, b, c = compose(lib, inv, 24, seed=3), compose(lib, inv, 24, seed=3), compose(lib, inv, 24, seed=4)
    assert [x.captions for x in a] == [x.captions for x in b]
    assert all(np.array_equal(x.waveform, y.waveform) for x, y in zip(a, b, strict=True))
    assert [x.captions for x in a] != [x.captions for x in c]
    assert all(x.waveform.dtype == np.float32 and len(x.waveform) >= 2 * SR for x in a)


def test_splits_are_stratified_by_family():
    families = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    splits = stratified_splits(families, (0.6, 0.2, 0.2), seed=0)
    assert Counter(splits) == {"development": 60, "validation": 20, "evaluation": 20}
    for fam, n in (("a", 50), ("b", 30), ("c", 20)):
        got = Counter(s for s, f in zip(splits, families, strict=True) if f == fam)
        assert abs(got["development"] - 0.6 * n) <= 1 and abs(got["evaluation"] - 0.2 * n) <= 1


def test_an_existing_corpus_is_not_overwritten_silently(real_corpus: Path, tmp_path: Path):
    with pytest.raises(OutputExistsError):
        build_corpus(real_corpus, 20)
    assert corpus_job.build_parser().parse_args(["build", str(tmp_path)]).clips == 310


def test_the_shuffled_control_gives_every_clip_another_clips_captions(real_corpus: Path, tmp_path: Path):
    src = real_corpus / "clotho_captions_development.csv"
    original = {e.audio_id: e.captions for e in read_manifest(str(src))}
    dest = write_shuffled_captions(src, tmp_path / "s.csv")
    shuffled = {e.audio_id: e.captions for e in read_manifest(str(dest))}
    assert set(shuffled) == set(original)
    assert all(shuffled[a] != original[a] for a in original)
    assert sorted(shuffled.values()) == sorted(original.values())
