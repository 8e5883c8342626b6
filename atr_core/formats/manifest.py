"""Input manifests: which audio clips to process, their audio_id, split and captions.

Three inputs give a list of :class:`ClipEntry`:

* a glob of audio files (local or gs://): ``audio_id`` is the path relative to the glob's
  non-wildcard root directory, with POSIX separators (:func:`read_glob`);
* a captions file plus an ``audio_root`` (:func:`read_manifest`):

  - Clotho v2.1 CSV ``file_name,caption_1,...,caption_5``: ``audio_id = file_name``;
  - AudioCaps CSV ``audiocap_id,youtube_id,start_time,caption`` (one row per caption): rows are
    grouped by ``youtube_id`` in first-appearance order, ``audio_id = youtube_id`` and the audio
    file name comes from a pattern (default :data:`DEFAULT_AUDIOCAPS_PATTERN`);
  - JSON Lines ``{"audio": path, "captions": [...], "split": ...}``: ``audio_id`` is the
    ``"audio"`` value as given, resolved against ``audio_root`` when relative.

Splits are canonical ``train``/``val``/``test`` (:func:`infer_split`). Nothing here checks that
audio files exist: the extraction pipeline turns missing files into failure records.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from atr_core.errors import CaptionsFormatError, InputError
from atr_core.runtime.storage import expand_glob, is_remote, join_uri, open_uri

FORMATS = ("auto", "clotho", "audiocaps", "jsonl")
SPLITS = ("train", "val", "test")
DEFAULT_AUDIOCAPS_PATTERN = "{youtube_id}.wav"
AUDIOCAPS_PATTERN_FIELDS = ("youtube_id", "start_time", "audiocap_id")
CLOTHO_COLUMNS = ("file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5")
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
GLOB_CHARS = "*?["

# Aliases accepted for split names (explicit values, JSONL fields and file-name tokens).
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "development": "train",
    "dev": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "evaluation": "test",
    "eval": "test",
}


@dataclass(frozen=True)
class ClipEntry:
    """One input clip: join key, where its audio is, its split and its captions (maybe none)."""

    audio_id: str
    uri: str
    split: str | None
    captions: tuple[str, ...]


# ----------------------------------------------------------------------------------------------- splits


def canonical_split(value: str) -> str | None:
    """``train``/``val``/``test`` for a split name or alias (case-insensitive), else None."""
    return _SPLIT_ALIASES.get(value.strip().lower())


def split_from_name(path: str) -> str | None:
    """The split named by a file or directory name (``clotho_captions_evaluation.csv`` -> ``test``).

    The last path component, without extension, is cut into alphanumeric tokens; the name gives a
    split when its tokens name exactly one canonical split. Otherwise None.
    """
    base = posixpath.basename(path.replace("\\", "/").rstrip("/"))
    stem = base.rsplit(".", 1)[0] if "." in base else base
    found = {_SPLIT_ALIASES[t] for t in re.split(r"[^a-z0-9]+", stem.lower()) if t in _SPLIT_ALIASES}
    return found.pop() if len(found) == 1 else None


def infer_split(path: str | None = None, explicit: str | None = None, field: str | None = None) -> str | None:
    """The canonical split of a clip: ``explicit`` first, else the manifest ``field``, else the file name.

    ``explicit`` and ``field`` accept aliases (``development``, ``validation``, ``evaluation``, ...);
    an unknown value raises :class:`InputError`.
    ``path`` is the captions file (or glob root) whose name may carry the split. Returns None
    when nothing tells.
    """
    if explicit:
        split = canonical_split(explicit)
        if split is None:
            raise InputError(f"unknown split {explicit!r}; use one of {', '.join(SPLITS)}")
        return split
    if field:
        split = canonical_split(field)
        if split is None:
            raise InputError(f"unknown split {field!r}; use one of {', '.join(SPLITS)}")
        return split
    return split_from_name(path) if path else None


# ---------------------------------------------------------------------------------------------- helpers


def _default_root(path: str) -> str:
    """The directory holding ``path`` (URL-aware)."""
    if is_remote(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def _read_text(path: str) -> str:
    """The UTF-8 text of ``path`` (BOM stripped); a bad byte raises naming file and line."""
    try:
        with open_uri(path) as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise InputError(f"{path}: captions file not found") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read captions file: {exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = data[:start].count(b"\n") + 1
        col = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise CaptionsFormatError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[start]:02x} at column {col}); "
            "re-encode the captions file as UTF-8"
        ) from None


def detect_format(text: str, path: str = "") -> str:
    """``clotho``, ``audiocaps`` or ``jsonl`` from the header / first non-blank line of ``text``."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise CaptionsFormatError(f"{path}:1: captions file is empty")
    if first.lstrip().startswith("{"):
        return "jsonl"
    header = {h.strip() for h in next(csv.reader([first]))}
    if "file_name" in header:
        return "clotho"
    if "youtube_id" in header:
        return "audiocaps"
    raise CaptionsFormatError(
        f"{path}:1: unknown captions format (header {first.strip()[:120]!r}); expected a Clotho CSV "
        f"({','.join(CLOTHO_COLUMNS)}), an AudioCaps CSV ({','.join(AUDIOCAPS_COLUMNS)}) "
        "or JSON Lines with an 'audio' field"
    )


def _csv_records(text: str, path: str, required: Sequence[str]) -> Iterable[tuple[int, dict[str, str]]]:
    """(line number, row dict) for each non-blank CSV record; checks header and field counts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    line = 1
    for record in reader:
        start, line = line, reader.line_num + 1
        if not record or (len(record) == 1 and not record[0].strip()):
            continue
        if header is None:
            header = [h.strip() for h in record]
            missing = [c for c in required if c not in header]
            if missing:
                raise CaptionsFormatError(
                    f"{path}:{start}: missing required column(s) {', '.join(missing)}; "
                    f"header is {','.join(header)}"
                )
            continue
        if len(record) != len(header):
            raise CaptionsFormatError(
                f"{path}:{start}: malformed row: {len(record)} fields, header has {len(header)}"
            )
        yield start, dict(zip(header, record, strict=True))
    if header is None:
        raise CaptionsFormatError(f"{path}:1: captions file is empty")


def check_audio_pattern(pattern: str) -> None:
    """Raise :class:`InputError` unless ``pattern`` only uses the AudioCaps fields."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
    except ValueError as exc:
        raise InputError(f"audio pattern {pattern!r}: {exc}") from None
    unknown = fields - set(AUDIOCAPS_PATTERN_FIELDS)
    if unknown or not fields:
        raise InputError(
            f"audio pattern {pattern!r}: use one or more of "
            + ", ".join("{" + f + "}" for f in AUDIOCAPS_PATTERN_FIELDS)
        )


# ---------------------------------------------------------------------------------------------- parsers


def _parse_clotho(text: str, path: str, root: str, split: str | None) -> list[ClipEntry]:
    entries = []
    for line, row in _csv_records(text, path, CLOTHO_COLUMNS):
        name = row["file_name"].strip()
        if not name:
            raise CaptionsFormatError(f"{path}:{line}: malformed row: empty file_name")
        caps = tuple(row[c] for c in CLOTHO_COLUMNS[1:])
        entries.append(ClipEntry(name, join_uri(root, name), split, caps))
    return entries


def _parse_audiocaps(text: str, path: str, root: str, split: str | None, pattern: str) -> list[ClipEntry]:
    groups: dict[str, tuple[str, list[str]]] = {}
    for line, row in _csv_records(text, path, AUDIOCAPS_COLUMNS):
        yid = row["youtube_id"].strip()
        if not yid:
            raise CaptionsFormatError(f"{path}:{line}: malformed row: empty youtube_id")
        if yid not in groups:
            name = pattern.format(
                youtube_id=yid, start_time=row["start_time"].strip(), audiocap_id=row["audiocap_id"].strip()
            )
            groups[yid] = (name, [])
        groups[yid][1].append(row["caption"])
    return [ClipEntry(yid, join_uri(root, name), split, tuple(caps)) for yid, (name, caps) in groups.items()]


def _parse_jsonl(text: str, path: str, root: str, split: str | None) -> list[ClipEntry]:
    entries = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            msg = f"{path}:{line}: invalid JSON: {exc.msg} (column {exc.colno})"
            raise CaptionsFormatError(msg) from None
        if not isinstance(obj, dict):
            raise CaptionsFormatError(f"{path}:{line}: malformed row: expected a JSON object")
        audio = obj.get("audio")
        if not isinstance(audio, str) or not audio.strip():
            raise CaptionsFormatError(f"{path}:{line}: malformed row: 'audio' must be a non-empty string")
        caps = obj.get("captions", [])
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise CaptionsFormatError(f"{path}:{line}: malformed row: 'captions' must be a list of strings")
        field = obj.get("split")
        if field is not None and not isinstance(field, str):
            raise CaptionsFormatError(f"{path}:{line}: malformed row: 'split' must be a string")
        try:
            entry_split = split or infer_split(path, field=field)
        except InputError as exc:
            raise CaptionsFormatError(f"{path}:{line}: malformed row: {exc}") from None
        entries.append(ClipEntry(audio, join_uri(root, audio), entry_split, tuple(caps)))
    return entries


# ------------------------------------------------------------------------------------------------ public


def read_manifest(
    path: str,
    audio_root: str | None = None,
    fmt: str = "auto",
    audio_pattern: str | None = None,
    split: str | None = None,
) -> list[ClipEntry]:
    """Read a Clotho CSV, AudioCaps CSV or JSON Lines captions file into clip entries (file order).

    Args:
        path: local path or URL of the captions file (UTF-8).
        audio_root: directory (or URL prefix) that audio names are relative to; default: the
            directory holding the captions file.
        fmt: ``auto`` (detect from the header / first line), ``clotho``, ``audiocaps`` or ``jsonl``.
        audio_pattern: AudioCaps audio file name, a ``str.format`` pattern over ``{youtube_id}``,
            ``{start_time}`` (as written in the CSV) and ``{audiocap_id}`` (of the clip's first row);
            default :data:`DEFAULT_AUDIOCAPS_PATTERN`.
        split: explicit split for every entry (aliases allowed); else per-row JSONL ``split``,
            else inferred from the file name (:func:`infer_split`).

    Raises:
        CaptionsFormatError: non-UTF-8 bytes, missing columns or a malformed row (names file:line).
        InputError: unknown ``fmt``/``split``/pattern, or an unreadable file.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown captions format {fmt!r}; use one of {', '.join(FORMATS)}")
    pattern = audio_pattern or DEFAULT_AUDIOCAPS_PATTERN
    check_audio_pattern(pattern)
    explicit = infer_split(explicit=split) if split else None
    text = _read_text(path)
    kind = detect_format(text, path) if fmt == "auto" else fmt
    root = audio_root if audio_root is not None else _default_root(path)
    if kind == "jsonl":
        return _parse_jsonl(text, path, root, explicit)
    file_split = explicit or infer_split(path)
    if kind == "clotho":
        return _parse_clotho(text, path, root, file_split)
    return _parse_audiocaps(text, path, root, file_split, pattern)


def glob_root(pattern: str) -> str:
    """The non-wildcard directory prefix of a glob (a plain file's directory; a directory itself)."""
    scheme, rest = pattern.split("://", 1) if "://" in pattern else ("", pattern)
    parts = rest.split("/")
    cut = next((i for i, p in enumerate(parts) if any(ch in p for ch in GLOB_CHARS)), None)
    if cut is None:
        # No wildcard: a directory is its own root, a file's root is its directory.
        is_dir = rest.endswith("/") or (not scheme and os.path.isdir(rest))
        cut = len(parts) if is_dir else len(parts) - 1
    root = "/".join(parts[:cut]).rstrip("/")
    if scheme:
        return f"{scheme}://{root}"
    if not root:
        root = "/" if rest.startswith("/") else "."
    return os.path.abspath(root)


def audio_id_for(path: str, root: str) -> str:
    """``path`` relative to ``root`` (from :func:`glob_root`) with POSIX separators."""
    if "://" in root:
        prefix = root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise InputError(f"{path}: not under the input root {root}")
        return path[len(prefix) :]
    rel = os.path.relpath(os.path.abspath(path), root)
    if rel == ".." or rel.startswith(".." + os.sep):
        raise InputError(f"{path}: not under the input root {root}")
    return rel.replace(os.sep, "/")


def glob_split(root: str, split: str | None = None) -> str | None:
    """Split of glob inputs: ``split`` (aliases allowed), else the root directory's name when it is
    exactly a split name (``.../evaluation`` -> ``test``, ``.../my_test_run`` -> None)."""
    if split:
        return infer_split(explicit=split)
    return canonical_split(posixpath.basename(root.replace("\\", "/").rstrip("/")))


def entry_for_path(path: str, root: str, split: str | None = None) -> ClipEntry:
    """The clip entry of one matched audio file (``split`` is already canonical or None)."""
    return ClipEntry(audio_id_for(path, root), path, split, ())


def read_glob(pattern: str, split: str | None = None) -> list[ClipEntry]:
    """Clip entries for the audio files matching ``pattern`` (local or gs://), sorted by path.

    The split is ``split`` when given, else the one the glob root directory is named after
    (e.g. ``clotho/evaluation/*.wav`` -> ``test``; see :func:`glob_split`), else None.
    """
    root = glob_root(pattern)
    split = glob_split(root, split)
    return [entry_for_path(p, root, split) for p in expand_glob(pattern)]


def split_duplicates(entries: Iterable[ClipEntry]) -> tuple[list[ClipEntry], list[ClipEntry]]:
    """(unique, duplicates): the first entry of each audio_id wins; later ones are duplicates."""
    seen: set[str] = set()
    unique, dups = [], []
    for e in entries:
        (dups if e.audio_id in seen else unique).append(e)
        seen.add(e.audio_id)
    return unique, dups
