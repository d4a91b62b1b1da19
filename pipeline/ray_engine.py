"""The Ray engine (``--engine ray``): the prediction pipeline as one Ray Data pipeline over a cluster.

    read tasks (one chunk of the dump each, through the offset index: one contiguous read of its bytes)
      -> core actors (every core run loaded once per actor; one GPU each where there are GPUs, JPEGs
         decoded there; the CPU otherwise)                                   -> WORK/core/part-*.npz
      -> specialists actors (CPU; the fitted specialists and their OCR engine loaded once per actor)
                                                                             -> WORK/specialists/NAME/part-*.npz
      -> fusion tasks (CPU; the training signals shared through the object store) -> WORK/fused/part-*.npz
      -> the driver: progress, per-stage rates; then the same merge as the local engine.

Every stage runs the local engine's own per-chunk step (``CorePredictor.predict_part`` and
``combine_chunk``, ``SpecialistsStage.score`` over the chunk, ``fuse_chunk``), so both engines write the
same part files and the merge gives the same submission. The work folder's part files stay the one
record of what is done: a chunk whose part is there is skipped by every stage of both engines, so a
killed driver continues with the same command, redoing at most the chunks that were in flight; a worker
lost mid-chunk (a node gone) is retried by Ray (tasks re-run, actors restarted) and its atomic writes
leave nothing half-written. A failing plugin is contained by the same guard as on the local engine; its
warnings come back to the driver.

Ray is imported here only (``pip install 'etalage[ray]'``). Without ``--ray-address`` Ray starts on this
machine for the command and stops afterwards: no dashboard unless asked, usage statistics off
(``RAY_USAGE_STATS_ENABLED=0`` unless set), Ray's own progress bars and logs off (etalage's bar and
stage lines instead; ``-vv`` shows Ray's). Inputs, the work folder (and the OCR cache, see the README's
"Clusters") must be reachable at the same paths from every node.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog, Taxonomy
from etalage.chunks import DEFAULT_CHUNK, chunk_ranges, list_parts, shard_chunk_ranges
from etalage.errors import ConfigError, DataError, EtalageError
from etalage.pipeline.workdir import WorkDir
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


# ---------------------------------------------------------------------------------------------
# the session: start or join Ray, quietly


@dataclass
class RaySettings:
    """How the engine reaches Ray: ``address`` of a running cluster (``ray start --head`` prints it; None:
    start Ray on this machine for the command), the dashboard, verbosity (2: Ray's own logs and progress
    bars too), and any of the layout's numbers to force (``Layout`` field -> value)."""

    address: str | None = None
    dashboard: bool = False
    verbose: int = 0
    layout: dict = field(default_factory=dict)
    runtime_env: dict | None = None


@contextlib.contextmanager
def _quiet_stderr(enabled: bool):
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


@contextlib.contextmanager
def ray_session(settings: RaySettings, timings: dict | None = None):
    """Ray connected for the block: the cluster at ``settings.address``, or one started on this machine
    (every usable core) and stopped afterwards. ``timings`` gets ``start_s`` and ``stop_s``."""
    timings = timings if timings is not None else {}
    quiet = settings.verbose < 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if quiet:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # its core's own lines (e.g. actor restarts)
    ray = import_ray()
    if ray.is_initialized():  # a caller (a test, a notebook) holds a session: use it as it is
        timings.update(start_s=0.0, stop_s=0.0)
        _quiet_data(quiet)
        yield ray
        return
    t0 = time.perf_counter()
    kw = dict(logging_level=logging.ERROR if quiet else logging.INFO, log_to_driver=not quiet,
              runtime_env=settings.runtime_env)
    with _quiet_stderr(quiet):
        if settings.address:
            ray.init(address=settings.address, **kw)
        else:
            ray.init(address="local", num_cpus=usable_cpus(), include_dashboard=settings.dashboard, **kw)
    timings["start_s"] = time.perf_counter() - t0
    log.debug("ray: %s in %.1f s (%s)", "joined " + settings.address if settings.address else "started locally",
              timings["start_s"], _resources_line(ray))
    _quiet_data(quiet)
    try:
        yield ray
    finally:
        t0 = time.perf_counter()
        ray.shutdown()
        timings["stop_s"] = time.perf_counter() - t0


def _quiet_data(quiet: bool) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    ctx.print_on_execution_start = not quiet
    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.INFO)


def _resources_line(ray) -> str:
    res = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return f"{nodes} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"


# ---------------------------------------------------------------------------------------------
# the layout: actors, threads and CPU reservations per stage


@dataclass
class Layout:
    """How many actors each stage gets and what they reserve. Ray counts CPUs as logical resources: an
    actor holds its reservation for the whole run, and a dataset whose actors hold every CPU hangs (read
    and fusion tasks never start), so actors reserve fractions and their real work is bounded by their
    thread counts instead. Derived from the cluster by ``of_cluster``; any field can be forced."""

    nodes: int = 1
    cpus: float = 1.0                # in the whole cluster
    gpus: float = 0.0
    core_actors: int = 1
    core_gpus: float = 0.0           # 1 per actor where the core runs on GPUs
    core_cpus: float = 0.25
    core_threads: int = 1            # torch threads per core actor
    specialist_actors: int = 1
    specialist_cpus: float = 0.15
    specialist_threads: int = 1
    fusion_tasks: int = 1            # at most this many at once
    fusion_cpus: float = 0.1
    read_cpus: float = 0.05

    @classmethod
    def of_cluster(cls, ray, device: str = "auto", forced: dict | None = None) -> Layout:
        """On GPUs (``device`` auto or cuda): a core actor per GPU (one host thread pair each), and the
        CPUs for the specialists (one actor per 2 cores, 2 threads each) and fusion. On CPUs only: a core
        actor per node using every core of it (the forward is the largest stage), one specialists actor per
        node, fusion tasks one per node; the operating system shares the cores between the stages that
        run at once."""
        res = ray.cluster_resources()
        nodes = max(1, len([n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]))
        cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
        per_node = max(1, int(cpus // nodes))
        if gpus >= 1 and device != "cpu":
            out = cls(nodes, cpus, gpus, core_actors=int(gpus), core_gpus=1.0, core_cpus=1.0, core_threads=2,
                      specialist_actors=max(1, int((cpus - 2 * gpus) // 2)), specialist_cpus=1.0,
                      specialist_threads=2, fusion_tasks=max(1, nodes * 2), fusion_cpus=0.5)
        else:
            if device == "cuda":
                raise ConfigError("--device cuda: the Ray cluster has no GPU (see `ray status`)")
            out = cls(nodes, cpus, gpus, core_actors=nodes, core_threads=per_node, specialist_actors=nodes,
                      specialist_threads=1, fusion_tasks=nodes)
        for k, v in (forced or {}).items():
            if not hasattr(out, k):
                raise ConfigError(f"unknown Ray layout setting {k!r} (one of {', '.join(asdict(out))})")
            setattr(out, k, type(getattr(out, k))(v))
        return out.fitted()

    def fitted(self) -> Layout:
        """The actors' reservations scaled down so that the read and fusion tasks always find CPU left:
        actors hold theirs for the whole run, and a dataset whose actors hold every CPU never starts
        its tasks (a GPU node with few cores: 1 GPU and 2 CPUs reserved 2 CPUs in actors)."""
        free = self.cpus - self.fusion_tasks * self.fusion_cpus - 2 * self.read_cpus
        held = self.core_actors * self.core_cpus + self.specialist_actors * self.specialist_cpus
        if free <= 0:
            raise ConfigError(f"the Ray cluster's {self.cpus:g} CPUs leave nothing for its actors (see `ray status`)")
        if held > free:
            scale = free / held
            self.core_cpus *= scale
            self.specialist_cpus *= scale
        return self


def _remote(cpus: float, gpus: float = 0.0) -> dict:
    return {"num_cpus": cpus, **({"num_gpus": gpus} if gpus else {})}


# ---------------------------------------------------------------------------------------------
# read tasks: one chunk of the dump each


def _read_chunk(path: str, a: int, b: int, lo: int, hi: int, read: bool):
    """One block: the chunk ``a..b`` and, when its core stage is still to run, the dump's bytes lo..hi (its
    products' pictures, one read)."""
    import pyarrow as pa

    t0 = time.perf_counter()
    blob = b""
    if read and hi > lo:
        fd = os.open(path, os.O_RDONLY)
        try:
            pieces, at = [], lo
            while at < hi:
                piece = os.pread(fd, min(hi - at, 1 << 30), at)
                if not piece:
                    raise DataError(f"{path}: ends before byte {hi} (the index is stale; run `etalage index`)")
                pieces.append(piece)
                at += len(piece)
            blob = b"".join(pieces)
        finally:
            os.close(fd)
    info = json.dumps({"s": time.perf_counter() - t0, "bytes": len(blob)})
    return [pa.table({"a": [a], "b": [b], "base": [lo], "blob": pa.array([blob], pa.large_binary()),
                      "read_info": [info]})]


def _chunk_source(path: Path, chunks: list[tuple[int, int, int, int, bool]]):
    """A Ray Data source of one read task per chunk (a, b, first byte, end byte, read its bytes)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ChunkSource(Datasource):
        def estimate_inmemory_data_size(self):
            return int(sum(hi - lo for _, _, lo, hi, read in chunks if read))

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(functools.partial(_read_chunk, str(path), a, b, lo, hi, read),
                             BlockMetadata(num_rows=1, size_bytes=int(hi - lo) if read else 64, exec_stats=None,
                                           input_files=None))
                    for a, b, lo, hi, read in chunks]

        def get_name(self):
            return "DumpChunks"

    return ChunkSource()


def _rows(batch: dict):
    return [{k: batch[k][i] for k in batch} for i in range(len(batch["a"]))]


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _out(rows: list[dict], keep: tuple[str, ...]) -> dict:
    return {k: np.array([r[k] for r in rows]) for k in keep}


# ---------------------------------------------------------------------------------------------
# the stages' workers


class CoreActor:
    """The core stage: a ``CoreJob`` (every run of the plan, loaded once, on first use) over the chunks it
    is handed, their bytes read by the read tasks."""

    def __init__(self, job, catalog: Catalog, threads: int):
        self.job, self.catalog, self.threads = job, catalog, threads
        self.predictors = None

    def __call__(self, batch: dict) -> dict:
        from etalage.core.predict import PreReadCatalog

        rows = _rows(batch)
        for r in rows:
            a, b = int(r["a"]), int(r["b"])
            t0 = time.perf_counter()
            pictures = 0
            if not self.job.done((a, b)):
                if self.predictors is None:
                    import torch

                    torch.set_num_threads(self.threads)
                    self.predictors = self.job.predictors()
                blob = r["blob"] if r["blob"] is not None else b""
                source = PreReadCatalog(self.catalog.index, a, b, int(r["base"]), blob)
                pictures = self.job.run_chunk(self.predictors, source, (a, b))
            r["core_info"] = json.dumps({"s": time.perf_counter() - t0, "pictures": pictures, "rss_mb": _rss_mb(),
                                         "node": _node()})
        return _out(rows, ("a", "b", "read_info", "core_info"))


def _node() -> str:
    """The Ray node this worker runs on (its id: the nodes of a simulated cluster share one host name);
    empty outside Ray (a stage's step called in-process: asking would start Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else ""


@dataclass
class SpecialistsJob:
    specialists_dir: Path
    names: list[str]
    ocr_cache: Path | None
    catalog: Catalog
    taxonomy: Taxonomy
    core_dir: Path
    out_dir: Path
    producer: str
    chunk: int

    def todo(self, rows: tuple[int, int]) -> bool:
        from etalage.pipeline.cores import part_done

        return not all(part_done(self.out_dir / n, rows) for n in self.names)


class SpecialistsActor:
    """The specialists stage: the fitted specialists and their OCR engine loaded once (on first use), then
    each chunk scored as the local engine scores a shard (``SpecialistsStage.score``); the warnings of a
    failing plugin are carried back to the driver."""

    def __init__(self, job: SpecialistsJob, threads: int):
        self.job, self.threads = job, threads
        self.stage = None

    def __call__(self, batch: dict) -> dict:
        import warnings

        from etalage.pipeline.stages import SpecialistsStage, chunk_shard

        rows = _rows(batch)
        job = self.job
        for r in rows:
            a, b = int(r["a"]), int(r["b"])
            t0 = time.perf_counter()
            info = {"scored": {}, "failed": {}, "recovered": False, "warnings": []}
            if job.todo((a, b)):
                if self.stage is None:
                    import torch

                    torch.set_num_threads(self.threads)
                    self.stage = SpecialistsStage(job.specialists_dir, job.names, job.ocr_cache, job.catalog.path)
                shard = chunk_shard((a, b), len(job.catalog), job.chunk)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    summary = self.stage.score(job.core_dir, job.catalog, np.arange(len(job.catalog)), job.taxonomy,
                                               job.out_dir, shard, job.producer, progress=False)
                info.update(scored=summary.scored, failed={k: len(v) for k, v in summary.failed_chunks.items()},
                            recovered=bool(summary.recovered_chunks),
                            warnings=list(dict.fromkeys(str(w.message) for w in caught)))
            info.update(s=time.perf_counter() - t0, rss_mb=_rss_mb(), node=_node())
            r["spec_info"] = json.dumps(info)
        return _out(rows, ("a", "b", "read_info", "core_info", "spec_info"))


_FUSION_STATES: dict = {}  # per worker process: the fusion state of each run (by its object's id)


def fuse_rows(batch: dict, state_ref: list) -> dict:
    """The fusion stage (a Ray task): fuse each chunk not fused yet (or whose specialists recovered). The
    shared state (training signals, catalogue, plan) comes from the object store once per worker process;
    the fusion model and the neighbour indexes are loaded from the fusion folder."""
    from etalage.pipeline.cores import part_done
    from etalage.pipeline.stages import fuse_chunk

    key = state_ref[0].hex()
    st = _FUSION_STATES.get(key)
    if st is None:
        import ray

        from etalage.pipeline.stages import load_fusion_models

        _FUSION_STATES.clear()
        st = load_fusion_models(dict(ray.get(state_ref[0])))
        st["model"].threads = 1
        st["faiss_threads"] = 1
        _FUSION_STATES[key] = st
    rows = _rows(batch)
    for r in rows:
        a, b = int(r["a"]), int(r["b"])
        t0 = time.perf_counter()
        spec = json.loads(r["spec_info"]) if "spec_info" in r else {}
        fused = False
        if not part_done(st["work"].fused, (a, b)) or spec.get("recovered"):
            fuse_chunk(st, (a, b))
            fused = True
        r["fuse_info"] = json.dumps({"s": time.perf_counter() - t0, "fused": fused, "rss_mb": _rss_mb(),
                                     "node": _node()})
    keep = ("a", "b", "read_info", "core_info", "spec_info", "fuse_info") if "spec_info" in batch else \
        ("a", "b", "read_info", "core_info", "fuse_info")
    return _out(rows, keep)


def pass_rows(batch: dict) -> dict:
    """Stand-in for a stage with nothing to do (its columns empty)."""
    n = len(batch["a"])
    out = {"a": batch["a"], "b": batch["b"]}
    for k in ("read_info", "core_info", "spec_info", "fuse_info"):
        out[k] = batch[k] if k in batch else np.array(["{}"] * n)
    return out


class PortableCatalog(Catalog):
    """A ``Catalog`` that travels to Ray workers with its picture MD5s: a plain one reloads them from a derived
    file, which a worker on another node may not have (the cache folder is per machine)."""

    @classmethod
    def of(cls, catalog: Catalog) -> PortableCatalog:
        out = cls(catalog.index)
        out._md5 = catalog.md5
        return out

    def __getstate__(self) -> dict:
        return {"index": self.index, "md5": self._md5}

    def __setstate__(self, state: dict) -> None:
        Catalog.__init__(self, state["index"])
        self._md5 = state["md5"]


# ---------------------------------------------------------------------------------------------
# the statistics the driver gathers


@dataclass
class StageStats:
    chunks: int = 0
    worked: int = 0           # chunks where the stage had work (not found done)
    products: int = 0         # products of those chunks
    pictures: int = 0
    busy_s: float = 0.0       # summed over workers
    peak_rss_mb: float = 0.0  # largest worker
    nodes: set = field(default_factory=set)

    def add(self, info: dict, products: int, worked: bool) -> None:
        self.chunks += 1
        if worked:
            self.worked += 1
            self.products += products
            self.busy_s += float(info.get("s", 0.0))
        self.pictures += int(info.get("pictures", 0))
        self.peak_rss_mb = max(self.peak_rss_mb, float(info.get("rss_mb", 0.0)))
        if info.get("node"):
            self.nodes.add(info["node"])

    def row(self) -> dict:
        rate = self.products / self.busy_s if self.busy_s else None
        return {"chunks": self.chunks, "chunks_worked": self.worked, "products": self.products,
                "pictures": self.pictures, "busy_s": self.busy_s, "products_per_busy_s": rate,
                "pictures_per_busy_s": self.pictures / self.busy_s if self.busy_s and self.pictures else None,
                "peak_worker_rss_mb": self.peak_rss_mb, "nodes": len(self.nodes)}


@dataclass
class RunStats:
    """What a Ray run did: per stage (read, core, specialists, fusion) its chunks, products, busy seconds
    (summed over workers: products per busy second is one worker's rate) and peak worker memory; the
    start-up and stop of Ray, the pipeline's wall time, the layout."""

    stages: dict = field(default_factory=lambda: {k: StageStats() for k in ("read", "core", "specialists",
                                                                            "fusion")})
    timings: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)
    read_bytes: int = 0
    specialists: dict = field(default_factory=dict)   # name -> products scored
    failed: dict = field(default_factory=dict)        # name -> chunks failed
    warnings: list = field(default_factory=list)

    def add_row(self, row: dict) -> None:
        a, b = int(row["a"]), int(row["b"])
        n = b - a
        read = json.loads(row.get("read_info") or "{}")
        self.read_bytes += int(read.get("bytes", 0))
        self.stages["read"].add(read, n, bool(read.get("bytes")))
        core = json.loads(row.get("core_info") or "{}")
        if core:
            self.stages["core"].add(core, n, bool(core.get("pictures")))
        spec = json.loads(row.get("spec_info") or "{}")
        if spec:
            self.stages["specialists"].add(spec, n, bool(spec.get("scored")))
            for k, v in spec.get("scored", {}).items():
                self.specialists[k] = self.specialists.get(k, 0) + int(v)
            for k, v in spec.get("failed", {}).items():
                self.failed[k] = self.failed.get(k, 0) + int(v)
            self.warnings += [w for w in spec.get("warnings", []) if w not in self.warnings]
        fuse = json.loads(row.get("fuse_info") or "{}")
        if fuse:
            self.stages["fusion"].add(fuse, n, bool(fuse.get("fused")))

    def as_dict(self) -> dict:
        return {"stages": {k: v.row() for k, v in self.stages.items()}, "timings": self.timings,
                "layout": self.layout, "read_bytes": self.read_bytes, "specialists": self.specialists,
                "failed_chunks": self.failed, "peak_driver_rss_mb": _rss_mb()}

    def log_lines(self) -> list[str]:
        out = []
        for name, s in self.stages.items():
            if not s.chunks:
                continue
            r = s.row()
            rate = f"{r['products_per_busy_s']:,.0f} products/s per worker" if r["products_per_busy_s"] else "nothing to do"
            if r["pictures_per_busy_s"]:
                rate += f" ({r['pictures_per_busy_s']:,.0f} pictures/s)"
            out.append(f"ray {name}: {s.worked}/{s.chunks} chunks worked, {s.products:,} products, {s.busy_s:.1f} s "
                       f"busy; {rate}; peak worker memory {s.peak_rss_mb:,.0f} MB on {len(s.nodes)} node(s)")
        t = self.timings
        out.append(f"ray: start {t.get('start_s', 0):.1f} s, pipeline {t.get('pipeline_s', 0):.1f} s, stop "
                   f"{t.get('stop_s', 0):.1f} s; peak driver memory {_rss_mb():,.0f} MB")
        return out


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


def _drain(ds, total: int, desc: str, stats: RunStats, progress: bool) -> None:
    try:
        with progress_bar(total=total, unit="product", desc=desc, enabled=progress) as bar:
            for row in ds.iter_rows():
                stats.add_row(row)
                bar.update(int(row["b"]) - int(row["a"]))
    except Exception as exc:  # noqa: BLE001 - re-raised, as the etalage error inside when there is one
        inner = _unwrap(exc)
        if inner is not exc:
            raise inner from None
        raise


def _log_stats(stats: RunStats, work: Path | None) -> None:
    for line in stats.log_lines():
        log.debug(line)
    if work is not None:
        from etalage.files import write_json_atomic

        write_json_atomic(Path(work) / "ray_stats.json", stats.as_dict())


# ---------------------------------------------------------------------------------------------
# the jobs


def predict_file_ray(plan, data: str | Path, work: WorkDir, shard: tuple[int, int] = (0, 1),
                     command: str = "etalage submit", ocr_cache: str | Path | None = None, device: str = "auto",
                     batch_size: int = 64, workers: int | None = None, chunk: int = DEFAULT_CHUNK,
                     trust_pickle: bool = False, progress: bool = True, ray: RaySettings | None = None) -> bool:
    """``predict_file`` on Ray: stages 1-4 for shard ``i/n`` of ``data`` into ``work``, the same part files.
    True when every chunk of every shard is fused (the merge can run)."""
    from etalage.fusion.model import FusionModel
    from etalage.pipeline.cores import CoreJob, part_done
    from etalage.pipeline.stages import fusion_state, open_prediction_job, training_signals

    settings = ray or RaySettings()
    data, taxonomy, label, catalog, train = open_prediction_job(plan, data, work, shard, chunk, progress)
    kw = dict(device=device, batch_size=batch_size, workers=0, trust_pickle=trust_pickle)
    core = CoreJob.of_models(plan.models, work.core, work.core_run, plan.topk, plan.tta, bool(plan.neighbours), kw,
                             command, chunk)
    core.claim(catalog)
    chunks = shard_chunk_ranges(len(catalog), chunk, shard)
    names = list(plan.specialist_names)
    need_core = {c for c in chunks if not core.done(c)}
    need_spec = {c for c in chunks if names and not all(part_done(work.specialist(n), c) for n in names)}
    need_fuse = {c for c in chunks if not part_done(work.fused, c)}
    todo = [c for c in chunks if c in need_core or c in need_spec or c in need_fuse]
    stats = RunStats()
    if todo:
        log.info("[2/4] core predictions%s -> %s", label, work.core)
        if names:
            log.info("[3/4] specialists %s%s -> %s", ", ".join(names), label, work.specialists)
        else:
            log.info("[3/4] specialists: none in this fusion model")
        log.info("[4/4] fusion%s -> %s (on Ray: the stages run at once, chunk by chunk)", label, work.fused)
        signals = training_signals(train, taxonomy, plan.ks)
        FusionModel.load(plan.model)  # a damaged model is an error here, before any cluster work
        portable = PortableCatalog.of(catalog)
        state = fusion_state(plan, work, portable, train, taxonomy, signals, load=False)
        spec_job = None
        if names:
            spec_job = SpecialistsJob(plan.specialists, names, Path(ocr_cache) if ocr_cache else None, portable,
                                      taxonomy, work.core, work.specialists, command, chunk)
        t0 = time.perf_counter()
        with ray_session(settings, stats.timings) as rt:
            layout = Layout.of_cluster(rt, device, settings.layout)
            stats.layout = asdict(layout)
            log.debug("ray layout: %s", stats.layout)
            ds = _read_dataset(rt, catalog, todo, need_core, layout)
            if need_core:
                ds = _core_stage(ds, core, portable, layout)
            else:
                ds = ds.map_batches(pass_rows, batch_size=1, batch_format="numpy", num_cpus=layout.read_cpus)
            if spec_job is not None and (need_spec or need_core):
                ds = ds.map_batches(SpecialistsActor, fn_constructor_kwargs={"job": spec_job,
                                                                             "threads": layout.specialist_threads},
                                    batch_size=1, batch_format="numpy",
                                    compute=rt.data.ActorPoolStrategy(size=layout.specialist_actors),
                                    **_remote(layout.specialist_cpus))
            ref = rt.put(state)
            ds = ds.map_batches(fuse_rows, fn_kwargs={"state_ref": [ref]}, batch_size=1, batch_format="numpy",
                                compute=rt.data.TaskPoolStrategy(size=layout.fusion_tasks),
                                **_remote(layout.fusion_cpus))
            t1 = time.perf_counter()
            _drain(ds, sum(b - a for a, b in todo), "submit (ray)", stats, progress)
            stats.timings["pipeline_s"] = time.perf_counter() - t1
        stats.timings["total_s"] = time.perf_counter() - t0
        for name in names:
            failed = stats.failed.get(name, 0)
            note = f", failed on {failed} chunk(s) (retried by the next run)" if failed else ""
            log.info("      %s: %d products scored%s", name, stats.specialists.get(name, 0), note)
        _warn_back(stats.warnings)
        _log_stats(stats, work.path)
    else:
        log.info("[2-4/4] every chunk%s is done in %s", label, work)
    done = set(list_parts(work.fused))
    return all(c in done for c in chunk_ranges(len(catalog), chunk))


def _warn_back(messages: list[str]) -> None:
    import warnings

    for m in messages:
        warnings.warn(m, UserWarning, stacklevel=3)


def _read_dataset(rt, catalog: Catalog, todo: list[tuple[int, int]], need_core: set, layout: Layout):
    from etalage.core.predict import chunk_extent

    rows = [(a, b, *chunk_extent(catalog, (a, b)), (a, b) in need_core) for a, b in todo]
    return rt.data.read_datasource(_chunk_source(Path(catalog.path), rows), override_num_blocks=len(rows),
                                   num_cpus=layout.read_cpus)


def _core_stage(ds, job, catalog: Catalog, layout: Layout):
    from ray.data import ActorPoolStrategy

    return ds.map_batches(CoreActor, fn_constructor_kwargs={"job": job, "catalog": catalog,
                                                            "threads": layout.core_threads},
                          batch_size=1, batch_format="numpy", compute=ActorPoolStrategy(size=layout.core_actors),
                          **_remote(layout.core_cpus, layout.core_gpus))


def run_core_job(job, catalog: Catalog, shard: tuple[int, int], desc: str, device: str = "auto",
                 progress: bool = True, settings: RaySettings | None = None) -> RunStats:
    """A ``CoreJob`` (claimed) on Ray: read tasks and core actors over the chunks of shard ``i/n`` not done."""
    settings = settings or RaySettings()
    todo = [c for c in shard_chunk_ranges(len(catalog), job.chunk, shard) if not job.done(c)]
    stats = RunStats()
    if not todo:
        return stats
    t0 = time.perf_counter()
    with ray_session(settings, stats.timings) as rt:
        layout = Layout.of_cluster(rt, device, settings.layout)
        stats.layout = asdict(layout)
        ds = _core_stage(_read_dataset(rt, catalog, todo, set(todo), layout), job, PortableCatalog(catalog.index),
                         layout)
        t1 = time.perf_counter()
        _drain(ds, sum(b - a for a, b in todo), desc, stats, progress)
        stats.timings["pipeline_s"] = time.perf_counter() - t1
    stats.timings["total_s"] = time.perf_counter() - t0
    _log_stats(stats, None)
    return stats


def predict_models_ray(models, catalog: Catalog, core_dir: Path, run_dir, chunk: int, topk: int, tta: str,
                       embedding: bool, kw: dict, producer: str, progress: bool, settings: RaySettings | None = None
                       ) -> None:
    """``predict_models`` (every product of ``catalog``) on Ray: the same folders and parts."""
    from etalage.pipeline.cores import CoreJob

    job = CoreJob.of_models(models, core_dir, run_dir, topk, tta, embedding, {**kw, "workers": 0}, producer, chunk)
    job.claim(catalog)
    run_core_job(job, catalog, (0, 1), f"predict {Path(catalog.path).name} (ray)", kw.get("device", "auto"),
                 progress, settings)


def predict_core_ray(run: str | Path, data: str | Path, out: str | Path, topk: int = 20, picture_topk: int = 5,
                     tta: str = "none", shard: tuple[int, int] = (0, 1), embedding: bool = False,
                     batch_size: int = 64, device: str = "auto", compile: bool = False, trust_pickle: bool = False,
                     chunk: int = DEFAULT_CHUNK, progress: bool = True, ray: RaySettings | None = None):
    """``etalage predict`` on Ray: read tasks and core actors over the chunks of shard ``i/n`` not done yet,
    into the same ``out/part-*.npz``. Returns the ``CoreRanking`` when every shard is done, else None."""
    from etalage.core.ranking import CoreRanking
    from etalage.core.rundir import RunDir
    from etalage.errors import StageOutputError
    from etalage.pipeline.cores import CoreJob, CoreTarget

    catalog = Catalog.open(data, progress=progress)
    kw = dict(device=device, batch_size=batch_size, workers=0, trust_pickle=trust_pickle, compile=compile)
    job = CoreJob([CoreTarget(RunDir(run), Path(out), embedding)], None, Path(out), None, topk, picture_topk, tta, kw,
                  None, chunk)  # no producer: as the local engine's stamp
    job.claim(catalog)
    run_core_job(job, catalog, shard, f"predict {Path(data).name} (ray)", device, progress, ray)
    try:
        return CoreRanking.load(out)
    except StageOutputError:
        return None


# ---------------------------------------------------------------------------------------------
# etalage ocr


class OcrActor:
    """An OCR engine loaded once per actor; reads batches of pictures (md5, position, picture number) and
    returns what it read (the driver alone writes the cache)."""

    def __init__(self, engine_name, options: dict, catalog: Catalog, threads: int):
        self.engine_name, self.options, self.catalog, self.threads = engine_name, options, catalog, threads
        self.engine = None

    def __call__(self, batch: dict) -> dict:
        import pickle

        from etalage.ocr.pictures import product_pictures

        if self.engine is None:
            import torch

            from etalage.ocr.base import load_engine

            torch.set_num_threads(self.threads)
            self.engine = load_engine(self.engine_name, **self.options)
        out = []
        for jobs in batch["jobs"]:
            jobs = pickle.loads(jobs)
            t0 = time.perf_counter()
            pp = product_pictures(self.catalog, [pos for _, pos, _ in jobs], only=[k for _, _, k in jobs])
            done = list(zip(pp.md5, self.engine.read(pp.pictures), strict=True))
            out.append(pickle.dumps({"done": done, "unreadable": pp.unreadable, "s": time.perf_counter() - t0,
                                     "rss_mb": _rss_mb()}))
        return {"result": np.array(out, dtype=object)}


def read_pictures_ray(catalog: Catalog, todo: list[tuple[bytes, int, int]], engine_name, engine_options: dict,
                      batch: int, cache, cache_key: str, summary, progress: bool, settings: RaySettings,
                      workers: int | None = None) -> dict:
    """``etalage ocr``'s reading on Ray: batches of pictures to an actor pool of engines; results written to
    the cache by the driver as they come (a killed run keeps what was written). Returns the run's timings."""
    import pickle

    timings: dict = {}
    batches = [pickle.dumps(todo[i:i + batch]) for i in range(0, len(todo), batch)]
    t0 = time.perf_counter()
    busy = 0.0
    with ray_session(settings, timings) as rt:
        layout = Layout.of_cluster(rt, "cpu", settings.layout)
        actors = workers or max(1, int(layout.cpus // 2))
        threads = max(1, int(layout.cpus // layout.nodes) // max(1, actors // layout.nodes))
        ds = rt.data.from_items([{"jobs": b} for b in batches], override_num_blocks=len(batches))
        ds = ds.map_batches(OcrActor, fn_constructor_kwargs={"engine_name": engine_name, "options": engine_options,
                                                             "catalog": PortableCatalog.of(catalog),
                                                             "threads": threads},
                            batch_size=1, batch_format="numpy", compute=rt.data.ActorPoolStrategy(size=actors),
                            num_cpus=min(1.0, max(0.1, (layout.cpus - 0.5) / actors)))
        t1 = time.perf_counter()
        try:
            with progress_bar(total=len(todo), unit="picture", desc=f"ocr {engine_name or 'default'} (ray)",
                              enabled=progress) as bar:
                for row in ds.iter_rows():
                    res = pickle.loads(row["result"])
                    cache.put_many(res["done"], cache_key)
                    busy += res["s"]
                    summary.read += len(res["done"])
                    summary.unreadable += len(res["unreadable"])
                    for pid, k in res["unreadable"]:
                        log.warning("unreadable picture %d of product %d skipped", k, pid)
                        if len(summary.unreadable_examples) < 20:
                            summary.unreadable_examples.append((pid, k))
                    bar.update(len(res["done"]) + len(res["unreadable"]))
        except Exception as exc:  # noqa: BLE001
            inner = _unwrap(exc)
            if inner is not exc:
                raise inner from None
            raise
        timings["pipeline_s"] = time.perf_counter() - t1
    timings["total_s"] = time.perf_counter() - t0
    log.debug("ray ocr: %d pictures, %.1f s busy over %d actor(s) (%.2f pictures/s per actor); start %.1f s, "
              "pipeline %.1f s, stop %.1f s", summary.read, busy, actors, summary.read / busy if busy else 0,
              timings.get("start_s", 0), timings.get("pipeline_s", 0), timings.get("stop_s", 0))
    return timings
