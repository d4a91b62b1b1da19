"""Forked workers: children do not inherit the parent's Python SIGTERM handler (Ray installs one in a process
that holds a cluster; run in a child it shut the cluster down), hold what they were made with without pickling
it, run with one thread, and their results come back in order; a worker that dies is an error, not a hang."""

import os
import signal

import pytest


class Unpicklable:
    """State a child must inherit through the fork: pickling it fails."""

    def __init__(self):
        self.offset = 100
        self.lock = __import__("threading").Lock()

    def __reduce__(self):
        raise TypeError("must not be pickled")

    def work(self, x):
        import torch

        return x + self.offset, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, os.getpid(), torch.get_num_threads()


def test_children_inherit_state_take_the_default_sigterm_and_one_thread():
    from etalage.forking import map_forked

    ran = []
    state = Unpicklable()
    before = signal.signal(signal.SIGTERM, lambda *a: ran.append(a))
    try:
        out = list(map_forked(lambda: state.work, list(range(6)), 2))
    finally:
        signal.signal(signal.SIGTERM, before)
    assert [x for x, *_ in out] == [100 + i for i in range(6)]
    assert all(default for _, default, _, _ in out)
    assert os.getpid() not in {pid for _, _, pid, _ in out} and not ran
    assert {threads for *_, threads in out} == {1}


def _boom(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def _die(x):
    if x == 2:
        os._exit(9)
    return x


def test_a_failing_item_raises_its_error_and_a_dead_worker_is_an_error():
    from etalage.forking import ForkedWorkers, WorkerDied

    with pytest.raises(ValueError, match="bad item 3"), ForkedWorkers(lambda: _boom, 2) as pool:
        list(pool.map(range(6)))
    with pytest.raises(WorkerDied, match="exit code 9"), ForkedWorkers(lambda: _die, 2) as pool:
        list(pool.map(range(6)))
