"""retain_freed_memory: big tensors stop re-faulting their pages once freed memory is kept."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
import torch
from atr_core.runtime.cpu_memory import freed_memory_retained, retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
again = retain_freed_memory() if applied else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def batch():  # big buffers allocated, filled and freed, as a forward does
    a = torch.ones(64 * 2**20 // 4)
    b = torch.ones(16 * 2**20 // 4)
    del a
    c = torch.ones(64 * 2**20 // 4)
    del b, c
for _ in range(12):  # glibc settles into reusing the retained heap within a few rounds
    batch()
before = faults()
for _ in range(5):
    batch()
print(json.dumps({"applied": applied, "again": again, "retained": freed_memory_retained(),
                  "faults": faults() - before}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_retained_memory_is_reused_without_page_faults():
    default, retained = probe("default"), probe("retain")
    assert not default["retained"]
    assert retained["applied"] and retained["again"] and retained["retained"]  # idempotent
    pages = 5 * 144 * 2**20 // 4096
    assert default["faults"] > 0.5 * pages  # by default glibc mmaps each block afresh
    assert retained["faults"] < 0.05 * pages
