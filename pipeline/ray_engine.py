"""The Ray engine (``--engine ray``): a job's stages as one Ray Data pipeline over a cluster.

    read tasks (one chunk each; for a stage that decodes pictures, its bytes in one contiguous read through
      the offset index: ``Catalog.read_chunk``)
      -> one actor pool per stage (the stage opened once per actor: core runs loaded there, one GPU each where
         there are GPUs; the fitted specialists and their OCR engine; the fusion model and the training signals)
      -> the driver: progress, per-stage statistics (``engine.RunStats``), the job's ``on_result``.

Every actor calls the same ``Stage.run`` the local engine calls, so both engines write the same part files and
the merge gives the same submission. The part files stay the one record of what is done: a chunk whose part is
there is skipped by every stage, so a killed driver continues with the same command, redoing at most the
chunks that were in flight; a worker lost mid-chunk (a node gone) is retried by Ray (tasks re-run, actors
restarted) and its atomic writes leave nothing half-written. Warnings a stage catches (a failing plugin) come
back to the driver in its report.

Ray is imported here only (``pip install 'etalage[ray]'``). Without ``--ray-address`` Ray starts on this
machine for the job (one session for all of a job's runs) and stops afterwards: no dashboard unless asked,
Ray's own progress bars and logs off (etalage's bar and stage lines instead; ``-vv`` shows Ray's); the logger
levels and Ray Data settings this changes are put back when the session ends. Nothing here writes the
process's environment: variables for the workers go in ``RaySettings.runtime_env``. Inputs, the work folder
(and the OCR cache, see docs/clusters.md) must be reachable at the same paths from every node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from etalage.errors import ConfigError, EtalageError
from etalage.pipeline.engine import Engine, RunStats, Stage, timed_report, warn_back
from etalage.progress import bar as progress_bar
from etalage.resources import usable_cpus

log = logging.getLogger(__name__)

RAY_MISSING = "--engine ray needs Ray: pip install 'etalage[ray]' (scripts/setup.sh installs it)"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


@dataclass
class RaySettings:
    """How the engine reaches Ray: ``address`` of a running cluster (``ray start --head`` prints it; None:
    start Ray on this machine for the job), the dashboard, verbosity (2: Ray's own logs and progress bars
    too), any stage placement to force (``"STAGE.field"`` -> value, e.g. ``{"core.actors": 2}``), and the
    workers' ``runtime_env`` (their environment variables, packages)."""

    address: str | None = None
    dashboard: bool = False
    verbose: int = 0
    layout: dict = field(default_factory=dict)
    runtime_env: dict | None = None


# ---------------------------------------------------------------------------------------------
# the session: start or join Ray, quietly, and put back what that changed


@contextlib.contextmanager
def quiet_stderr(enabled: bool):
    """fd 2 silenced (Ray's core prints its log-level line there at start-up)."""
    if not enabled:
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietRay:
    """Ray's loggers and Ray Data's bars turned down for a session, and put back as they were after it."""

    LOGGERS = ("ray", "ray.data")

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.saved_levels = {n: logging.getLogger(n).level for n in self.LOGGERS}
        self.saved_context = None

    def apply(self) -> None:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        self.saved_context = (ctx, ctx.enable_progress_bars, ctx.print_on_execution_start)
        ctx.enable_progress_bars = ctx.print_on_execution_start = not self.quiet
        for name in self.LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR if self.quiet else logging.INFO)

    def restore(self) -> None:
        for name, level in self.saved_levels.items():
            logging.getLogger(name).setLevel(level)
        if self.saved_context is not None:
            ctx, bars, prints = self.saved_context
            ctx.enable_progress_bars, ctx.print_on_execution_start = bars, prints


class RaySession:
    """Ray connected until ``close``: the cluster at ``settings.address``, one a caller already holds (a test,
    a notebook: used as it is, never shut down here), or one started on this machine (every usable core)."""

    def __init__(self, settings: RaySettings):
        self.settings = settings
        self.ray = import_ray()
        self.timings = {"start_s": 0.0, "stop_s": 0.0}
        self.owned = not self.ray.is_initialized()
        quiet = settings.verbose < 2
        self.quiet = _QuietRay(quiet)
        if self.owned:
            t0 = time.perf_counter()
            kw = dict(logging_level=logging.ERROR if quiet else logging.INFO, log_to_driver=not quiet,
                      runtime_env=settings.runtime_env)
            with quiet_stderr(quiet):
                if settings.address:
                    self.ray.init(address=settings.address, **kw)
                else:
                    self.ray.init(address="local", num_cpus=usable_cpus(), include_dashboard=settings.dashboard, **kw)
            self.timings["start_s"] = time.perf_counter() - t0
            log.debug("ray: %s in %.1f s (%s)", f"joined {settings.address}" if settings.address else "started locally",
                      self.timings["start_s"], _resources_line(self.ray))
        self.quiet.apply()

    def close(self) -> None:
        self.quiet.restore()
        if self.owned and self.ray.is_initialized():
            t0 = time.perf_counter()
            self.ray.shutdown()
            self.timings["stop_s"] = time.perf_counter() - t0
        self.owned = False


def _resources_line(ray) -> str:
    res = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return f"{nodes} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"


# ---------------------------------------------------------------------------------------------
# the layout: actors, threads and CPU reservations per stage


@dataclass
class Placement:
    """A stage's actor pool: how many actors, what each reserves, how many threads it runs."""

    actors: int = 1
    cpus: float = 0.1
    gpus: float = 0.0
    threads: int = 1


READ_CPUS = 0.05  # a read task's reservation: they only wait on storage


@dataclass
class Layout:
    """Every stage's placement on the cluster. Ray counts CPUs as logical resources: an actor holds its
    reservation for the whole run, and a dataset whose actors hold every CPU hangs (read tasks never start), so
    actors reserve fractions and their real work is bounded by their thread counts instead."""

    nodes: int = 1
    cpus: float = 1.0                # in the whole cluster
    gpus: float = 0.0
    stages: dict[str, Placement] = field(default_factory=dict)

    @classmethod
    def of_cluster(cls, ray, stages: list[Stage], device: str = "auto", forced: dict | None = None) -> Layout:
        """On GPUs (``device`` auto or cuda): a core actor per GPU (one host thread pair each), the CPUs for the
        other stages (one actor per 2 cores, 2 threads each). On CPUs only: a core actor per node using every
        core of it (the forward is the largest stage), one actor per node for each other stage; the operating
        system shares the cores between the stages that run at once."""
        res = ray.cluster_resources()
        nodes = max(1, len([n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]))
        cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
        if device == "cuda" and gpus < 1:
            raise ConfigError("--device cuda: the Ray cluster has no GPU (see `ray status`)")
        on_gpu = gpus >= 1 and device != "cpu"
        per_node = max(1, int(cpus // nodes))
        out = cls(nodes, cpus, gpus)
        for stage in stages:
            if stage.name == "core":
                out.stages["core"] = Placement(int(gpus), 1.0, 1.0, 2) if on_gpu else \
                    Placement(nodes, 0.25, 0.0, per_node)
            elif stage.name == "ocr":
                out.stages["ocr"] = Placement(max(1, int(cpus // 2)), 1.0, 0.0, 2)
            else:
                out.stages[stage.name] = Placement(max(1, int((cpus - 2 * gpus) // 2)), 1.0, 0.0, 2) if on_gpu else \
                    Placement(nodes, 0.15, 0.0, 1)
        out.force(forced or {})
        return out.fitted()

    def force(self, forced: dict) -> None:
        for key, value in forced.items():
            stage, _, name = str(key).partition(".")
            place = self.stages.get(stage)
            if place is None or not hasattr(place, name):
                known = ", ".join(f"{s}.{f}" for s in self.stages for f in asdict(Placement()))
                raise ConfigError(f"unknown Ray layout setting {key!r} (one of {known})")
            setattr(place, name, type(getattr(place, name))(value))

    def fitted(self) -> Layout:
        """The actors' reservations scaled down so that the read tasks always find CPU left: actors hold theirs
        for the whole run (a GPU node with few cores: 1 GPU and 2 CPUs reserved 2 CPUs in actors)."""
        free = self.cpus - 2 * READ_CPUS
        held = sum(p.actors * p.cpus for p in self.stages.values())
        if free <= 0:
            raise ConfigError(f"the Ray cluster's {self.cpus:g} CPUs leave nothing for its actors (see `ray status`)")
        if held > free:
            for p in self.stages.values():
                p.cpus *= free / held
        return self

    def as_dict(self) -> dict:
        return {"nodes": self.nodes, "cpus": self.cpus, "gpus": self.gpus,
                "stages": {k: asdict(v) for k, v in self.stages.items()}}


# ---------------------------------------------------------------------------------------------
# the pipeline's workers


def _read_chunk(path: str, a: int, b: int, extent: tuple[int, int] | None):
    """One block: chunk ``a..b`` and, when its first stage decodes pictures and still has it to do, their
    bytes (``extent`` of the dump, one read)."""
    import pyarrow as pa

    from etalage.catalog.catalog import read_extent

    t0 = time.perf_counter()
    read = extent is not None
    blob = pickle.dumps(read_extent(path, (a, b), extent)) if read else b""
    report = json.dumps({"read": {"s": time.perf_counter() - t0, "bytes": len(blob), "worked": bool(read)}})
    return [pa.table({"a": [a], "b": [b], "chunk": pa.array([blob], pa.large_binary()), "reports": [report],
                      "payload": pa.array([b""], pa.large_binary())})]


def _chunk_source(path: str, chunks: list[tuple[int, int, tuple[int, int] | None]]):
    """A Ray Data source of one read task per chunk (a, b, the byte extent to read or None)."""
    import functools

    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ChunkSource(Datasource):
        def estimate_inmemory_data_size(self):
            return int(sum(e[1] - e[0] for _, _, e in chunks if e is not None))

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(functools.partial(_read_chunk, path, a, b, extent),
                             BlockMetadata(num_rows=1, size_bytes=int(extent[1] - extent[0]) if extent else 64,
                                           exec_stats=None, input_files=None))
                    for a, b, extent in chunks]

        def get_name(self):
            return "DumpChunks"

    return ChunkSource()


def _node() -> str:
    """The Ray node this worker runs on (its id: the nodes of a simulated cluster share one host name)."""
    import ray

    return ray.get_runtime_context().get_node_id()[:12]


class StageActor:
    """One actor of a stage's pool: the stage opened once (on the first chunk it has to do), then each chunk
    it is handed run unless done; its report joins the chunk's reports, its payload goes to the driver."""

    def __init__(self, stage: Stage, threads: int):
        from etalage.forking import limit_child_threads

        # opened when the actor starts: every stage's actors load their models at once, while the first chunks
        # are read and predicted, instead of each stage waiting for its first chunk to begin loading
        t0 = time.perf_counter()
        limit_child_threads(threads)  # an actor is a process of the engine's own
        stage.open(threads)
        self.stage, self.threads, self.open_s = stage, threads, time.perf_counter() - t0

    def __call__(self, batch: dict) -> dict:
        out = {k: list(v) for k, v in batch.items()}
        for i in range(len(batch["a"])):
            rows = (int(batch["a"][i]), int(batch["b"][i]))
            reports = json.loads(batch["reports"][i])
            report = {"worked": False}
            if self.stage.todo(rows, reports):
                open_s, self.open_s = self.open_s, 0.0  # counted once, with the actor's first chunk
                raw = batch["chunk"][i]
                chunk = pickle.loads(raw) if self.stage.reads_pictures and raw is not None and len(raw) else None
                report = timed_report(lambda rows=rows, chunk=chunk: self.stage.run(rows, chunk), _node())
                report.update(worked=True, open_s=open_s)
                payload = report.pop("payload", None)
                if payload is not None:
                    out["payload"][i] = pickle.dumps(payload)
            reports[self.stage.name] = report
            out["reports"][i] = json.dumps(reports)
            out["chunk"][i] = b""  # read once, used by the stage that decodes: not carried further
        return {k: np.array(v, dtype=object) if k in ("chunk", "payload", "reports") else np.asarray(v)
                for k, v in out.items()}


def _unwrap(exc: BaseException) -> BaseException:
    """The etalage error inside a Ray error (a stage's ``EtalageError`` is what the user must see)."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, EtalageError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return exc


# ---------------------------------------------------------------------------------------------
# the engine


class RayEngine(Engine):
    """Ray Data over a cluster (``settings``: ``RaySettings``); one session for every run of the job."""

    name = "ray"

    def __init__(self, settings: RaySettings | None = None, progress: bool = True, device: str = "auto"):
        super().__init__(progress)
        self.settings = settings or RaySettings()
        self.device = device
        self.session: RaySession | None = None

    def _ray(self):
        if self.session is None:
            self.session = RaySession(self.settings)
        return self.session.ray

    def run(self, stages: list[Stage], chunks: list[tuple[int, int]], desc: str, on_result=None) -> RunStats:
        stats = RunStats(self.name)
        todo = [c for c in chunks if any(s.todo(c, {}) for s in stages)]
        for s in stages:
            if s.label:
                log.info("%s", s.label)
        if not todo:
            return stats
        ray = self._ray()
        layout = Layout.of_cluster(ray, stages, self.device, self.settings.layout)
        stats.layout = layout.as_dict()
        log.debug("ray layout: %s", stats.layout)
        first = stages[0]
        catalog = first.read_ahead if first.reads_pictures else None
        rows = [(a, b, catalog.chunk_extent((a, b)) if catalog is not None and first.todo((a, b), {}) else None)
                for a, b in todo]
        ds = ray.data.read_datasource(_chunk_source(str(catalog.path) if catalog is not None else "", rows),
                                      override_num_blocks=len(rows), num_cpus=READ_CPUS)
        for s in stages:
            place = layout.stages[s.name]
            ds = ds.map_batches(StageActor, fn_constructor_kwargs={"stage": s, "threads": place.threads},
                                batch_size=1, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=place.actors), num_cpus=place.cpus,
                                **({"num_gpus": place.gpus} if place.gpus else {}))
        t0 = time.perf_counter()
        self._drain(ds, {s.name: s for s in stages}, stats, (sum(first.units(c) for c in todo), desc), on_result)
        stats.timings["pipeline_s"] = time.perf_counter() - t0
        stats.timings.update(start_s=self.session.timings["start_s"])
        return stats

    def _drain(self, ds, stages: dict[str, Stage], stats: RunStats, bar_of: tuple[int, str], on_result) -> None:
        first = next(iter(stages.values()))
        try:
            with progress_bar(total=bar_of[0], unit=first.unit, desc=bar_of[1], enabled=self.progress) as bar:
                for row in ds.iter_rows():
                    rows = (int(row["a"]), int(row["b"]))
                    reports = json.loads(row["reports"])
                    stats.read_bytes += int(reports.get("read", {}).get("bytes", 0))
                    payload = pickle.loads(row["payload"]) if row["payload"] else None
                    for name, stage in stages.items():
                        report = reports.get(name, {})
                        warn_back(report)
                        if on_result is not None and report.get("worked"):
                            on_result(stage, rows, {**report, **({"payload": payload} if payload is not None else {})})
                        stats.add(name, report, rows[1] - rows[0])
                    bar.update(first.units(rows))
        except Exception as exc:  # noqa: BLE001 - re-raised, as the etalage error inside when there is one
            inner = _unwrap(exc)
            if inner is not exc:
                raise inner from None
            raise

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            log.debug("ray: stopped in %.1f s", self.session.timings["stop_s"])
            self.session = None
