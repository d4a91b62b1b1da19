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
