"""How fusion fit chooses its LightGBM model: cross-validation over the products on small tables, one
split on large ones, and the tree-by-tree top-1 that drives the choice."""

import numpy as np
import pytest

from etalage.errors import ConfigError
from etalage.fusion import model as fusion_model
from etalage.fusion.model import LGB_CAPACITIES, FusionModel
from etalage.fusion.table import CandidateTable

NAMES = ("signal", "weak", "noise")


def _table(products: int, seed: int = 0) -> tuple[CandidateTable, np.ndarray]:
    """Six candidates per product (classes 0-5); ``signal`` points at the true class most of the time,
    ``weak`` a little, ``noise`` not at all."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 6, products)
    owner = np.repeat(np.arange(products), 6)
    classes = np.tile(np.arange(6), products)
    true = (classes == truth[owner]).astype(np.float32)
    feats = {"signal": true * 1.5 + rng.normal(0, 1, len(owner)).astype(np.float32),
             "weak": true * 0.3 + rng.normal(0, 1, len(owner)).astype(np.float32),
             "noise": rng.normal(0, 1, len(owner)).astype(np.float32)}
    return CandidateTable(owner, classes, feats), truth


def test_cross_validation_picks_the_best_candidate_and_refits_on_all_products():
    table, truth = _table(300)
    model, chosen = FusionModel.fit_best(table, truth, NAMES, seed=0)
    assert "cross-validation over 300 products" in chosen["selection"]
    rows = chosen["candidates"]
    assert len(rows) == 2 * len(LGB_CAPACITIES), "every kind with every capacity"
    best = max(rows, key=lambda r: r["cv_top1"])
    assert (model.kind, chosen["trees"], chosen["params"]) == (best["kind"], best["trees"], best["params"])
    assert model.booster.num_trees() == chosen["trees"], "refitted on all products with the chosen trees"
    assert chosen["valid_top1_by_kind"] == {k: max(r["cv_top1"] for r in rows if r["kind"] == k)
                                           for k in ("ranker", "binary")}
    # the chosen model ranks fresh products as cross-validation said, far above chance (1/6)
    fresh, fresh_truth = _table(400, seed=1)
    top1 = float((model.predict(fresh, 400) == fresh_truth).mean())
    assert top1 > 0.5 and abs(top1 - best["cv_top1"]) < 0.1, (top1, best["cv_top1"])


def test_named_capacity_is_kept_and_large_tables_use_one_split(monkeypatch):
    table, truth = _table(200)
    _, chosen = FusionModel.fit_best(table, truth, NAMES, kinds=("ranker",), lgb_params={"num_leaves": 4})
    assert len(chosen["candidates"]) == 1 and chosen["params"]["num_leaves"] == 4
    # the chosen settings passed back pin the capacity (what the ablation does)
    _, again = FusionModel.fit_best(table, truth, NAMES, kinds=("binary",), lgb_params=chosen["params"])
    assert len(again["candidates"]) == 1 and again["params"] == chosen["params"]
    monkeypatch.setattr(fusion_model, "CV_MAX_PRODUCTS", 100)
    model, split = FusionModel.fit_best(table, truth, NAMES)
    assert "split" in split["selection"] and set(split["valid_top1_by_kind"]) == {"ranker", "binary"}


@pytest.mark.parametrize("kind", ["ranker", "binary"])
def test_top1_curve_matches_the_ranking_of_a_model_with_that_many_trees(kind):
    import lightgbm as lgb

    table, truth = _table(240, seed=2)
    X = table.matrix(NAMES)
    y = (table.classes == truth[table.owner]).astype(np.int32)
    # unequal candidate counts: drop some rows so groups differ in size
    keep = ~((table.owner % 7 == 0) & (table.classes == 5) & (y == 0))
    owner = table.owner[keep]
    X, y = X[keep], y[keep]
    va = owner % 4 == 0
    params = fusion_model._native_params(kind, {"learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 5}, 0)
    curve = fusion_model._top1_curve(params, kind, X, y, owner, ~va, va, 40, 1000, NAMES)
    assert curve.shape == (40,) and 0 < curve.min() and curve.max() <= 1
    for trees in (1, 10, 40):
        booster = lgb.train(params, fusion_model._dataset(X[~va], y[~va], owner[~va], kind, NAMES), trees)
        sub_owner = np.unique(owner[va], return_inverse=True)[1]
        sub = CandidateTable(sub_owner, np.flatnonzero(va), {n: X[va][:, j] for j, n in enumerate(NAMES)})
        best_row = FusionModel(kind, NAMES, booster, trees).predict(sub, int(sub_owner.max()) + 1)
        assert curve[trees - 1] == pytest.approx(float(y[best_row].mean())), trees


def test_fewer_products_than_folds_still_fit():
    table, truth = _table(3, seed=3)
    model, chosen = FusionModel.fit_best(table, truth, NAMES)
    assert chosen["selection"].startswith("3-fold") and model.predict(table, 3).shape == (3,)


@pytest.mark.parametrize("settings", [{"num_leaves": -3}, {"learning_rate": "fast"}])
def test_settings_lightgbm_refuses_are_one_config_error(settings, monkeypatch):
    table, truth = _table(40)
    with pytest.raises(ConfigError, match="LightGBM refused the settings"):
        FusionModel.fit_best(table, truth, NAMES, lgb_params=settings)
    monkeypatch.setattr(fusion_model, "CV_MAX_PRODUCTS", 10)
    with pytest.raises(ConfigError, match="LightGBM refused the settings"):
        FusionModel.fit_best(table, truth, NAMES, lgb_params=settings)
