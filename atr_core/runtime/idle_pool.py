"""A thread pool for work that should only use CPU time nobody else wants.

On Linux the pool's threads run under the ``SCHED_IDLE`` policy: the kernel gives them a core only
when no normal thread of any process wants it. Read-ahead work (decoding the next audio files
while the model runs) then fills the cycles a CPU forward leaves idle without slowing it down.

When a caller waits for a result that is not ready, the pool raises its threads to the normal
policy for the wait, so a busy machine cannot starve the work a caller is blocked on. Raising a
thread back from ``SCHED_IDLE`` needs ``CAP_SYS_NICE`` or a permissive ``RLIMIT_NICE``; the pool
tries it once in a throwaway thread and, where it is refused (or off Linux), its threads simply
run at normal priority.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

LOG = logging.getLogger(__name__)
T = TypeVar("T")

_probe_lock = threading.Lock()
_probe_result: bool | None = None


def _set_policy(tid: int, policy: int) -> None:
    os.sched_setscheduler(tid, policy, os.sched_param(0))


def idle_priority_supported() -> bool:
    """True when a thread can drop to ``SCHED_IDLE`` and be raised back (tried once per process)."""
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            _probe_result = _probe()
        return _probe_result


def _probe() -> bool:
    if not all(hasattr(os, name) for name in ("SCHED_IDLE", "SCHED_OTHER", "sched_setscheduler")):
        return False
    ok: list[bool] = []

    def attempt() -> None:
        tid = threading.get_native_id()
        try:
            _set_policy(tid, os.SCHED_IDLE)
            _set_policy(tid, os.SCHED_OTHER)
            ok.append(True)
        except OSError as exc:
            LOG.info("idle-priority threads unavailable (%s); background work runs at normal priority", exc)

    probe = threading.Thread(target=attempt, name="atr-idle-probe")
    probe.start()
    probe.join()
    return bool(ok)


class IdlePriorityPool:
    """``threads`` worker threads at idle priority where supported (see the module docstring).

    ``submit`` queues work; ``result`` returns a future's value, raising the workers to normal
    priority while it has to wait. ``idle=False`` gives an ordinary pool.
    """

    def __init__(self, threads: int, name: str = "atr-idle", idle: bool = True):
        self.idle = bool(idle) and idle_priority_supported()
        self._lock = threading.Lock()
        self._tids: list[int] = []
        self._executor = ThreadPoolExecutor(
            max(1, threads), thread_name_prefix=name, initializer=self._register
        )

    def _register(self) -> None:
        tid = threading.get_native_id()
        with self._lock:
            self._tids.append(tid)
        if self.idle:
            try:
                _set_policy(tid, os.SCHED_IDLE)
            except OSError:  # refused after a good probe: this thread just runs at normal priority
                pass

    def _set_all(self, policy: int) -> None:
        with self._lock:
            for tid in self._tids:
                try:
                    _set_policy(tid, policy)
                except OSError:  # the thread has exited (ESRCH)
                    pass

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` on the pool."""
        return self._executor.submit(fn, *args)

    def result(self, future: Future[T]) -> T:
        """``future.result()``; the workers run at normal priority while this waits."""
        if future.done() or not self.idle:
            return future.result()
        self._set_all(os.SCHED_OTHER)
        try:
            return future.result()
        finally:
            self._set_all(os.SCHED_IDLE)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers (after the queued work when ``wait``)."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
