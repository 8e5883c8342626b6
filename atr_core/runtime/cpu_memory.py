"""Keep freed heap memory for reuse, so CPU inference stops paying page faults on every forward.

glibc's malloc serves each allocation above its mmap threshold (at most 32 MB) with a fresh
``mmap`` and gives it back to the kernel on free. CNN14's conv activations at batch 16 are
hundreds of MB, so every forward re-faults and zeroes about 1.2 GB of pages: 0.6-0.7 s of system
time per batch of 16 on the 2-core machine, ~10 % of the forward (docs/benchmarks.md).
:func:`retain_freed_memory` switches that off for the main arena (``M_MMAP_MAX`` = 0, and a trim
threshold that keeps freed memory in the heap), which is what an inference worker wants: its
working set is the same batch after batch. It is process-wide, takes effect for allocations made
from the main thread, costs a few hundred MB of retained heap, and is a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

# glibc <malloc.h> mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Freed memory below the heap top is kept up to this size (the largest value mallopt accepts).
KEEP_BYTES = 2**31 - 1

_lock = threading.Lock()
_applied = False


def retain_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of unmapping it; True if applied.

    Idempotent; returns False (and changes nothing) where the C library is not glibc.
    """
    global _applied
    with _lock:
        if _applied:
            return True
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        if not (mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)):
            return False
        _applied = True
        return True


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` has been applied in this process."""
    return _applied
