"""The tree keeps the shape docs/architecture.md describes: stage subpackages, thin job files."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
SUBPACKAGES = ["audio", "formats", "text", "model", "training", "evaluation", "search", "runtime", "corpus"]


def test_every_atr_core_module_is_on_the_map_and_no_other():
    for pkg in SUBPACKAGES:
        row = re.search(rf"`{pkg}/`: ([^|]+)\|", DOC)
        assert row, f"docs/architecture.md has no row for atr_core/{pkg}/"
        listed = set(re.findall(r"`(\w+)`", row.group(1)))
        actual = {p.stem for p in (ROOT / "atr_core" / pkg).glob("*.py") if p.stem != "__init__"}
        assert listed == actual, pkg
    flat = {p.stem for p in (ROOT / "atr_core").glob("*.py")} - {"__init__"}
    assert flat == {"errors"}


def test_every_job_module_is_on_the_map_and_small():
    for job in ("extract", "embed"):
        for path in (ROOT / "pipelines" / job).glob("*.py"):
            assert path.name == "__init__.py" or f"`{path.name}`" in DOC, path
    for path in (ROOT / "pipelines").rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path


def test_public_faces_resolve():
    for pkg in SUBPACKAGES:
        mod = importlib.import_module(f"atr_core.{pkg}")
        assert mod.__all__, pkg
        for name in mod.__all__:
            assert hasattr(mod, name), f"atr_core.{pkg}.{name}"


def test_the_library_never_imports_beam():
    mods = [f"atr_core.{p.relative_to(ROOT).with_suffix('').as_posix().split('/', 1)[1].replace('/', '.')}"
            for p in (ROOT / "atr_core").rglob("*.py") if p.name != "__init__.py"]
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "assert not [m for m in sys.modules if m.startswith('apache_beam')]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
