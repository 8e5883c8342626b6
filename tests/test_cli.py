"""The ``atr`` console command dispatches to the same jobs as ``python -m pipelines.<name>``."""

from __future__ import annotations

import subprocess
import sys

from pipelines import cli


def atr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_every_command_and_imports_no_job():
    proc = atr("--help")
    assert proc.returncode == 0
    for name in cli.COMMANDS:
        assert f"\n  {name} " in proc.stdout
    code = "import sys, pipelines.cli; assert not any(m.startswith('apache_beam') for m in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_unknown_or_missing_command_is_exit_code_2():
    assert atr("frobnicate").returncode == 2 and "unknown command 'frobnicate'" in atr("frobnicate").stderr
    assert atr().returncode == 2


def test_subcommand_flags_reach_the_job():
    proc = atr("corpus", "build", "--help")
    assert proc.returncode == 0 and "--clips" in proc.stdout
    bad = atr("search", "--vectors", "/nonexistent/vectors", "--model", "/nonexistent/model", "a dog barks")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("search: error:")
