"""Several core runs as one signal: averaging rankings from their top-K lists, fold sets, and the rules that
refuse runs which cannot score the same products honestly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from etalage.core.ensemble import CoreModel, check_compatible, mean_ranking
from etalage.core.ranking import CoreRanking
from etalage.errors import ConfigError


def _ranking(probs: np.ndarray, k: int, seed: int = 0) -> CoreRanking:
    """A CoreRanking holding the top-k of dense probabilities (one picture per product)."""
    n, c = probs.shape
    top = np.argsort(-probs, axis=1)[:, :k].astype(np.int32)
    p = np.take_along_axis(probs, top, 1).astype(np.float16)
    pic_c = np.full((n, 4, k), -1, np.int32)
    pic_p = np.zeros((n, 4, k), np.float16)
    pic_c[:, 0], pic_p[:, 0] = top, p
    return CoreRanking(np.arange(n, dtype=np.int64) + 100, top, p, np.ones(n, np.int8), pic_c, pic_p,
                       np.full((n, 2), 0.5, np.float16), None, {})


def _dense(rng, n, c):
    x = rng.random((n, c)) ** 4
    return x / x.sum(1, keepdims=True)


def test_mean_of_topk_rankings_matches_the_dense_mean_where_it_can():
    rng = np.random.default_rng(0)
    a, b = _dense(rng, 50, 30), _dense(rng, 50, 30)
    k = 6
    ra, rb = _ranking(a, k), _ranking(b, k)
    mean = mean_ranking([ra, rb], topk=k, weights=[0.25, 0.75])
    # the dense mean with each model's probabilities outside its top-k set to 0 (what a top-K file knows)
    ta, tb = np.zeros_like(a), np.zeros_like(b)
    np.put_along_axis(ta, ra.topk_class.astype(int), ra.topk_prob.astype(np.float64), 1)
    np.put_along_axis(tb, rb.topk_class.astype(int), rb.topk_prob.astype(np.float64), 1)
    want = 0.25 * ta + 0.75 * tb
    assert np.array_equal(mean.topk_class[:, 0], want.argmax(1).astype(np.int32))
    got = mean.topk_prob.astype(np.float64)
    assert np.allclose(got, -np.sort(-want, axis=1)[:, :k], atol=2e-3)
    assert np.all(np.diff(got, axis=1) <= 1e-3), "best first"
    assert np.array_equal(mean.picture_topk_class[:, 0, 0], mean.topk_class[:, 0]), "per picture too"
    assert (mean.picture_topk_class[:, 1:] == -1).all(), "products keep their picture count"
    assert mean_ranking([ra]) is ra


def _fake_run(path, val, folds=None, fold=None, train="/data/train.bson", tax="a"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"train": train, "folds": folds, "fold": fold}))
    (path / "model.pt").write_bytes(b"")
    np.save(path / "val_positions.npy", np.asarray(val, np.int64))
    (path / "category_names.csv").write_text("category_id,category_level1,category_level2,category_level3\n"
                                             f"1,A,B,{tax}\n2,A,B,d\n")


def test_fold_sets_hold_out_every_product_once(tmp_path):
    for i, val in enumerate(([0, 3, 6], [1, 4, 7], [2, 5])):
        _fake_run(tmp_path / "f" / f"fold{i}", val, folds=3, fold=i)
    model = CoreModel.open(tmp_path / "f")
    pos, run = model.holdout()
    assert pos.tolist() == list(range(8)) and run.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert model.is_folds and model.name == "f"
    (tmp_path / "g").mkdir()
    _fake_run(tmp_path / "g" / "fold0", [0], folds=3, fold=0)
    with pytest.raises(ConfigError, match="not the folds 0..2 of one 3-fold split; train the missing ones"):
        CoreModel.open(tmp_path / "g")
    with pytest.raises(ConfigError, match="neither a core run"):
        CoreModel.open(tmp_path)


def test_runs_that_cannot_score_the_same_products_are_refused(tmp_path):
    _fake_run(tmp_path / "a", [1, 5, 9])
    _fake_run(tmp_path / "b", [1, 5, 9])
    _fake_run(tmp_path / "c", [2, 5, 9])
    _fake_run(tmp_path / "d", [1, 5, 9], train="/other/train.bson")
    _fake_run(tmp_path / "e", [1, 5, 9], tax="z")
    for i, val in enumerate(([1, 9], [5])):
        _fake_run(tmp_path / "f" / f"fold{i}", val, folds=2, fold=i)
    a, b = CoreModel.open(tmp_path / "a"), CoreModel.open(tmp_path / "b")
    check_compatible([a, b])
    with pytest.raises(ConfigError, match="hold out different products"):
        check_compatible([a, CoreModel.open(tmp_path / "c")])
    with pytest.raises(ConfigError, match="share their training dump"):
        check_compatible([a, CoreModel.open(tmp_path / "d")])
    with pytest.raises(ConfigError, match="different taxonomies"):
        check_compatible([a, CoreModel.open(tmp_path / "e")])
    with pytest.raises(ConfigError, match="is a single run and .* a fold set"):
        check_compatible([CoreModel.open(tmp_path / "f"), a])
