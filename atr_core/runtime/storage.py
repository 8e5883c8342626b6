"""Paths and remote files: local paths, gs:// and https:// through fsspec.

One place for opening, globbing and fetching-with-cache so that every stage
treats a path option the same way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

import fsspec

from atr_core.errors import AtrError

REMOTE_PREFIXES = ("gs://", "http://", "https://", "s3://")


class FetchError(AtrError):
    """A remote or local file could not be fetched, or its checksum did not match."""


def is_remote(uri: str) -> bool:
    """True for URLs that need fsspec (gs://, https://, ...), False for local paths."""
    return uri.startswith(REMOTE_PREFIXES)


def join_uri(root: str, *parts: str) -> str:
    """``parts`` joined onto ``root``: a local directory (``os.path.join``) or a URL prefix (``/``).

    A part that is itself absolute or a URL replaces what came before it, and an empty root
    leaves the parts as they are, so ``join_uri(root, name)`` resolves a manifest's file name.
    """
    out = root
    for part in parts:
        if "://" in part or os.path.isabs(part) or not out:
            out = part
        elif "://" in out:
            out = out.rstrip("/") + "/" + part.lstrip("/")
        else:
            out = os.path.join(out, part)
    return out


def absolute_uri(uri: str) -> str:
    """A URL as given, a local path made absolute (how a job records its inputs and outputs)."""
    return uri if "://" in uri else os.path.abspath(uri)


def open_uri(uri: str, mode: str = "rb") -> IO:
    """Open a local path or URL with fsspec (binary by default)."""
    return fsspec.open(uri, mode).open()


def expand_glob(pattern: str) -> list[str]:
    """Sorted list of paths or URLs matching ``pattern`` (a plain path matches itself)."""
    fs, _, paths = fsspec.get_fs_token_paths(pattern)
    if not any(ch in pattern for ch in "*?["):
        if fs.isdir(paths[0]):
            return sorted(_unstrip(fs, p, pattern) for p in fs.find(paths[0]))
        return [pattern] if fs.exists(paths[0]) else []
    return sorted(_unstrip(fs, p, pattern) for p in paths)


def _unstrip(fs: fsspec.AbstractFileSystem, path: str, pattern: str) -> str:
    """Give a path listed by ``fs`` back its protocol when the pattern had one."""
    if "://" in pattern and "://" not in path:
        return f"{pattern.split('://', 1)[0]}://{path}"
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$ATR_CACHE_DIR`` or ``~/.cache/atr``: where fetched remote files are kept."""
    return Path(os.environ.get("ATR_CACHE_DIR", Path.home() / ".cache" / "atr"))


def fetch(uri: str, sha256: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local path holding ``uri``.

    Local paths are returned as they are (checked against ``sha256`` when given).
    gs:// and https:// files are downloaded once into the cache (to a temporary
    name, then renamed) and re-used; a known ``sha256`` is verified on every call
    that downloads and on cached copies.
    """
    if not is_remote(uri):
        path = Path(uri).expanduser()
        if not path.is_file():
            raise FetchError(f"{uri}: no such file")
        _check_sha(path, sha256, uri)
        return path
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name = os.path.basename(uri.split("?", 1)[0]) or "download"
    target = cache / key / name
    if target.is_file():
        _check_sha(target, sha256, uri)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, fsspec.open(uri, "rb").open() as src:
            shutil.copyfileobj(src, out, length=1 << 20)
        _check_sha(Path(tmp), sha256, uri)
        os.replace(tmp, target)
    except FetchError:
        raise
    except Exception as exc:  # network, auth, missing object: one typed error
        raise FetchError(f"{uri}: download failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _check_sha(path: Path, sha256: str | None, uri: str) -> None:
    if sha256 is None:
        return
    got = sha256_file(path)
    if got.lower() != sha256.lower():
        raise FetchError(f"{uri}: sha256 mismatch: expected {sha256}, got {got}")
