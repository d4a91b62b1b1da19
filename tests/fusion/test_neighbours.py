"""Embedding neighbours (faiss, exact and compressed), their features against a hand count, self-exclusion,
and the second-level baselines computed from a table's per-run columns."""

from __future__ import annotations

import numpy as np
import pytest

from etalage.fusion.neighbours import EmbeddingIndex, NeighbourHits, neighbour_candidates, neighbour_features
from etalage.fusion.report import ensemble_baselines
from etalage.fusion.table import CandidateTable


def _clusters(rng, n_classes=6, per=40, dim=32, noise=0.3):
    centres = rng.normal(size=(n_classes, dim))
    classes = np.repeat(np.arange(n_classes), per)
    return centres[classes] + noise * rng.normal(size=(len(classes), dim)), classes


def test_exact_search_excludes_the_query_itself_and_finds_its_class(tmp_path):
    rng = np.random.default_rng(0)
    x, y = _clusters(rng)
    index = EmbeddingIndex.build(x, y, np.arange(len(x)) + 1000)
    hits = index.search(x[:20], 5, exclude=np.arange(20) + 1000)
    assert hits.sims.shape == (20, 5) and (hits.classes == y[:20, None]).mean() > 0.9
    same = index.search(x[:20], 5)
    assert np.allclose(same.sims[:, 0], 1, atol=1e-5), "without exclusion a product finds itself first"
    assert (hits.sims[:, 0] < 1 - 1e-4).all(), "with it, never"
    index.save(tmp_path / "idx")
    again = EmbeddingIndex.load(tmp_path / "idx").search(x[:20], 5, exclude=np.arange(20) + 1000)
    assert np.array_equal(again.classes, hits.classes)


def test_compressed_index_above_the_exact_size():
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, n_classes=8, per=300, dim=64)
    index = EmbeddingIndex.build(x, y, np.arange(len(x)), exact_max=1000)
    assert type(index.index).__name__ == "IndexIVFPQ"
    hits = index.search(x[::50], 5, exclude=np.arange(len(x))[::50])
    assert (hits.classes[:, 0] == y[::50]).mean() > 0.9


def test_neighbour_features_match_a_hand_count():
    hits = NeighbourHits(np.array([[0.9, 0.5, 0.4], [0.2, 0.1, 0.0]], np.float32),
                         np.array([[3, 7, 3], [7, -1, -1]], np.int32))
    owner, classes = np.array([0, 0, 0, 1, 1]), np.array([3, 7, 9, 7, 3])
    f = neighbour_features([hits], owner, classes)
    v = lambda s: ((1 + s) / 2) ** 35  # noqa: E731 - the 8th place's vote
    total0 = v(0.9) + v(0.5) + v(0.4)
    assert f["emb_count"].tolist() == [2, 1, 0, 1, 0]
    assert f["emb_best_cos"].tolist() == pytest.approx([0.9, 0.5, -1, 0.2, -1])
    assert f["emb_vote"].tolist() == pytest.approx([v(0.9) + v(0.4), v(0.5), 0, v(0.2), 0], rel=1e-5)
    assert f["emb_vote_share"][0] == pytest.approx((v(0.9) + v(0.4)) / total0, rel=1e-5)
    o, c = neighbour_candidates([hits])
    assert sorted(zip(o.tolist(), c.tolist(), strict=True)) == [(0, 3), (0, 3), (0, 7), (1, 7)]
    two = neighbour_features([hits, hits], owner, classes)
    assert np.allclose(two["emb_vote"], f["emb_vote"]), "several indexes: the average"


def test_baselines_choose_weights_out_of_fold():
    """Two runs, one right on most products: the best single run, the plain and weighted means."""
    rng = np.random.default_rng(3)
    n, k = 300, 4
    truth = rng.integers(0, 10, n)
    owner = np.repeat(np.arange(n), k)
    classes = np.stack([truth] + [(truth + j) % 10 for j in range(1, k)], 1).reshape(-1)
    good = rng.random((n, k)) * 0.3
    good[:, 0] += np.where(rng.random(n) < 0.8, 0.5, 0.0)
    bad = rng.random((n, k))
    table = CandidateTable(owner, classes.astype(np.int32), {"run_good_prob": good.reshape(-1).astype(np.float32),
                                                            "run_bad_prob": bad.reshape(-1).astype(np.float32)})
    base = ensemble_baselines(table, truth)
    assert base["best_single_run"] == "good"
    assert base["runs"]["good"] > 0.75 > 0.4 > base["runs"]["bad"]
    assert base["weighted_mean"] >= base["plain_mean"] - 0.02
    assert all(w[0] < w[1] for w in base["weighted_mean_weights_by_fold"]), "the bad run weighs less (sorted names)"
    assert ensemble_baselines(CandidateTable(owner, classes, {"run_good_prob": good.reshape(-1)}), truth) == {}
