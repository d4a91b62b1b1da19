"""Where a job's stages run. A job (``predict``, ``submit``, ``fusion fit``, ``audit``, ``ocr``) builds its
stages, each a per-chunk step over a dump's products that knows nothing of where it runs, and hands them to
an ``Engine`` chosen once at the top: ``LocalEngine`` (this process, stage after stage, forked workers for the
single-threaded ones) or ``RayEngine`` (``pipeline/ray_engine.py``: one Ray Data pipeline over a cluster,
the stages at once, chunk by chunk). Both run the same ``Stage.run`` on the same chunks, so they write the
same part files; the part files are the one record of what is done (``Stage.todo``), so a killed job picks up
where it stopped on either engine.

The accounting is here too, for both engines: per stage its chunks, products, pictures, busy seconds and
peak memory (``RunStats``: ``-v`` prints it, jobs save it as ``WORK/engine_stats.json``).
"""

from __future__ import annotations

import logging
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from etalage.progress import bar as progress_bar
from etalage.resources import peak_rss_mb, usable_cpus

log = logging.getLogger(__name__)

Rows = tuple[int, int]


class Stage(ABC):
    """One step of a job, applied chunk by chunk (rows ``a..b`` of the job's products).

    A stage is a small picklable description (paths, settings, a catalogue's index): ``open`` loads what it
    runs with (models, engines) once per process or actor, ``run`` does one chunk and writes its part file
    atomically, ``close`` lets go. ``run`` returns a small report (JSON-able: ``pictures``, ``scored``,
    ``warnings``, ...; a ``payload`` entry, if any, goes to the job's ``on_result`` and not to the statistics).
    """

    name: str = ""               # its line in progress bars and statistics
    label: str = ""              # what the job's log says when the stage starts
    reads_pictures: bool = False  # an engine may read its chunks' picture bytes ahead (``Catalog.read_chunk``)
    forked: bool = False         # single-threaded work the local engine spreads over forked processes
    unit: str = "product"        # what ``units`` counts, for progress bars

    @abstractmethod
    def todo(self, rows: Rows, upstream: dict) -> bool:
        """Whether chunk ``rows`` is still to do; ``upstream``: what the earlier stages reported for it."""

    def open(self, threads: int | None = None) -> None:  # noqa: B027 - an optional hook
        """Load what ``run`` needs, once (a second call only applies ``threads``). ``threads``: the intra-op
        threads of a worker process of the engine's own (None: this is the caller's process, whose thread
        counts are left as they are)."""

    @abstractmethod
    def run(self, rows: Rows, chunk=None) -> dict:
        """Do chunk ``rows``; ``chunk``: its pictures' bytes read ahead (``ChunkBytes``) or None."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Let go of what ``open`` loaded."""

    def adopt(self, opened: Stage) -> None:
        """Run with what ``opened`` (a stage of the same kind, already opened) loaded, instead of loading it again:
        a server classifying batch after batch opens its stages once. Closing this stage leaves them loaded."""
        raise NotImplementedError(f"the {self.name} stage cannot adopt another's models")

    def units(self, rows: Rows) -> int:
        """What the progress bar counts for chunk ``rows`` (products)."""
        return rows[1] - rows[0]

    @property
    def read_ahead(self):
        """The catalogue whose chunks' pictures an engine may read ahead (``reads_pictures`` stages), else None."""
        return None

    def opened(self, threads: int | None = None):
        """``open(threads)``, then this stage's ``run``: what a forked worker or an actor calls per chunk."""
        self.open(threads)
        return self._run_item

    def _run_item(self, item: tuple[Rows, object]) -> dict:
        rows, chunk = item
        return self.run(rows, chunk)


# ---------------------------------------------------------------------------------------------
# the statistics of a run, for both engines


@dataclass
class StageStats:
    chunks: int = 0
    worked: int = 0           # chunks where the stage had work (not found done)
    products: int = 0         # products of those chunks
    pictures: int = 0
    busy_s: float = 0.0       # summed over workers
    open_s: float = 0.0       # loading the stage's models, summed over workers (each actor loads them once)
    peak_rss_mb: float = 0.0  # largest worker
    nodes: set = field(default_factory=set)

    def add(self, report: dict, products: int) -> None:
        self.chunks += 1
        self.open_s += float(report.get("open_s", 0.0))
        if report.get("worked", True):
            self.worked += 1
            self.products += products
            self.busy_s += float(report.get("s", 0.0))
        self.pictures += int(report.get("pictures", 0))
        self.peak_rss_mb = max(self.peak_rss_mb, float(report.get("rss_mb", 0.0)))
        if report.get("node"):
            self.nodes.add(report["node"])

    def row(self) -> dict:
        rate = self.products / self.busy_s if self.busy_s else None
        return {"chunks": self.chunks, "chunks_worked": self.worked, "products": self.products,
                "pictures": self.pictures, "busy_s": self.busy_s, "open_s": self.open_s, "products_per_busy_s": rate,
                "pictures_per_busy_s": self.pictures / self.busy_s if self.busy_s and self.pictures else None,
                "peak_worker_rss_mb": self.peak_rss_mb, "nodes": max(1, len(self.nodes))}


@dataclass
class RunStats:
    """What a run did: per stage its chunks, products, busy seconds (summed over workers: products per busy
    second is one worker's rate) and peak worker memory; the engine's start and stop, the wall time, the
    layout (Ray)."""

    engine: str = "local"
    stages: dict[str, StageStats] = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)
    read_bytes: int = 0

    def add(self, stage: str, report: dict, products: int) -> None:
        self.stages.setdefault(stage, StageStats()).add(report, products)

    def merge(self, other: RunStats) -> None:
        """Another run of the same job (a job made of several engine runs) added to this one."""
        for name, s in other.stages.items():
            mine = self.stages.setdefault(name, StageStats())
            for k in ("chunks", "worked", "products", "pictures", "busy_s", "open_s"):
                setattr(mine, k, getattr(mine, k) + getattr(s, k))
            mine.peak_rss_mb = max(mine.peak_rss_mb, s.peak_rss_mb)
            mine.nodes |= s.nodes
        for k, v in other.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        self.layout = self.layout or other.layout
        self.read_bytes += other.read_bytes

    def as_dict(self) -> dict:
        return {"engine": self.engine, "stages": {k: v.row() for k, v in self.stages.items()},
                "timings": self.timings, "layout": self.layout, "read_bytes": self.read_bytes,
                "peak_driver_rss_mb": peak_rss_mb()}

    def log_lines(self) -> list[str]:
        out = []
        for name, s in self.stages.items():
            r = s.row()
            rate = f"{r['products_per_busy_s']:,.0f} products/s per worker" if r["products_per_busy_s"] else \
                "nothing to do"
            if r["pictures_per_busy_s"]:
                rate += f" ({r['pictures_per_busy_s']:,.0f} pictures/s)"
            out.append(f"{self.engine} {name}: {s.worked}/{s.chunks} chunks worked, {s.products:,} products, "
                       f"{s.busy_s:.1f} s busy, {s.open_s:.1f} s loading models; {rate}; peak worker memory "
                       f"{s.peak_rss_mb:,.0f} MB")
        t = self.timings
        out.append(f"{self.engine}: start {t.get('start_s', 0):.1f} s, stages {t.get('pipeline_s', 0):.1f} s, stop "
                   f"{t.get('stop_s', 0):.1f} s; peak driver memory {peak_rss_mb():,.0f} MB")
        return out

    def save(self, folder: str | Path | None) -> None:
        """Log the lines (``-v``) and write ``folder/engine_stats.json`` (when a folder is given)."""
        for line in self.log_lines():
            log.debug(line)
        if folder is not None:
            from etalage.files import write_json_atomic

            write_json_atomic(Path(folder) / "engine_stats.json", self.as_dict())


def timed_report(run: Callable[[], dict | None], node: str = "") -> dict:
    """``run()``'s report with its seconds, the process's peak memory and the node it ran on."""
    t0 = time.perf_counter()
    report = dict(run() or {})
    report.update(s=time.perf_counter() - t0, rss_mb=peak_rss_mb(), **({"node": node} if node else {}))
    return report


def warn_back(report: dict) -> None:
    """Warnings a stage caught in a worker (a failing plugin), raised again where the job runs."""
    for message in report.get("warnings", ()):
        warnings.warn(message, UserWarning, stacklevel=2)


# ---------------------------------------------------------------------------------------------
# engines


OnResult = Callable[[Stage, Rows, dict], None]


class Engine(ABC):
    """Runs stages over chunks. Engines are context managers: a cluster is joined (or started) once for all
    the runs of a job, and left at the end."""

    name: str = ""

    def __init__(self, progress: bool = True):
        self.progress = progress

    @abstractmethod
    def run(self, stages: list[Stage], chunks: list[Rows], desc: str, on_result: OnResult | None = None) -> RunStats:
        """Every stage over the ``chunks`` it still has ``todo``, in stage order for each chunk; reports go to
        ``on_result(stage, rows, report)`` as they come (in the job's process)."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Let go of the cluster (if any)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalEngine(Engine):
    """This machine: stage after stage in this process, a ``forked`` stage's chunks over ``workers`` forked
    processes (default: every usable core), each with ``usable cores / workers`` threads."""

    name = "local"

    def __init__(self, progress: bool = True, workers: int | None = None):
        super().__init__(progress)
        self.workers = max(1, workers or usable_cpus())

    def run(self, stages: list[Stage], chunks: list[Rows], desc: str, on_result: OnResult | None = None) -> RunStats:
        stats = RunStats(self.name)
        reports: dict[Rows, dict] = {c: {} for c in chunks}
        t0 = time.perf_counter()
        for stage in stages:
            todo = [c for c in chunks if stage.todo(c, reports[c])]
            if stage.label:
                log.info("%s%s", stage.label, "" if todo else " (done before)")
            if not todo:
                continue
            for c, report in self._run_stage(stage, todo):
                report.setdefault("worked", True)
                reports[c][stage.name] = {k: v for k, v in report.items() if k != "payload"}  # what later stages see
                warn_back(report)
                if on_result is not None:
                    on_result(stage, c, report)
                stats.add(stage.name, report, c[1] - c[0])
        stats.timings["pipeline_s"] = time.perf_counter() - t0
        return stats

    def _run_stage(self, stage: Stage, todo: list[Rows]):
        """(chunk, report) of every chunk of ``todo``. A forked stage is opened here first, so that its children
        inherit what it loaded (the training signals, a model: copy-on-write, nothing pickled); each child then
        opens it again with its own thread count (``Stage.open`` is idempotent)."""
        workers = min(self.workers, len(todo)) if stage.forked else 1
        t0 = time.perf_counter()
        stage.open(None)
        opened = {"open_s": time.perf_counter() - t0}  # counted with the stage's first chunk
        try:
            with progress_bar(total=sum(stage.units(c) for c in todo), unit=stage.unit, desc=stage.name,
                              enabled=self.progress) as bar:
                if workers > 1:
                    from etalage.forking import ForkedWorkers

                    threads = max(1, usable_cpus() // workers)
                    with ForkedWorkers(lambda: _timed(stage.opened(threads)), workers, threads) as pool:
                        for c, report in zip(todo, pool.map([(c, None) for c in todo]), strict=True):
                            bar.update(stage.units(c))
                            yield c, {**report, **opened}
                            opened = {}
                    return
                for c in todo:
                    report = timed_report(lambda c=c: stage.run(c, None))
                    bar.update(stage.units(c))
                    yield c, {**report, **opened}
                    opened = {}
        finally:
            stage.close()


def _timed(work: Callable) -> Callable:
    return lambda item: timed_report(lambda: work(item))
