"""Kaggle-format CSVs (``_id,category_id``): submissions, answer keys, and product top-1 scoring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog.csvrows import csv_rows, parse_int
from etalage.catalog.taxonomy import Taxonomy
from etalage.errors import DataError
from etalage.files import atomic_write

HEADER = ("_id", "category_id")


def read_id_category_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``_id,category_id`` rows -> (ids int64, category ids int64); bad rows name their line, an
    empty file (a header alone) and a repeated product are errors."""
    path = Path(path)
    rows = csv_rows(path, "submission")
    if not rows or tuple(h.strip() for h in rows[0][1][:2]) != HEADER or rows[0][0] != 1:
        raise DataError(f"{path}: line 1: expected header _id,category_id")
    ids, cats = [], []
    for line_no, rec in rows[1:]:
        if len(rec) < 2:
            raise DataError(f"{path}: line {line_no}: expected two integers, got {','.join(rec)!r}")
        ids.append(parse_int(rec[0], path, line_no, "_id"))
        cats.append(parse_int(rec[1], path, line_no, "category_id"))
    if not ids:
        raise DataError(f"{path}: no products after the header")
    ids_a, cats_a = np.array(ids, np.int64), np.array(cats, np.int64)
    uniq, counts = np.unique(ids_a, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[counts > 1][0])
        lines = [n for (n, r), v in zip(rows[1:], ids, strict=True) if v == dup]
        raise DataError(f"{path}: product {dup} appears more than once (lines {', '.join(map(str, lines[:5]))})")
    return ids_a, cats_a


def write_submission(path: str | Path, product_ids: np.ndarray, category_ids: np.ndarray,
                     expected_ids: np.ndarray | None = None, taxonomy: Taxonomy | None = None) -> None:
    """Validate and atomically write a submission: every expected product once, in the given order,
    each with a category of the taxonomy."""
    product_ids = np.asarray(product_ids, np.int64)
    category_ids = np.asarray(category_ids, np.int64)
    if len(product_ids) != len(category_ids):
        raise DataError(f"{path}: {len(product_ids)} products but {len(category_ids)} categories")
    if expected_ids is not None:
        expected_ids = np.asarray(expected_ids, np.int64)
        if len(expected_ids) != len(product_ids) or not np.array_equal(expected_ids, product_ids):
            missing = np.setdiff1d(expected_ids, product_ids)
            detail = f"product {int(missing[0])} is missing" if missing.size else "products differ or are out of order"
            raise DataError(f"{path}: submission does not cover the test file exactly once: {detail}")
    uniq, counts = np.unique(product_ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: product {int(uniq[counts > 1][0])} appears more than once")
    if taxonomy is not None:
        taxonomy.indices_of(category_ids)
    with atomic_write(path, "w", newline="") as fh:
        fh.write("_id,category_id\n")
        fh.writelines(f"{p},{c}\n" for p, c in zip(product_ids.tolist(), category_ids.tolist(), strict=True))


@dataclass
class Score:
    accuracy: float
    n: int
    per_level1: dict[str, tuple[float, int]]  # level-1 name -> (accuracy, products)


def score_submission(submission: str | Path, labels: str | Path, taxonomy: Taxonomy | None = None) -> Score:
    """Product top-1 accuracy of ``submission`` against the answer key ``labels``.

    Every labelled product must be in the submission (a missing one is an error, as on Kaggle);
    per level-1 group figures need the taxonomy.
    """
    sub_ids, sub_cats = read_id_category_csv(submission)
    lab_ids, lab_cats = read_id_category_csv(labels)
    order = np.argsort(sub_ids)
    pos = np.searchsorted(sub_ids[order], lab_ids).clip(0, max(len(sub_ids) - 1, 0))
    if len(sub_ids) == 0 or (sub_ids[order][pos] != lab_ids).any():
        missing = lab_ids if len(sub_ids) == 0 else lab_ids[sub_ids[order][pos] != lab_ids]
        raise DataError(f"{submission}: product {int(missing[0])} of {labels} has no prediction")
    pred = sub_cats[order][pos]
    correct = pred == lab_cats
    per_level1 = {}
    if taxonomy is not None:
        l1 = taxonomy.level1_of[taxonomy.indices_of(lab_cats)]
        for g in np.unique(l1):
            m = l1 == g
            per_level1[taxonomy.level1_names[g]] = (float(correct[m].mean()), int(m.sum()))
    return Score(float(correct.mean()) if len(correct) else 0.0, len(correct), per_level1)
