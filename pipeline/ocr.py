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
from etalage.core.ranking import ROUTING_THRESHOLD, CoreRanking
from etalage.errors import ConfigError, DataError
from etalage.ocr.cache import OcrCache, default_cache_path
from etalage.ocr.pictures import product_pictures
from etalage.options import RUN_ENGINES, check_choice
from etalage.progress import bar as progress_bar
from etalage.resources import usable_cpus

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


_WORKER: dict = {}


def _init_worker(engine_name: str, options: dict, catalog: Catalog, threads: int) -> None:
    import torch

    from etalage.ocr.base import load_engine

    torch.set_num_threads(threads)
    _WORKER.update(engine=load_engine(engine_name, **options), catalog=catalog)


def _read_batch(jobs: list[tuple[bytes, int, int]]) -> tuple[list[tuple[bytes, list]], list[tuple[int, int]]]:
    """Decode and read one batch of (md5, position, picture number); returns results and unreadable ones."""
    pp = product_pictures(_WORKER["catalog"], [pos for _, pos, _ in jobs], only=[k for _, _, k in jobs])
    return list(zip(pp.md5, _WORKER["engine"].read(pp.pictures), strict=True)), pp.unreadable


def run_ocr(data: str | Path, groups: list[str], taxonomy: Taxonomy, engine_name: str | None = None,
            cache_path: str | Path | None = None, predictions: str | None = None,
            threshold: float = ROUTING_THRESHOLD, workers: int = 1, batch: int = 32,
            engine_options: dict | None = None, progress: bool = True, engine: str = "local",
            ray=None) -> OcrRunSummary:
    """Read the distinct pictures of ``groups``' products of ``data`` that the cache lacks. ``engine``:
    ``local`` (``workers`` forked processes) or ``ray`` (an actor pool of OCR engines on a cluster,
    ``workers`` actors, default one per 2 CPUs; ``ray``: its ``RaySettings``); the driver alone writes the
    cache in both."""
    from etalage.ocr.base import load_engine

    run_engine = check_choice(engine, RUN_ENGINES, "--engine")  # ``engine`` names the OCR engine below

    engine_options = engine_options or {}
    catalog = Catalog.open(data, md5=True, progress=progress)
    cache_path = Path(cache_path) if cache_path else default_cache_path(data)
    positions = select_products(catalog, taxonomy, groups, predictions, threshold)
    md5 = catalog.md5
    first = catalog.index.products["first_picture"]
    unique: dict[bytes, tuple[int, int]] = {}
    for pos in positions:
        for k in range(int(catalog.n_pictures[pos])):
            unique.setdefault(md5[first[pos] + k].tobytes(), (int(pos), k))
    engine = load_engine(engine_name, **engine_options)  # cheap: networks load on the first read
    summary = OcrRunSummary(products=len(positions), pictures=len(unique), engine=engine.cache_key,
                            cache=str(cache_path))
    with OcrCache(cache_path) as cache:
        cached = cache.get_many(list(unique), engine.cache_key)
        summary.already_cached = len(cached)
        todo = [(m, *where) for m, where in unique.items() if m not in cached]
        if not todo:
            return summary  # nothing to read: the networks are never loaded
        if run_engine == "ray":
            from etalage.pipeline.ray_engine import read_pictures_ray

            read_pictures_ray(catalog, todo, engine_name, engine_options, batch, cache, engine.cache_key, summary,
                              progress, ray, workers if workers > 1 else None)
            return summary
        batches = [todo[i:i + batch] for i in range(0, len(todo), batch)]
        if workers <= 1:
            _WORKER.update(engine=engine, catalog=catalog)
            results = map(_read_batch, batches)
            pool = None
        else:
            from etalage.forking import forked_pool

            threads = max(1, usable_cpus() // workers)
            pool = forked_pool(workers, _init_worker, (engine_name, engine_options, catalog, threads))
            results = pool.imap(_read_batch, batches)
        try:
            with progress_bar(total=len(todo), unit="picture", desc=f"ocr {engine.name}", enabled=progress) as bar:
                for done, corrupt in results:
                    cache.put_many(done, engine.cache_key)
                    summary.read += len(done)
                    summary.unreadable += len(corrupt)
                    for pid, k in corrupt:
                        log.warning("unreadable picture %d of product %d skipped", k, pid)
                        if len(summary.unreadable_examples) < 20:
                            summary.unreadable_examples.append((pid, k))
                    bar.update(len(done) + len(corrupt))
            if pool is not None:
                pool.close()  # done: the children leave on their own
        except BaseException:
            if pool is not None:
                pool.terminate()  # an error or Ctrl-C: the queued batches are not read first
            raise
        finally:
            if pool is not None:
                pool.join()
    return summary

