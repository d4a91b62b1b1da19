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
