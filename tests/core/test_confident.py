"""Confident learning on top-K rankings: on a dense case it flags exactly what cleanlab's
find_label_issues flags; from top-K lists it still finds the flipped labels."""

from __future__ import annotations

import numpy as np
import pytest

from etalage.core.confident import find_suspects

cleanlab_filter = pytest.importorskip("cleanlab.filter", reason="cleanlab (a dev dependency) is not installed")


def _noisy_case(n=2000, k=20, flip=0.08, seed=0):
    """Out-of-fold-like probabilities of a decent classifier, and labels with ``flip`` of them changed."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    logits = rng.normal(0, 1.0, (n, k))
    logits[np.arange(n), truth] += rng.normal(2.5, 1.0, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = truth.copy()
    flipped = rng.random(n) < flip
    labels[flipped] = (truth[flipped] + rng.integers(1, k, flipped.sum())) % k
    return probs, labels, flipped


def _topk(probs, k):
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order.astype(np.int32), np.take_along_axis(probs, order, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_case_flags_the_same_products_as_cleanlab(seed):
    probs, labels, _ = _noisy_case(seed=seed)
    want = cleanlab_filter.find_label_issues(labels, probs, n_jobs=1)
    cls, p = _topk(probs, probs.shape[1])
    got = np.zeros(len(labels), bool)
    got[find_suspects(cls, p, labels, probs.shape[1]).flagged] = True
    assert want.sum() > 50
    assert np.array_equal(got, want), f"{(got != want).sum()} products differ"


def test_topk_rankings_find_the_flipped_labels():
    probs, labels, flipped = _noisy_case(n=3000, k=40, seed=4)
    cls, p = _topk(probs, 10)
    sus = find_suspects(cls, p.astype(np.float16), labels, 40)
    flagged = np.zeros(len(labels), bool)
    flagged[sus.flagged] = True
    dense = cleanlab_filter.find_label_issues(labels, probs, n_jobs=1)
    assert (flagged & dense).sum() >= 0.9 * dense.sum(), "top-10 of 40 classes keeps most of the dense flags"
    def quality(mask):
        return (mask & flipped).sum() / mask.sum(), (mask & flipped).sum() / flipped.sum()

    (precision, recall), (dense_precision, dense_recall) = quality(flagged), quality(dense)
    assert precision > 3 * flipped.mean() and recall > 0.5, (precision, recall)
    assert precision >= dense_precision - 0.03 and recall >= dense_recall - 0.05, "as good as the dense matrix"
    assert np.all(np.diff(sus.score[sus.flagged]) <= 1e-6), "most suspicious first"
    top = sus.flagged[: flipped.sum()]
    assert flipped[top].mean() > flipped[sus.flagged].mean() - 0.05
