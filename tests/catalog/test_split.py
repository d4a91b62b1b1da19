import numpy as np
import pytest

from etalage.catalog import validation_split


def test_split_is_deterministic_and_stratified():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(20), rng.integers(1, 60, 20))
    a = validation_split(labels, 0.2, seed=5)
    assert np.array_equal(a, validation_split(labels, 0.2, seed=5))
    assert not np.array_equal(a, validation_split(labels, 0.2, seed=6))
    for c in range(20):
        m = labels == c
        n = int(m.sum())
        expect = 0 if n == 1 else int(np.floor(0.2 * n + 0.5))
        assert int(a[m].sum()) == expect, f"class {c} of {n} products"


def test_split_edges():
    assert not validation_split(np.array([1, 2, 3]), 0.5).any(), "single products stay in training"
    assert not validation_split(np.arange(10) % 2, 0.0).any()
    with pytest.raises(ValueError, match="fraction"):
        validation_split(np.arange(4), 1.0)


def test_folds_are_deterministic_stratified_and_cover_everything():
    from etalage.catalog.split import fold_split

    rng = np.random.default_rng(2)
    labels = rng.permutation(np.repeat(np.arange(30), rng.integers(1, 40, 30)))
    folds = fold_split(labels, 4, seed=3)
    assert np.array_equal(folds, fold_split(labels, 4, seed=3))
    assert not np.array_equal(folds, fold_split(labels, 4, seed=4))
    assert set(np.unique(folds)) == {0, 1, 2, 3}
    for c in range(30):
        counts = np.bincount(folds[labels == c], minlength=4)
        assert counts.max() - counts.min() <= 1, f"class {c} spread {counts}"
    sizes = np.bincount(folds, minlength=4)
    assert sizes.max() - sizes.min() <= 0.05 * len(labels), "folds of about equal size"
    with pytest.raises(ValueError, match="at least 2"):
        fold_split(labels, 1)
