"""Build the real-sound corpus on disk in the Clotho v2.1 layout.

``DIR/clotho_captions_{development,validation,evaluation}.csv`` (``file_name, caption_1..5``), the
audio of all splits in ``DIR/audio/`` (one folder, so one extraction run covers the corpus),
``clotho_metadata_<split>.csv`` (keywords, the recordings used, their licence) and ``corpus.json``
(seed, counts, packages and versions).
Splits are stratified by recipe family (60/20/20 by default). Files are written in a mix of
formats and rates (WAV 8-48 kHz, FLAC 44.1/96 kHz, Ogg Vorbis, MP3), as real collections are.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from atr_core.corpus.catalogue import LANGUAGES, SOUNDS
from atr_core.corpus.compose import SR, Clip, Inventory, Library, compose
from atr_core.corpus.sources import (
    LICENCES,
    SOUNDFONT_FILE,
    SOUNDFONT_PACKAGE,
    STAMPS_DIR,
    STAMPS_PACKAGE,
    PackageRoot,
    SourcesError,
    locate_sources,
)
from atr_core.errors import OutputExistsError

log = logging.getLogger(__name__)

SPLITS = ("development", "validation", "evaluation")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
CORPUS_FILE = "corpus.json"
AUDIO_DIR = "audio"
#: (extension, soundfile subtype, sample rate) a clip may be written as.
FORMATS = (
    ("wav", "PCM_16", 44100), ("wav", "PCM_16", 16000), ("wav", "PCM_16", 8000), ("wav", "FLOAT", 48000),
    ("flac", "PCM_16", 44100), ("flac", "PCM_24", 96000), ("ogg", "VORBIS", 32000),
    ("ogg", "VORBIS", 44100), ("mp3", "MPEG_LAYER_III", 22050), ("mp3", "MPEG_LAYER_III", 44100),
)
_DIGIT = re.compile(r"^(\d)_(.+)$")


def inventory_from(stamps: Path, has_soundfont: bool) -> Inventory:
    """The catalogued sounds present under ``stamps``, and the spoken digits and descriptions."""
    sounds = tuple(s for s in SOUNDS if (stamps / f"{s.key}.ogg").is_file())
    if len(sounds) < 10:
        raise SourcesError(f"{stamps}: only {len(sounds)} of the {len(SOUNDS)} catalogued recordings found")
    numbers: dict[str, list[str]] = defaultdict(list)
    for p in sorted((stamps / "symbols" / "math").glob("*.ogg")):
        m = _DIGIT.match(p.stem)
        if m and m.group(2) in LANGUAGES:
            numbers[m.group(2)].append(p.relative_to(stamps).with_suffix("").as_posix())
    sentences: dict[str, list[str]] = defaultdict(list)
    for p in sorted(stamps.rglob("*_desc*.ogg")):
        if p.relative_to(stamps).parts[0] == "symbols":
            continue
        suffix = p.stem.split("_desc", 1)[1].lstrip("_") or "en_GB"
        if suffix in LANGUAGES:
            sentences[suffix].append(p.relative_to(stamps).with_suffix("").as_posix())
    # Counting needs all ten digits of a language; talking at least three descriptions.
    numbers = {k: v for k, v in numbers.items() if len(v) >= 10}
    sentences = {k: v for k, v in sentences.items() if len(v) >= 3}
    return Inventory(sounds, numbers, sentences, has_soundfont=has_soundfont)


def stratified_splits(families: Sequence[str], fractions: Sequence[float], seed: int) -> list[str]:
    """A split name per clip: within each family, a seeded order cut at the fractions."""
    rng = np.random.default_rng(seed + 1)
    out = [""] * len(families)
    by_family: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(families):
        by_family[f].append(i)
    carry = np.zeros(len(SPLITS))
    for fam in sorted(by_family):
        idx = [by_family[fam][int(j)] for j in rng.permutation(len(by_family[fam]))]
        # Largest remainder with the rounding carried across families, so totals match the fractions.
        want = np.asarray(fractions) * len(idx) + carry
        counts = np.floor(want).astype(int)
        for j in np.argsort(-(want - counts))[: len(idx) - counts.sum()]:
            counts[j] += 1
        carry = want - counts
        start = 0
        for split, c in zip(SPLITS, counts, strict=True):
            for i in idx[start : start + c]:
                out[i] = split
            start += c
    return out


def write_clip(path: Path, wave: np.ndarray, fmt: tuple[str, str, int], stereo: bool) -> None:
    """Resample ``wave`` (at :data:`SR`) to the format's rate and write it (temporary name, then rename)."""
    ext, subtype, rate = fmt
    x = wave if rate == SR else soxr.resample(wave, SR, rate).astype(np.float32)
    x = np.clip(x, -1.0, 1.0)
    if stereo:
        x = np.stack([x, x * 0.9], axis=1)
    tmp = path.with_name(f".{path.stem}.tmp.{ext}")
    sf.write(tmp, x, rate, subtype=subtype, format={"ogg": "OGG", "mp3": "MP3"}.get(ext, ext.upper()))
    os.replace(tmp, path)


def build_corpus(
    out: str | os.PathLike,
    n_clips: int = 310,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    sources: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Compose ``n_clips`` clips from the packaged recordings and write them under ``out``.

    Returns the corpus description (also written as ``corpus.json``). Raises
    :class:`SourcesError` when the packages cannot be found or fetched, and
    :class:`OutputExistsError` when ``out`` holds a corpus and ``overwrite`` is not set.
    """
    out = Path(out)
    if n_clips < 10:
        raise ValueError(f"n_clips must be >= 10, got {n_clips}")
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    if (out / CORPUS_FILE).exists() and not overwrite:
        raise OutputExistsError(f"{out}: already holds a corpus; pass --overwrite to replace it")
    roots = locate_sources(sources)
    stamps = roots[STAMPS_PACKAGE].root / STAMPS_DIR
    soundfont = (roots[SOUNDFONT_PACKAGE].root / SOUNDFONT_FILE).read_bytes()
    inventory = inventory_from(stamps, has_soundfont=True)

    def load(key: str) -> tuple[np.ndarray, int]:
        x, sr = sf.read(stamps / f"{key}.ogg", dtype="float32", always_2d=True)
        return x, sr

    lib = Library(load, soundfont)
    log.info("composing %d clips (seed %d) from %d recordings, %d instruments, %d languages",
             n_clips, seed, len(inventory.sounds), len(inventory.instruments),
             len(set(inventory.numbers) | set(inventory.sentences)))
    clips = compose(lib, inventory, n_clips, seed=seed)
    splits = stratified_splits([c.family for c in clips], fractions, seed)
    return write_corpus(out, clips, splits, seed, roots, progress)


def write_corpus(
    out: Path, clips: Sequence[Clip], splits: Sequence[str], seed: int,
    roots: dict[str, PackageRoot], progress: bool = True,
) -> dict:
    """Write the clips' audio, the Clotho caption and metadata CSVs and ``corpus.json``."""
    rng = np.random.default_rng(seed + 2)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    audio = out / AUDIO_DIR
    audio.mkdir(parents=True, exist_ok=True)
    for old in audio.iterdir():
        if old.is_file():
            old.unlink()
    for i, (clip, split) in enumerate(tqdm(list(zip(clips, splits, strict=True)), desc="writing clips",
                                           unit="clip", disable=not progress)):
        fmt = FORMATS[int(rng.integers(len(FORMATS)))]
        name = f"clip_{i:04d}.{fmt[0]}"
        write_clip(audio / name, clip.waveform, fmt, stereo=bool(rng.random() < 0.3))
        rows[split].append({"file_name": name, "clip": clip, "format": fmt})
    for split in SPLITS:
        _write_csv(out / f"clotho_captions_{split}.csv",
                   ["file_name", *(f"caption_{k}" for k in range(1, 6))],
                   [[r["file_name"], *r["clip"].captions] for r in rows[split]])
        _write_csv(out / f"clotho_metadata_{split}.csv",
                   ["file_name", "keywords", "recipe", "sources", "duration_s", "format", "license"],
                   [[r["file_name"], ";".join(r["clip"].keywords), r["clip"].recipe,
                     ";".join(r["clip"].sources), f"{len(r['clip'].waveform) / SR:.2f}",
                     f"{r['format'][0]}/{r['format'][1]}/{r['format'][2]}", _licence(r["clip"])]
                    for r in rows[split]])
    durations = [len(c.waveform) / SR for c in clips]
    info = {
        "kind": "atr-real-sound-corpus",
        "schema_version": 1,
        "seed": seed,
        "clips": len(clips),
        "splits": {s: len(rows[s]) for s in SPLITS},
        "recipes": {r: sum(c.recipe == r for c in clips) for r in sorted({c.recipe for c in clips})},
        "seconds": {"total": round(sum(durations), 1), "min": round(min(durations), 2),
                    "max": round(max(durations), 2)},
        "packages": [roots[k].to_dict() for k in sorted(roots)],
    }
    tmp = out / f".{CORPUS_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / CORPUS_FILE)
    return info


def _licence(clip: Clip) -> str:
    pkgs = {SOUNDFONT_PACKAGE if s.startswith("soundfont:") else STAMPS_PACKAGE for s in clip.sources}
    return "; ".join(f"{p}: {LICENCES[p]}" for p in sorted(pkgs))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def write_shuffled_captions(src: str | os.PathLike, dest: str | os.PathLike, seed: int = 0) -> Path:
    """A control: ``src`` (Clotho CSV) with whole caption sets moved to other clips (a seeded derangement).

    No clip keeps its own captions, so a model trained on it can learn nothing true about the audio.
    """
    with open(src, newline="", encoding="utf-8") as f:
        header, *body = list(csv.reader(f))
    perm = np.random.default_rng(seed).permutation(len(body))
    nxt = np.empty_like(perm)
    nxt[perm] = np.roll(perm, -1)  # each clip takes the captions of the next clip in a random cycle
    rows = [[body[i][0], *body[int(nxt[i])][1:]] for i in range(len(body))]
    _write_csv(Path(dest), header, rows)
    return Path(dest)
