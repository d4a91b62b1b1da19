"""Forked pools: children do not inherit the parent's Python SIGTERM handler (Ray installs one in a process
that holds a cluster; run in a child it shut the cluster down), and results come back in order."""

import os
import signal


def _child_sigterm(x):
    return x, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, os.getpid()


def test_children_take_the_default_sigterm_whatever_the_parent_installed():
    from etalage.forking import map_forked

    ran = []
    before = signal.signal(signal.SIGTERM, lambda *a: ran.append(a))
    try:
        out = list(map_forked(_child_sigterm, list(range(6)), 2))
    finally:
        signal.signal(signal.SIGTERM, before)
    assert [x for x, _, _ in out] == list(range(6))
    assert all(default for _, default, _ in out)
    assert os.getpid() not in {pid for _, _, pid in out} and not ran
