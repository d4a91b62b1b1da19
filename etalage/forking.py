"""Forked workers: the one place etalage forks, for work whose state the children inherit (the training
signals, a fitted model, a catalogue's index, an OCR engine's settings) so that nothing large is pickled.

``ForkedWorkers(make_worker, processes)`` starts children that each call ``make_worker()`` once (the
object it closes over is inherited through the fork, never pickled: a forked ``Process`` takes its
target and arguments as they are in memory) and then apply the worker it returns to the items sent to
them; results come back in the items' order. The pool is an object its owner creates and closes (a
``with`` block): no module-level state holds what the children use.

Each child, before ``make_worker``:
- resets SIGTERM to the default action: a parent that handles SIGTERM in Python (a process holding a
  Ray cluster or session does: Ray's shutdown hook) hands that handler to its children, where it ran
  Ray's shutdown from the child (measured: it took down a local Ray node) or, with the child blocked in
  C, never ran at all;
- limits torch's and faiss's intra-op threads (``threads``, default one): N children each running every
  core's worth of threads would oversubscribe the machine. The child is our own process, so its thread
  counts are ours to set; the parent's are never touched.
A child that dies (killed, out of memory) is an error in the parent, not a hang.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator

_POLL_S = 1.0  # how often the parent checks that its children are alive while it waits


class WorkerDied(RuntimeError):
    """A forked worker ended without answering (killed, out of memory, crashed in C)."""


def limit_child_threads(threads: int) -> None:
    """In a child process of ours: torch's and faiss's intra-op threads (where those are loaded) at
    ``threads``."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, threads))
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(max(1, threads))


def _child(make_worker: Callable, tasks, results, threads: int) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    limit_child_threads(threads)
    try:
        work = make_worker()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        results.put((-1, False, _portable(exc)))
        return
    for i, item in iter(tasks.get, None):
        try:
            results.put((i, True, work(item)))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            results.put((i, False, _portable(exc)))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (it crosses a queue), else a RuntimeError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class ForkedWorkers:
    """``processes`` forked children, each applying ``make_worker()``'s result to the items it is sent.

    >>> with ForkedWorkers(lambda: model.rank, 2) as pool:
    ...     ranked = list(pool.map(chunks))
    """

    def __init__(self, make_worker: Callable[[], Callable], processes: int, threads: int = 1):
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        self._tasks, self._results = ctx.SimpleQueue(), ctx.Queue()
        self._procs = [ctx.Process(target=_child, args=(make_worker, self._tasks, self._results, threads),
                                   daemon=True) for _ in range(max(1, processes))]
        for p in self._procs:
            p.start()

    def map(self, items: Iterable) -> Iterator:
        """The worker's result for each item, in the items' order (as they complete in order)."""
        items = list(items)
        for i, item in enumerate(items):
            self._tasks.put((i, item))
        ready: dict[int, object] = {}
        for i in range(len(items)):
            while i not in ready:
                j, ok, value = self._next()
                if not ok:
                    raise value
                ready[j] = value
            yield ready.pop(i)

    def _next(self):
        while True:
            try:
                return self._results.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [p for p in self._procs if p.exitcode not in (None, 0)]
                if dead:
                    raise WorkerDied(f"a worker process ended with exit code {dead[0].exitcode} (killed or out of "
                                     f"memory?)") from None

    def close(self) -> None:
        """Ask the children to leave, and wait for them (killing those that do not within a few seconds)."""
        for p in self._procs:
            if p.is_alive():
                self._tasks.put(None)
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        self._results.close()

    def terminate(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.kill()
        for p in self._procs:
            p.join()
        self._results.close()

    def __enter__(self) -> ForkedWorkers:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.close()
        else:  # an error or Ctrl-C: the queued items are not worked through first
            self.terminate()


def map_forked(make_worker: Callable[[], Callable], items: list, workers: int, threads: int = 1) -> Iterator:
    """``make_worker()``'s worker over ``items`` in ``workers`` forked processes, in order (in this process,
    with one worker, when ``workers`` <= 1 or there is one item). Feature building, packing and hashing are
    single-threaded numpy, Pillow and hashlib, so on 2 cores two processes nearly double them."""
    if workers <= 1 or len(items) <= 1:
        work = make_worker()
        yield from (work(x) for x in items)
        return
    with ForkedWorkers(make_worker, min(workers, len(items)), threads) as pool:
        yield from pool.map(items)
