"""``etalage ocr``: fill the OCR cache for the products of some level-1 groups of a BSON dump.

Training files choose products by their label, test files by the core's routing rule on its
predictions (``CoreRanking.routed_to``). Each distinct picture (by MD5) is read once; pictures already
in the cache are skipped, so a killed run resumes where it stopped (results are committed batch by
batch), and when every picture is cached the engine is not even loaded. Corrupt pictures are logged
with their product id, counted and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog, Taxonomy
from etalage.chunks import chunk_ranges
from etalage.compute import Compute
from etalage.core.ranking import ROUTING_THRESHOLD, CoreRanking
from etalage.errors import ConfigError, DataError
from etalage.ocr.cache import OcrCache, default_cache_path
from etalage.ocr.pictures import product_pictures
from etalage.pipeline.engine import Engine, LocalEngine, Stage

log = logging.getLogger(__name__)


@dataclass
class OcrRunSummary:
    products: int = 0
    pictures: int = 0          # distinct pictures of the selected products
    already_cached: int = 0
    read: int = 0
    unreadable: int = 0
    unreadable_examples: list[tuple[int, int]] = field(default_factory=list)  # (product id, picture number)
    engine: str = ""
    cache: str = ""

    def add(self, payload: dict) -> None:
        """One batch's reading: what was read, what could not be decoded (logged with its product)."""
        self.read += len(payload["done"])
        self.unreadable += len(payload["unreadable"])
        for pid, k in payload["unreadable"]:
            log.warning("unreadable picture %d of product %d skipped", k, pid)
            if len(self.unreadable_examples) < 20:
                self.unreadable_examples.append((pid, k))


@dataclass
class OcrJob:
    """What ``etalage ocr`` reads: the products of the level-1 ``groups`` (by label, or by the core's routing
    rule on ``predictions`` for a dump without labels, with ``threshold``), read by the OCR engine
    ``engine_name`` (None: the default reading) with ``engine_options``, ``batch_size`` pictures per engine
    call, into the cache at ``cache_path`` (None: the default beside the dump)."""

    groups: list[str]
    engine_name: str | None = None
    engine_options: dict = field(default_factory=dict)
    cache_path: Path | None = None
    predictions: Path | None = None
    threshold: float = ROUTING_THRESHOLD
    batch_size: int = 32


def select_products(catalog: Catalog, taxonomy: Taxonomy, groups: list[str], predictions: str | None = None,
                    threshold: float = ROUTING_THRESHOLD) -> np.ndarray:
    """Positions of the products that belong (by label) or are routed (by the core's predictions) to
    ``groups``."""
    group_ids = [taxonomy.level1_index(g) for g in groups]
    if catalog.has_labels and predictions is None:
        l1 = taxonomy.level1_of[taxonomy.indices_of(catalog.category_ids)]
        return np.flatnonzero(np.isin(l1, group_ids))
    if predictions is None:
        raise ConfigError(f"{catalog.path} has no labels: pass --predictions PRED (from `etalage predict`) "
                          f"to choose its {', '.join(groups)} products")
    ranking = CoreRanking.load(predictions)
    if not np.array_equal(ranking.product_ids, catalog.product_ids):
        raise DataError(f"{predictions}: predictions are for another file than {catalog.path}")
    return np.flatnonzero(ranking.routed_to(group_ids, taxonomy.level1_of, threshold))


class OcrStage(Stage):
    """Reading pictures: chunk ``a..b`` is pictures ``a..b`` of the job's list of (MD5, product position,
    picture number), decoded and read by the OCR engine (loaded once per worker); what was read goes back to
    the job (``payload``), whose process alone writes the cache."""

    name = "ocr"
    forked = True
    unit = "picture"

    def __init__(self, catalog: Catalog, todo: list[tuple[bytes, int, int]], engine_name: str | None, options: dict):
        self.catalog, self.todo_list, self.engine_name, self.options = catalog, todo, engine_name, options
        self.engine, self.engine_pid = None, -1

    def todo(self, rows, upstream: dict) -> bool:
        return True  # the job leaves out what the cache holds

    def _engine(self):
        """This process's own engine: one inherited through a fork would share ONNX Runtime's and torch's
        thread pools with its parent, which do not survive a fork."""
        import os

        if self.engine is None or self.engine_pid != os.getpid():
            from etalage.ocr import load_engine

            self.engine, self.engine_pid = load_engine(self.engine_name, **self.options), os.getpid()
        return self.engine

    def run(self, rows, chunk=None) -> dict:
        jobs = self.todo_list[rows[0]:rows[1]]
        pp = product_pictures(self.catalog, [pos for _, pos, _ in jobs], only=[k for _, _, k in jobs])
        done = list(zip(pp.md5, self._engine().read(pp.pictures), strict=True))
        return {"pictures": len(done), "payload": {"done": done, "unreadable": pp.unreadable}}

    def close(self) -> None:
        self.engine = None


def run_ocr(data: str | Path, taxonomy: Taxonomy, job: OcrJob, compute: Compute | None = None,
            engine: Engine | None = None) -> OcrRunSummary:
    """Read the distinct pictures of the job's products of ``data`` that the cache lacks, on ``engine``
    (default: this machine, ``compute.workers`` forked readers); the job's process alone writes the cache."""
    from etalage.ocr import load_engine

    compute = compute or Compute()
    engine = engine or LocalEngine(compute.progress, compute.workers or 1)
    catalog = Catalog.open(data, md5=True, progress=compute.progress, cache_dir=compute.cache_dir)
    cache_path = Path(job.cache_path) if job.cache_path else default_cache_path(data, compute.cache_dir)
    positions = select_products(catalog, taxonomy, job.groups, job.predictions, job.threshold)
    md5 = catalog.md5
    first = catalog.index.products["first_picture"]
    unique: dict[bytes, tuple[int, int]] = {}
    for pos in positions:
        for k in range(int(catalog.n_pictures[pos])):
            unique.setdefault(md5[first[pos] + k].tobytes(), (int(pos), k))
    reader = load_engine(job.engine_name, **job.engine_options)  # cheap: networks load on the first read
    summary = OcrRunSummary(products=len(positions), pictures=len(unique), engine=reader.cache_key,
                            cache=str(cache_path))
    with OcrCache(cache_path) as cache:
        cached = cache.get_many(list(unique), reader.cache_key)
        summary.already_cached = len(cached)
        todo = [(m, *where) for m, where in unique.items() if m not in cached]
        if not todo:
            return summary  # nothing to read: the networks are never loaded

        def write(stage, rows, report) -> None:  # batch by batch: a killed run keeps what was read
            cache.put_many(report["payload"]["done"], reader.cache_key)
            summary.add(report["payload"])

        stage = OcrStage(catalog, todo, job.engine_name, job.engine_options)
        engine.run([stage], chunk_ranges(len(todo), job.batch_size), f"ocr {job.engine_name or 'default'}", write
                   ).save(None)
    return summary
