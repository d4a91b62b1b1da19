"""Forked worker pools: the one place etalage forks, for work whose state the children inherit (the
training signals, a fitted model, an OCR engine's settings) so that nothing large is pickled.

A child resets SIGTERM to the default action first: a parent that handles SIGTERM in Python (a process
holding a Ray cluster or session does: Ray's shutdown hook) hands that handler to its children, where it
ran Ray's shutdown from the child (measured: it took down a local Ray node) or, with the child blocked in
C, never ran at all and left ``Pool.terminate`` waiting. Pools are closed, not terminated, once their work
is done, so children leave on their own.
"""

from __future__ import annotations


def _child_start(initializer, initargs) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


def forked_pool(processes: int, initializer=None, initargs: tuple = ()):
    """A ``multiprocessing`` pool of ``processes`` forked children (``initializer(*initargs)`` run in each)."""
    import multiprocessing as mp

    return mp.get_context("fork").Pool(processes, _child_start, (initializer, initargs))


def map_forked(fn, items: list, workers: int):
    """``fn`` over ``items`` in ``workers`` forked processes, yielding results in order (in this process
    when ``workers`` <= 1 or there is one item). Feature building and packing are single-threaded numpy
    and Pillow, so on 2 cores two processes nearly double them."""
    if workers <= 1 or len(items) <= 1:
        yield from (fn(x) for x in items)
        return
    pool = forked_pool(min(workers, len(items)))
    try:
        yield from pool.imap(fn, items, chunksize=1)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def mp_child() -> bool:
    """Whether this process is a pool's child (its thread counts are then one)."""
    import multiprocessing as mp

    return mp.parent_process() is not None
