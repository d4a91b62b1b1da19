"""What ``etalage index`` and ``etalage info`` report about a dump: counts, pictures per product, titles,
the level-1 distribution. The CLI prints these records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etalage.catalog.bsonindex import (
    NO_CATEGORY,
    BsonIndex,
    build_index,
    hash_pictures,
    index_path_for,
    md5_path_for,
)
from etalage.catalog.taxonomy import Taxonomy


@dataclass
class IndexReport:
    path: Path
    index_file: Path
    products: int
    pictures: int
    seconds: float
    md5_file: Path | None = None
    distinct_pictures: int | None = None
    md5_seconds: float | None = None


def index_dump(path: str | Path, taxonomy: Taxonomy | None = None, md5: bool = False, workers: int | None = None,
               progress: bool = False, cache_dir: str | Path | None = None) -> IndexReport:
    """Build the offset index of ``path`` (categories checked against ``taxonomy`` when given) and, with
    ``md5``, hash every picture."""
    t0 = time.perf_counter()
    idx = build_index(path, progress, None if taxonomy is None else taxonomy.category_ids, cache_dir)
    rep = IndexReport(Path(path), index_path_for(path, cache_dir), len(idx.products), len(idx.pictures),
                      time.perf_counter() - t0)
    if md5:
        t0 = time.perf_counter()
        digests = hash_pictures(path, workers=workers, progress=progress, index=idx, cache_dir=cache_dir)
        rep.md5_file, rep.md5_seconds = md5_path_for(path, cache_dir), time.perf_counter() - t0
        rep.distinct_pictures = len(np.unique(digests.view("V16")))
    return rep


@dataclass
class DumpSummary:
    path: Path
    products: int
    pictures: int
    pictures_per_product: dict[int, int]          # picture count -> products
    labelled: bool
    titled: int = 0                               # products with a title
    categories_used: int = 0
    level1: dict[str, int] = field(default_factory=dict)  # level-1 name -> products, most first


def describe_dump(path: str | Path, taxonomy: Taxonomy | None = None, progress: bool = False,
                  cache_dir: str | Path | None = None) -> DumpSummary:
    idx = BsonIndex.open(path, progress=progress, cache_dir=cache_dir)
    prods = idx.products
    n_pics = prods["n_pictures"]
    counts = dict(zip(*(v.tolist() for v in np.unique(n_pics, return_counts=True)), strict=True))
    labelled = prods["category_id"] != NO_CATEGORY
    titled = 0 if idx.titles is None else int((idx.titles["length"] > 0).sum())
    summary = DumpSummary(Path(path), len(prods), int(n_pics.sum()), counts, bool(labelled.any()), titled)
    if not labelled.any():
        return summary
    cats = prods["category_id"][labelled]
    summary.categories_used = len(np.unique(cats))
    if taxonomy is not None:
        l1 = np.bincount(taxonomy.level1_of[taxonomy.indices_of(cats)], minlength=taxonomy.n_level1)
        summary.level1 = {taxonomy.level1_names[g]: int(l1[g]) for g in np.argsort(-l1, kind="stable") if l1[g]}
    return summary
