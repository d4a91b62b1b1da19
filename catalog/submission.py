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
    pred, found = align_by_id(sub_ids, sub_cats, lab_ids)
    if not found.all():
        raise DataError(f"{submission}: product {int(lab_ids[~found][0])} of {labels} has no prediction")
    correct = pred == lab_cats
    per_level1 = {}
    if taxonomy is not None:
        l1 = taxonomy.level1_of[taxonomy.indices_of(lab_cats)]
        for g in np.unique(l1):
            m = l1 == g
            per_level1[taxonomy.level1_names[g]] = (float(correct[m].mean()), int(m.sum()))
    return Score(float(correct.mean()) if len(correct) else 0.0, len(correct), per_level1)


def align_by_id(ids: np.ndarray, values: np.ndarray, product_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one alignment of ``_id,category_id`` rows with products: ``values`` (one per id of ``ids``,
    in any order, each id once, as ``read_id_category_csv`` returns them) at each of ``product_ids``,
    and whether it has one (``found``; the value is 0 where not)."""
    ids, product_ids, values = np.asarray(ids, np.int64), np.asarray(product_ids, np.int64), np.asarray(values)
    if len(ids) == 0:
        return np.zeros(len(product_ids), values.dtype), np.zeros(len(product_ids), bool)
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], product_ids).clip(0, len(ids) - 1)
    found = ids[order][pos] == product_ids
    return np.where(found, values[order][pos], 0).astype(values.dtype), found


def answer_key_classes(labels: str | Path, product_ids: np.ndarray, taxonomy: Taxonomy,
                       complete: bool = False) -> np.ndarray:
    """The answer key ``labels`` (``_id,category_id``) as the class index of each of ``product_ids``
    (a dump's products, in its order): int32, -1 where the key has no row; with ``complete``, such a
    product is a ``DataError``."""
    ids, cats = read_id_category_csv(labels)
    cats, found = align_by_id(ids, cats, product_ids)
    if complete and not found.all():
        raise DataError(f"{labels}: product {int(np.asarray(product_ids)[~found][0])} has no category_id "
                        f"(the answer key must cover every product)")
    out = np.full(len(found), -1, np.int32)
    out[found] = taxonomy.indices_of(cats[found])
    return out
