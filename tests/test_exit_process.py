"""Entry points end through exit_process: the exit code is the job's, exit handlers still run."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, sys
import pyarrow as pa, pyarrow.parquet as pq
from pipelines.common import exit_process
pq.write_table(pa.table({"x": list(range(1000))}), sys.argv[1])
pq.read_table(sys.argv[1], use_threads=True)  # starts pyarrow's thread pools
atexit.register(lambda: print("handler ran", flush=True))
print("partial line without newline", end="")
exit_process(int(sys.argv[2]))
"""


def test_exit_code_and_handlers_survive_the_shortcut_exit(tmp_path):
    for code in (0, 2, 130):
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tmp_path / "t.parquet"), str(code)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == code, proc.stderr
        assert proc.stdout == "partial line without newlinehandler ran\n"
