"""Validation split: which training products the core holds out (and fusion later trains on)."""

from __future__ import annotations

import numpy as np

from etalage.errors import ConfigError


def validation_split(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask (True = validation) over products, stratified by class and deterministic.

    Each class contributes ``round(fraction * size)`` of its products, chosen by a seeded random
    order, so rare classes are not emptied and the same (labels, fraction, seed) always gives the
    same split. Classes with a single product stay in training.
    """
    labels = np.asarray(labels)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(labels)
    if n == 0 or fraction == 0.0:
        return np.zeros(n, bool)
    key = np.random.default_rng(seed).random(n)
    order = np.lexsort((key, labels))
    sorted_labels = labels[order]
    group_start = np.r_[0, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1]
    sizes = np.diff(np.r_[group_start, n])
    rank = np.arange(n) - np.repeat(group_start, sizes)
    take = np.repeat(np.where(sizes > 1, np.floor(fraction * sizes + 0.5), 0), sizes)
    mask = np.zeros(n, bool)
    mask[order[rank < take]] = True
    return mask


def fold_split(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """The fold (0..folds-1, int16) of every product: stratified by class and deterministic.

    Within each class the products are taken in a seeded random order and dealt to the folds in turn,
    starting at a seeded random fold per class, so every fold holds about 1/folds of every class (a
    class with fewer products than folds is in as many folds as it has products) and the same (labels,
    folds, seed) always gives the same folds. Fold runs (``etalage train --folds K --fold i``) hold fold
    i out; together they predict every training product with a model that never saw it.
    """
    labels = np.asarray(labels)
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}")
    n = len(labels)
    rng = np.random.default_rng([seed, 7])
    key = rng.random(n)
    order = np.lexsort((key, labels))
    sorted_labels = labels[order]
    group_start = np.r_[0, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1] if n else np.zeros(0, int)
    sizes = np.diff(np.r_[group_start, n])
    rank = np.arange(n) - np.repeat(group_start, sizes)
    offset = np.repeat(rng.integers(0, folds, len(sizes)), sizes)
    out = np.empty(n, np.int16)
    out[order] = (rank + offset) % folds
    return out


# ---------------------------------------------------------------------------------------------
# splits that keep near-duplicate products together: photos taken in one session (same shelf, light and
# angle) look alike, and a validation part that shares sessions with training scores what was learnt by
# heart (GroceryStore: 0.977 on photos of the training sessions, 0.669 on its official val sessions)


def near_duplicate_groups(features: np.ndarray, threshold: float, labels: np.ndarray | None = None,
                          chunk: int = 2048) -> np.ndarray:
    """The group (0..G-1, int64) of every product: connected components of the graph that links two products
    when the cosine similarity of their ``features`` is at least ``threshold`` (a chain of look-alikes is one
    group) and, with ``labels``, they are of one class: a look-alike of another class does not flatter a
    validation score (it misleads it as it will mislead at test), and without that condition a chain
    through similar classes grows into one group too large to hold out (on GroceryStore at 0.8: 1,151 of
    2,640 products, against 70 at most within classes). Exact, in blocks of ``chunk`` rows."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = np.asarray(features, np.float32)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    kinds = np.zeros(n, np.int64) if labels is None else np.unique(labels, return_inverse=True)[1].reshape(-1)
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for members in np.split(np.argsort(kinds, kind="stable"), np.flatnonzero(np.diff(np.sort(kinds))) + 1):
        for a in range(0, len(members), chunk):  # the upper triangle is enough: the graph is undirected
            i, j = np.nonzero(x[members[a:a + chunk]] @ x[members[a:]].T >= threshold)
            keep = i < j
            rows.append(members[a + i[keep]])
            cols.append(members[a + j[keep]])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def grouped_validation_split(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask (True = validation) that holds out whole ``groups``, stratified by class as far as the
    groups allow, and deterministic.

    Each class wants ``round(fraction * size)`` of its products (none of a single-product class), as
    ``validation_split``. Groups are visited in a seeded random order and one is held out when that brings
    the classes it holds closer to what they want (the sum over its classes of the distance to the target
    shrinks), so a group larger than twice what its class still wants stays in training. With every group
    a single product this is a stratified random split."""
    labels, groups = np.asarray(labels), np.asarray(groups, np.int64)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(labels)
    mask = np.zeros(n, bool)
    if n == 0 or fraction == 0.0:
        return mask
    classes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(classes)
    want = np.where(sizes > 1, np.floor(fraction * sizes + 0.5), 0).astype(np.int64)
    by_group = np.argsort(groups, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(groups[by_group])) + 1, n]
    for g in np.random.default_rng([seed, 11]).permutation(len(starts) - 1):
        members = by_group[starts[g]:starts[g + 1]]
        cls, count = np.unique(classes[members], return_counts=True)
        left = want[cls]
        if np.abs(left - count).sum() < np.abs(left).sum():
            want[cls] -= count
            mask[members] = True
    return mask

