"""``etalage ocr``: fill the OCR cache for the products of some level-1 groups of a BSON dump.

Training files choose products by their label, test files by a core prediction (the share of
level-1 probability on the groups, or the top class's group). Each distinct picture (by MD5) is
read once; pictures already in the cache are skipped, so a killed run resumes where it stopped
(results are committed batch by batch). Corrupt pictures are logged with their product id, counted
and skipped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.bsonindex import hash_pictures, load_md5, md5_path_for
from etalage.catalog.pictures import CorruptPicture, decode_picture

from etalage.errors import ConfigError, DataError

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
                    threshold: float = 0.3) -> np.ndarray:
    """Positions of the products that belong (by label) or likely belong (by prediction) to ``groups``."""
    group_ids = [taxonomy.level1_index(g) for g in groups]
    if catalog.has_labels and predictions is None:
        l1 = taxonomy.level1_of[taxonomy.indices_of(catalog.category_ids)]
        return np.flatnonzero(np.isin(l1, group_ids))
    if predictions is None:
        raise ConfigError(f"{catalog.path} has no labels: pass --predictions PRED (from `etalage predict`) "
                          f"to choose its {', '.join(groups)} products")
    from etalage.core.predict import CoreRanking

    ranking = CoreRanking.load(predictions)
    if not np.array_equal(ranking.product_ids, catalog.product_ids):
        raise DataError(f"{predictions}: predictions are for another file than {catalog.path}")
    mass = ranking.level1_prob[:, group_ids].astype(np.float32).sum(1)
    top_group = np.isin(taxonomy.level1_of[ranking.top1()], group_ids)
    return np.flatnonzero((mass >= threshold) | top_group)


_WORKER: dict = {}


def _init_worker(engine_name: str, options: dict, catalog: Catalog, threads: int) -> None:
    import torch
    from etalage.ocr.base import load_engine

    torch.set_num_threads(threads)
    _WORKER.update(engine=load_engine(engine_name, **options), catalog=catalog)


def _read_batch(jobs: list[tuple[bytes, int, int]]) -> tuple[list[tuple[bytes, list]], list[tuple[int, int]]]:
    """Decode and read one batch of (md5, position, picture number); returns results and corrupt ones."""
    catalog, engine = _WORKER["catalog"], _WORKER["engine"]
    pictures, keys, corrupt = [], [], []
    for md5, pos, k in jobs:
        data = catalog.picture_bytes(pos)[k]
        try:
            pic = decode_picture(data)
            if min(pic.shape[:2]) < 8:
                raise CorruptPicture("too small")
        except CorruptPicture:
            corrupt.append((int(catalog.product_ids[pos]), k))
            continue
        pictures.append(pic)
        keys.append(md5)
    return list(zip(keys, engine.read(pictures), strict=True)), corrupt


def run_ocr(data: str | Path, engine_name: str, groups: list[str], cache_path: str | Path,
            taxonomy: Taxonomy, predictions: str | None = None, threshold: float = 0.3, workers: int = 1,
            batch: int = 32, engine_options: dict | None = None, progress: bool = True) -> OcrRunSummary:
    from etalage.ocr.base import load_engine
    from etalage.ocr.cache import OcrCache
    from tqdm import tqdm

    engine_options = engine_options or {}
    catalog = Catalog.open(data, progress=progress)
    positions = select_products(catalog, taxonomy, groups, predictions, threshold)
    md5 = load_md5(data) if md5_path_for(data).exists() else hash_pictures(data, index=catalog.index)
    first = catalog.index.products["first_picture"]
    unique: dict[bytes, tuple[int, int]] = {}
    for pos in positions:
        for k in range(int(catalog.n_pictures[pos])):
            unique.setdefault(md5[first[pos] + k].tobytes(), (int(pos), k))
    probe = load_engine(engine_name, **engine_options)  # fails early on missing weights or binaries
    key = probe.cache_key
    summary = OcrRunSummary(products=len(positions), pictures=len(unique), engine=key, cache=str(cache_path))
    with OcrCache(cache_path) as cache:
        cached = cache.get_many(list(unique), key)
        summary.already_cached = len(cached)
        todo = [(m, *where) for m, where in unique.items() if m not in cached]
        batches = [todo[i:i + batch] for i in range(0, len(todo), batch)]
        bar = tqdm(total=len(todo), unit="picture", desc=f"ocr {engine_name}", disable=not progress, leave=False)
        if workers <= 1:
            _WORKER.update(engine=probe, catalog=catalog)
            results = map(_read_batch, batches)
            pool = None
        else:
            import multiprocessing as mp

            threads = max(1, (os.cpu_count() or 1) // workers)
            pool = mp.get_context("fork").Pool(workers, _init_worker, (engine_name, engine_options, catalog, threads))
            results = pool.imap(_read_batch, batches)
        try:
            for done, corrupt in results:
                cache.put_many(done, key)
                summary.read += len(done)
                summary.unreadable += len(corrupt)
                for pid, k in corrupt:
                    log.warning("unreadable picture %d of product %d skipped", k, pid)
                    if len(summary.unreadable_examples) < 20:
                        summary.unreadable_examples.append((pid, k))
                bar.update(len(done) + len(corrupt))
        finally:
            bar.close()
            if pool is not None:
                pool.close()
                pool.join()
    return summary

