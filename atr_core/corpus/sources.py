"""Packaged real recordings: Debian packages fetched and unpacked without installing them.

The demo corpus is built from sounds that ship in Debian packages, reached through the package
registry like any other dependency:

==========================  ==========  =================================================  =======
package                     size        what it holds                                      licence
==========================  ==========  =================================================  =======
``tuxpaint-stamps-default`` 161 MB      recorded animal, household, tool, vehicle and      GPL-2
                                        instrument sounds, spoken words in 20 languages
``timgm6mb-soundfont``      5.4 MB      TimGM6mb General MIDI SoundFont: sampled           GPL-2
                                        instruments (rendered by :mod:`.render`)
==========================  ==========  =================================================  =======

A package that is installed (``dpkg -s`` says so) is read where it lies, under ``/``. Otherwise
``apt-get download`` fetches its ``.deb`` into a cache directory (apt checks it against the
archive's signed index) and ``dpkg-deb -x`` unpacks it there: no root, no installation. Both tools
are on every Debian or Ubuntu machine; elsewhere, unpack the packages yourself and pass the
directory (``--sources``), which must hold the same ``usr/share/...`` tree.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from atr_core.errors import InputError
from atr_core.runtime.storage import default_cache_dir

log = logging.getLogger(__name__)

STAMPS_PACKAGE = "tuxpaint-stamps-default"
SOUNDFONT_PACKAGE = "timgm6mb-soundfont"
PACKAGES = (STAMPS_PACKAGE, SOUNDFONT_PACKAGE)
#: Where each package's files lie below the package root.
STAMPS_DIR = Path("usr/share/tuxpaint/stamps")
SOUNDFONT_FILE = Path("usr/share/sounds/sf2/TimGM6mb.sf2")
LICENCES = {STAMPS_PACKAGE: "GPL-2 (Tux Paint stamps, Bill Kendrick et al.)",
            SOUNDFONT_PACKAGE: "GPL-2 (TimGM6mb, Tim Brechbill, David Bolton)"}


class SourcesError(InputError):
    """A packaged-recordings source cannot be found or fetched."""


@dataclass(frozen=True)
class PackageRoot:
    """Where one package's files are: ``root / usr/share/...``; ``version`` as dpkg reports it."""

    name: str
    root: Path
    version: str
    how: str  # "installed", "downloaded" or "given"

    def to_dict(self) -> dict:
        return {"package": self.name, "version": self.version, "how": self.how,
                "root": str(self.root), "licence": LICENCES.get(self.name, "")}


def sources_cache_dir() -> Path:
    """``$ATR_CACHE_DIR/debian`` (default ``~/.cache/atr/debian``): unpacked packages."""
    return default_cache_dir() / "debian"


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def installed_version(package: str) -> str | None:
    """The installed version of ``package`` (``dpkg-query``), or None."""
    if shutil.which("dpkg-query") is None:
        return None
    res = _run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package])
    if res.returncode != 0 or "install ok installed" not in res.stdout:
        return None
    return res.stdout.split("\t", 1)[1].strip()


def fetch_package(package: str, cache_dir: Path | None = None) -> PackageRoot:
    """Find ``package`` installed, or download and unpack its ``.deb`` into the cache (once).

    Raises :class:`SourcesError` with what to do when neither works.
    """
    version = installed_version(package)
    if version is not None:
        return PackageRoot(package, Path("/"), version, "installed")
    cache = (cache_dir or sources_cache_dir()) / package
    done = cache / ".unpacked"
    if done.is_file():
        return PackageRoot(package, cache / "root", done.read_text().strip(), "downloaded")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SourcesError(
                f"{package}: not installed and {tool} is not available to fetch it; unpack the Debian "
                f"package {package} yourself and pass its directory with --sources"
            )
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("*.deb"):
        old.unlink()
    log.info("downloading the Debian package %s (apt-get download)", package)
    res = _run(["apt-get", "download", "-q", package], cwd=cache)
    if res.returncode != 0 and "Unable to locate" in res.stderr and os.geteuid() == 0:
        # A fresh machine or container has no package lists yet; as root, fetch them once.
        log.info("no apt package lists yet: running apt-get update")
        _run(["apt-get", "update", "-qq"])
        res = _run(["apt-get", "download", "-q", package], cwd=cache)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if res.returncode != 0 or not debs:
        hint = " (run 'apt-get update' first?)" if "Unable to locate" in res.stderr else ""
        raise SourcesError(
            f"{package}: apt-get download failed{hint}: {res.stderr.strip()[-300:]}; or install the "
            f"package, or pass an unpacked copy with --sources"
        )
    root = cache / "root"
    if root.exists():
        shutil.rmtree(root)
    res = _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
    if res.returncode != 0:
        raise SourcesError(f"{debs[0]}: dpkg-deb -x failed: {res.stderr.strip()[-300:]}")
    version = _run(["dpkg-deb", "-f", str(debs[0]), "Version"]).stdout.strip()
    debs[0].unlink()  # the unpacked tree is what is kept
    tmp = done.with_name(".unpacked.tmp")
    tmp.write_text(version + "\n")
    os.replace(tmp, done)
    return PackageRoot(package, root, version, "downloaded")


def locate_sources(
    sources: str | os.PathLike | None = None, cache_dir: Path | None = None
) -> dict[str, PackageRoot]:
    """The root of every package in :data:`PACKAGES`.

    ``sources``: a directory holding the packages' ``usr/share/...`` trees (unpacked by hand);
    otherwise each package is found installed or fetched (:func:`fetch_package`).
    """
    if sources is not None:
        root = Path(sources).expanduser()
        missing = [str(root / p) for p in (STAMPS_DIR, SOUNDFONT_FILE) if not (root / p).exists()]
        if missing:
            raise SourcesError(f"--sources {root}: missing {', '.join(missing)}")
        return {name: PackageRoot(name, root, "unknown", "given") for name in PACKAGES}
    return {name: fetch_package(name, cache_dir) for name in PACKAGES}
