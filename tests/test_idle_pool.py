"""IdlePriorityPool: results, idle priority while unobserved, normal priority while waited on."""

import os
import threading
import time

import pytest

from atr_core.runtime import idle_pool
from atr_core.runtime.idle_pool import IdlePriorityPool, idle_priority_supported


def _policy() -> int:
    return os.sched_getscheduler(0)  # 0: the calling thread on Linux


def test_results_in_submission_order_and_errors_propagate():
    pool = IdlePriorityPool(2, name="t-pool")
    try:
        futures = [pool.submit(lambda i: i * i, i) for i in range(20)]
        assert [pool.result(f) for f in futures] == [i * i for i in range(20)]
        bad = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            pool.result(bad)
    finally:
        pool.shutdown()


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="needs Linux scheduling policies")
def test_workers_are_idle_until_waited_on():
    pool = IdlePriorityPool(1, name="t-idle")
    try:
        if not idle_priority_supported():  # e.g. no CAP_SYS_NICE: an ordinary pool, never stuck idle
            assert pool.idle is False
            assert pool.result(pool.submit(_policy)) == os.SCHED_OTHER
            return
        assert pool.idle is True
        # not waited on through the pool: the work runs at idle priority
        assert pool.submit(_policy).result() == os.SCHED_IDLE
        # waited on: raised to normal for the wait (the task sleeps so the wait starts first)
        gate = threading.Event()

        def slow_policy() -> int:
            gate.wait(5)
            time.sleep(0.05)
            return _policy()

        fut = pool.submit(slow_policy)
        gate.set()
        assert pool.result(fut) == os.SCHED_OTHER
        # and back to idle afterwards
        assert pool.submit(_policy).result() == os.SCHED_IDLE
    finally:
        pool.shutdown()


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="needs Linux scheduling policies")
def test_idle_false_gives_normal_threads():
    pool = IdlePriorityPool(1, idle=False)
    try:
        assert pool.idle is False
        assert pool.submit(_policy).result() == os.SCHED_OTHER
    finally:
        pool.shutdown()


def test_refused_priority_change_falls_back_to_normal_threads(monkeypatch):
    def refuse(tid: int, policy: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(idle_pool, "_set_policy", refuse)
    monkeypatch.setattr(idle_pool, "_probe_result", None)  # probe again; monkeypatch restores the cache
    assert idle_priority_supported() is False
    pool = IdlePriorityPool(2)
    assert pool.idle is False
    assert pool.result(pool.submit(sum, [1, 2, 3])) == 6
    pool.shutdown()
