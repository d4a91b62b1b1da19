"""The second level: assemble every signal for (product, candidate) rows and rank them with LightGBM.

``assemble`` joins the core features, picture-hash matches (which also add candidates: classes of
training products sharing an exact picture, unless the picture is a placeholder shared by many
classes) and the product-id neighbour prior. ``FusionModel`` is a LightGBM ``LGBMRanker``
(lambdarank, one group per product) or a binary classifier, trained with early stopping on
held-out products; it must be trained on products the core never trained on. LightGBM is pinned to
4.7 (pyproject): its evaluation-set arguments are being renamed (eval_set -> eval_X/eval_y).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etalage.catalog.bsonindex import ranks_within
from etalage.core.ranking import unpack_pairs
from etalage.errors import ConfigError, StageOutputError
from etalage.files import atomic_write, write_json_atomic
from etalage.fusion.folder import FusionDir, FusionPlan
from etalage.fusion.neighbours import NEIGHBOUR_FEATURE_NAMES, neighbour_candidates, neighbour_features
from etalage.fusion.signals import (
    HASH_FEATURE_NAMES,
    PictureHashIndex,
    TrainingSignals,
    md5_keys,
)
from etalage.fusion.table import (
    CORE_FEATURE_NAMES,
    ENSEMBLE_FEATURE_NAMES,
    CandidateTable,
    candidates,
    core_evidence,
    core_features,
    ensemble_candidates,
    ensemble_features,
    specialist_candidates,
    specialist_features,
)
from etalage.options import RERANKER_KINDS, check_choice

HASH_CANDIDATE_MAX_CLASSES = 5  # a picture seen with more classes is a placeholder: no candidates from it


def hash_candidates(index: PictureHashIndex, picture_md5: np.ndarray, picture_owner: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(product row, class) pairs for classes whose training products share one of its pictures."""
    keys = md5_keys(picture_md5)
    m = np.searchsorted(index.md5_keys, keys).clip(0, max(0, len(index.md5_keys) - 1))
    known = (index.md5_keys[m] == keys) & (index.md5_classes[m] <= HASH_CANDIDATE_MAX_CLASSES)
    pic = np.flatnonzero(known)
    number, pair_class = unpack_pairs(index.pairs)
    lo = np.searchsorted(number, m[pic], side="left")
    reps = np.searchsorted(number, m[pic], side="right") - lo
    rows = np.repeat(lo, reps) + ranks_within(reps)
    return np.repeat(np.asarray(picture_owner)[pic], reps), pair_class[rows]


@dataclass
class Evidence:
    """What a fusion table holds besides the core ranking, row for row with it: the products' pictures
    (``picture_md5``, and ``picture_owner``: the ranking row of each), the specialists'
    ``SpecialistRanking``s, with several core models each one's ``(name, CoreRanking)`` (the ranking is then
    their mean), and the embedding neighbours' ``NeighbourHits`` (one per index)."""

    picture_md5: np.ndarray
    picture_owner: np.ndarray
    specialists: list = field(default_factory=list)
    models: list = field(default_factory=list)
    neighbours: list = field(default_factory=list)


def assemble(ranking, taxonomy, signals: TrainingSignals, evidence: Evidence, own_classes: np.ndarray | None = None,
             prune: bool = True) -> CandidateTable:
    """The full table for the products of ``ranking``: candidates from the core's top-K, hash matches,
    the specialists' top-k (and, when given, every core model's evidence and the embedding neighbours'
    classes), with every feature. ``own_classes``: the products are the fit's training queries, with these
    labels (per ranking row): each product's own contribution to the hash and id signals is removed.
    ``prune``: the core's weak top-K classes stay only with other evidence (``core_evidence``); the same
    rule must hold when fitting and predicting."""
    training_queries = own_classes is not None
    picture_md5, picture_owner = evidence.picture_md5, evidence.picture_owner
    specialists, models, neighbours = list(evidence.specialists), list(evidence.models), list(evidence.neighbours)
    h_owner, h_cls = hash_candidates(signals.hash_index, picture_md5, picture_owner)
    s_owner, s_cls = specialist_candidates(specialists)
    e_owner, e_cls = ensemble_candidates(models) if len(models) > 1 else (np.zeros(0, np.int64),) * 2
    n_owner, n_cls = neighbour_candidates(neighbours)
    keep = None
    if prune:
        keep = core_evidence(ranking)
        rows, slots = np.nonzero(~keep)
        seen = signals.id_prior.seen_nearby(ranking.product_ids[rows], ranking.topk_class[rows, slots],
                                            min(signals.ks), exclude_self=training_queries)
        keep[rows[seen], slots[seen]] = True
    owner, cls = candidates(ranking, np.concatenate([h_owner, s_owner, e_owner, n_owner]),
                            np.concatenate([h_cls, s_cls, e_cls, n_cls]), keep)
    feats = core_features(ranking, owner, cls, taxonomy)
    if len(models) > 1:
        feats.update(ensemble_features(models, owner, cls))
    if neighbours:
        feats.update(neighbour_features(neighbours, owner, cls))
    pic_own = np.asarray(own_classes)[picture_owner] if training_queries else None
    feats.update(signals.hash_index.features(picture_md5, picture_owner, owner, cls, pic_own))
    feats.update(signals.id_prior.features(ranking.product_ids[owner], cls, signals.ks, exclude_self=training_queries))
    feats["class_frequency"] = signals.class_frequency[cls]
    feats.update(specialist_features(specialists, owner, cls, len(ranking), taxonomy.level1_of))
    return CandidateTable(owner, cls, feats)


def feature_groups(names, specialist_names: list[str] | tuple[str, ...] = ()) -> dict[str, list[str]]:
    """The table's columns by signal, for the ablation: core, hash, id (with the class frequency),
    specialists (scores, their own features, OCR summary), and each specialist's own columns under
    ``specialist:NAME`` (its score and rank of the class and its features)."""
    groups: dict[str, list[str]] = {"core": [], "ensemble": [], "neighbours": [], "hash": [], "id": [],
                                    "specialists": []}
    for name in specialist_names:
        groups[f"specialist:{name}"] = []
    for n in names:
        if n in CORE_FEATURE_NAMES:
            groups["core"].append(n)
        elif n in ENSEMBLE_FEATURE_NAMES or n.startswith("run_"):
            groups["ensemble"].append(n)
        elif n in NEIGHBOUR_FEATURE_NAMES:
            groups["neighbours"].append(n)
        elif n in HASH_FEATURE_NAMES:
            groups["hash"].append(n)
        elif n.startswith("id_") or n == "class_frequency":
            groups["id"].append(n)
        else:
            groups["specialists"].append(n)
            for name in specialist_names:
                if n.startswith(f"{name}_"):
                    groups[f"specialist:{name}"].append(n)
    return groups


KINDS = RERANKER_KINDS
# LightGBM's settings; `etalage fusion fit --lgb KEY=VALUE` overrides any of them.
DEFAULT_LGB = {"n_estimators": 500, "learning_rate": 0.1, "num_leaves": 31, "min_child_samples": 10,
               "early_stopping_rounds": 30}
# Capacities that fit_best compares by cross-validation (on top of DEFAULT_LGB): the default trees and
# small slow ones, which a few hundred fusion products (the demo's) can support. Naming any of
# CAPACITY_KEYS with --lgb fixes the capacity to the user's.
LGB_CAPACITIES = ({}, {"num_leaves": 7, "learning_rate": 0.05})
CAPACITY_KEYS = {"num_leaves", "learning_rate", "max_depth", "min_child_samples", "min_data_in_leaf"}
CV_FOLDS = 5
CV_MAX_PRODUCTS = 50_000   # above this one 20% split decides (reliable there, and 5 folds cost 5 fits)
CV_MIN_PATIENCE = 100      # top-1 on a fold of ~150 products is a step function: stop late


@dataclass
class FusionModel:
    """A LightGBM model over a ``CandidateTable``'s named columns, with the settings that built the
    table (``plan``, saved as ``fusion.json``'s ``config``) so prediction rebuilds the same columns."""

    kind: str                       # "ranker" or "binary"
    feature_names: tuple[str, ...]
    booster: object = field(repr=False)
    best_iteration: int = 0
    plan: FusionPlan | None = None
    threads: int = 0                # LightGBM prediction threads (0: all cores; 1 in worker processes)

    @classmethod
    def fit(cls, table: CandidateTable, truth: np.ndarray, feature_names: tuple[str, ...], kind: str = "ranker",
            valid_fraction: float = 0.2, seed: int = 0, valid_products: np.ndarray | None = None,
            lgb_params: dict | None = None) -> FusionModel:
        """``truth``: the class of each product row. Products are split for early stopping
        (``valid_products``: a boolean mask over product rows, else a random ``valid_fraction``).
        ``lgb_params`` override ``DEFAULT_LGB`` (any LightGBM scikit-learn parameter)."""
        import lightgbm as lgb

        check_choice(kind, KINDS, "fusion model kind")
        params = {**DEFAULT_LGB, **(lgb_params or {})}
        stopping = int(params.pop("early_stopping_rounds"))
        params.update(random_state=seed, verbose=-1, n_jobs=-1)
        y = (table.classes == np.asarray(truth)[table.owner]).astype(np.int32)
        X = table.matrix(feature_names)
        n_products = int(table.owner.max()) + 1
        if valid_products is None:
            valid_products = np.random.default_rng(seed).random(n_products) < valid_fraction
        va = valid_products[table.owner]
        callbacks = [lgb.early_stopping(stopping, verbose=False)]
        names = list(feature_names)  # saved in the model file, so other tools see named columns
        try:
            if kind == "ranker":
                model = lgb.LGBMRanker(objective="lambdarank", **params)
                model.fit(X[~va], y[~va], group=_group_sizes(table.owner[~va]), eval_X=(X[va],), eval_y=(y[va],),
                          eval_group=[_group_sizes(table.owner[va])], eval_at=[5], callbacks=callbacks,
                          feature_name=names)
            else:
                model = lgb.LGBMClassifier(objective="binary", **params)
                model.fit(X[~va], y[~va], eval_X=(X[va],), eval_y=(y[va],), callbacks=callbacks, feature_name=names)
        except (TypeError, ValueError, lgb.basic.LightGBMError) as exc:
            raise ConfigError(f"LightGBM refused the settings {params}: {exc}") from None
        return cls(kind, tuple(feature_names), model.booster_, int(model.best_iteration_ or params["n_estimators"]))

    @classmethod
    def fit_best(cls, table: CandidateTable, truth: np.ndarray, feature_names: tuple[str, ...],
                 kinds: tuple[str, ...] = KINDS, valid_fraction: float = 0.2, seed: int = 0,
                 lgb_params: dict | None = None, folds: int = CV_FOLDS) -> tuple[FusionModel, dict]:
        """The best reranker for this table, and how it was chosen.

        Up to ``CV_MAX_PRODUCTS`` products: every kind with every capacity of ``LGB_CAPACITIES`` (only
        the user's settings when ``lgb_params`` names one) is scored by ``folds``-fold cross-validation
        over the products, its product top-1 followed tree by tree; the best (kind, capacity, number of
        trees) is refitted on all products. A single 20% split of a few hundred products ties or
        flips between settings (the demo's fusion kept 6 trees on 140 products), and the fitted model
        leaves a fifth of the products unused; cross-validation uses them all and averages the noise.
        Larger tables: one ``valid_fraction`` split with early stopping, each kind, the better kept.
        Returns the model and a summary: the chosen settings (``params``: every LightGBM setting, which
        pins the capacity when passed back as ``lgb_params``) and each kind's best top-1."""
        truth = np.asarray(truth)
        n_products = int(table.owner.max()) + 1
        folds = min(folds, n_products)
        if n_products <= CV_MAX_PRODUCTS and folds >= 2:
            return cls._fit_cv(table, truth, feature_names, kinds, seed, lgb_params, folds)
        valid = np.random.default_rng(seed).random(n_products) < valid_fraction
        scores, keys, models = {}, {}, {}
        for kind in kinds:
            models[kind] = cls.fit(table, truth, feature_names, kind, seed=seed, valid_products=valid,
                                   lgb_params=lgb_params)
            top = models[kind].rank(table, n_products, 5)[0][valid]
            hit = top == truth[valid][:, None]
            mrr = float((hit / np.arange(1, 6)).sum(1).mean())
            scores[kind] = float(hit[:, 0].mean())
            keys[kind] = (scores[kind], mrr)
        best = max(kinds, key=lambda k: keys[k])
        return models[best], {"selection": f"one {valid_fraction:.0%} split, early stopping",
                              "valid_top1_by_kind": scores, "trees": models[best].best_iteration}

    @classmethod
    def _fit_cv(cls, table: CandidateTable, truth: np.ndarray, feature_names: tuple[str, ...], kinds, seed: int,
                lgb_params: dict | None, folds: int) -> tuple[FusionModel, dict]:
        import lightgbm as lgb

        for kind in kinds:
            check_choice(kind, KINDS, "fusion model kind")
        user = dict(lgb_params or {})
        capacities = [{}] if set(user) & CAPACITY_KEYS else list(LGB_CAPACITIES)
        X = table.matrix(feature_names)
        y = (table.classes == truth[table.owner]).astype(np.int32)
        n_products = int(table.owner.max()) + 1
        row_fold = (np.random.default_rng(seed).permutation(n_products) % folds)[table.owner]
        results = []
        try:
            for kind in kinds:
                for capacity in capacities:
                    settings = {**DEFAULT_LGB, **capacity, **user}
                    params, rounds, patience = _boosting(settings)
                    native = _native_params(kind, params, seed)
                    curves = [_top1_curve(native, kind, X, y, table.owner, row_fold != f, row_fold == f, rounds,
                                          max(patience, CV_MIN_PATIENCE), feature_names) for f in range(folds)]
                    mean = np.mean(curves, axis=0)
                    best = int(np.argmax(mean))          # first of the best: the fewest trees among ties
                    results.append({"kind": kind, "params": settings, "trees": best + 1, "cv_top1": float(mean[best])})
            chosen = max(results, key=lambda r: r["cv_top1"])  # ties: the earlier (ranker, default capacity)
            booster = lgb.train(_native_params(chosen["kind"], _boosting(chosen["params"])[0], seed),
                                _dataset(X, y, table.owner, chosen["kind"], feature_names), chosen["trees"])
        except (TypeError, ValueError, lgb.basic.LightGBMError) as exc:
            raise ConfigError(f"LightGBM refused the settings {user}: {exc}") from None
        by_kind = {k: max(r["cv_top1"] for r in results if r["kind"] == k) for k in kinds}
        return cls(chosen["kind"], tuple(feature_names), booster, chosen["trees"]), {
            "selection": f"{folds}-fold cross-validation over {n_products} products", "valid_top1_by_kind": by_kind,
            "trees": chosen["trees"], "params": chosen["params"], "candidates": results}

    def scores(self, table: CandidateTable) -> np.ndarray:
        missing = [n for n in self.feature_names if n not in table.features]
        if missing:
            raise ConfigError(f"the fusion model needs columns the table lacks ({', '.join(missing[:5])}): the "
                              f"signals differ from `etalage fusion fit` (specialists, neighbour windows); "
                              f"predict with the same settings or refit")
        return self.booster.predict(table.matrix(self.feature_names), num_iteration=self.best_iteration or None,
                                    num_threads=self.threads)

    def contributions(self, table: CandidateTable) -> np.ndarray:
        """(rows, features) float32: each feature's additive contribution to each row's score (LightGBM's
        TreeSHAP ``pred_contrib``), what moved a candidate up or down."""
        X = table.matrix(self.feature_names)
        out = self.booster.predict(X, num_iteration=self.best_iteration or None, pred_contrib=True,
                                   num_threads=self.threads)
        return np.asarray(out, np.float32)[:, :len(self.feature_names)]

    def rank(self, table: CandidateTable, n_products: int, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` classes per product row (int32, -1 where fewer candidates) and their scores."""
        s = self.scores(table).astype(np.float32)
        order = np.lexsort((-s, table.owner))
        owner = table.owner[order]
        counts = np.bincount(owner, minlength=n_products)
        slot = ranks_within(counts)
        keep = slot < k
        classes = np.full((n_products, k), -1, np.int32)
        scores = np.full((n_products, k), -np.inf, np.float32)
        classes[owner[keep], slot[keep]] = table.classes[order][keep]
        scores[owner[keep], slot[keep]] = s[order][keep]
        return classes, scores

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """``rank``'s scores (products x k, -inf where fewer candidates) as a distribution over each product's k
        best classes: the binary reranker's probabilities renormalised, the ranker's scores through a softmax
        (its scores only order candidates: this is a reading of them, not a calibrated probability)."""
        s = np.asarray(scores, np.float64)
        finite = np.isfinite(s)
        if self.kind == "binary":
            p = np.where(finite, np.clip(s, 0, None), 0.0)
        else:
            top = np.where(finite, s, -np.inf).max(axis=1, keepdims=True)
            p = np.where(finite, np.exp(s - np.where(np.isfinite(top), top, 0)), 0.0)
        total = p.sum(axis=1, keepdims=True)
        return np.where(total > 0, p / np.where(total > 0, total, 1), 0.0).astype(np.float32)

    def predict(self, table: CandidateTable, n_products: int) -> np.ndarray:
        """Best class per product row (int32); products without candidates get -1."""
        return self.rank(table, n_products, 1)[0][:, 0]

    def importance(self) -> dict[str, float]:
        """Total gain of each feature, largest first."""
        gain = self.booster.feature_importance(importance_type="gain")
        pairs = sorted(zip(self.feature_names, gain.tolist(), strict=True), key=lambda kv: -kv[1])
        return dict(pairs)

    def save(self, folder: str | Path | FusionDir) -> None:
        folder = folder if isinstance(folder, FusionDir) else FusionDir(folder)
        folder.path.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder.model_file, "w") as fh:
            fh.write(self.booster.model_to_string(num_iteration=self.best_iteration or None))
        write_json_atomic(folder.meta_file, {"kind": self.kind, "features": list(self.feature_names),
                                             "config": self.plan.to_dict() if self.plan is not None else {}})

    @classmethod
    def load(cls, folder: str | Path | FusionDir, expected_features: tuple[str, ...] | None = None) -> FusionModel:
        import lightgbm as lgb

        folder = folder if isinstance(folder, FusionDir) else FusionDir(folder)
        if not folder.exists:
            raise StageOutputError(f"{folder}: no fusion model; run `etalage fusion fit --out {folder} ...`")
        try:
            meta = json.loads(folder.meta_file.read_text())
            names = tuple(meta["features"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StageOutputError(f"{folder.meta_file}: unreadable ({exc}); refit with `etalage fusion fit`") from None
        if expected_features is not None and set(names) - set(expected_features):
            missing = sorted(set(names) - set(expected_features))
            raise ConfigError(f"{folder}: the model needs features the table lacks ({', '.join(missing[:5])}); "
                              f"rebuild the table with the same signals or retrain with `etalage fusion fit`")
        try:
            booster = lgb.Booster(model_str=folder.model_file.read_text())
        except lgb.basic.LightGBMError as exc:
            raise StageOutputError(f"{folder.model_file}: unreadable LightGBM model ({exc}); refit with "
                                   f"`etalage fusion fit`") from None
        config = meta.get("config") or {}
        plan = FusionPlan.from_dict(config, folder.meta_file) if config else None
        return cls(meta["kind"], names, booster, 0, plan)


def fused_top1(topk_class: np.ndarray, core_top1: np.ndarray) -> np.ndarray:
    """The one fused top-1 rule (int32 class per product): fusion's best class, or the core's top-1 where
    fusion ranked no candidate (``rank`` pads with -1). The submission, the demo's fusion figure and the
    explain page all use it, so they agree."""
    best = np.asarray(topk_class)[:, 0]
    return np.where(best >= 0, best, np.asarray(core_top1)).astype(np.int32)


def _boosting(settings: dict) -> tuple[dict, int, int]:
    """DEFAULT_LGB-style settings -> (the tree settings, the most rounds, the early-stopping patience)."""
    params = dict(settings)
    return params, int(params.pop("n_estimators")), int(params.pop("early_stopping_rounds"))


def _native_params(kind: str, params: dict, seed: int) -> dict:
    """DEFAULT_LGB-style (scikit-learn) names -> ``lgb.train`` parameters (LightGBM takes the
    scikit-learn names as aliases)."""
    objective = "lambdarank" if kind == "ranker" else "binary"
    return {**params, "objective": objective, "metric": "None", "random_state": seed, "verbose": -1,
            "n_jobs": params.get("n_jobs", -1), "deterministic": True, "force_row_wise": True}


def _dataset(X: np.ndarray, y: np.ndarray, owner: np.ndarray, kind: str, names, reference=None):
    import lightgbm as lgb

    return lgb.Dataset(X, y, group=_group_sizes(owner) if kind == "ranker" else None, feature_name=list(names),
                       reference=reference, free_raw_data=False)


def _top1_curve(params: dict, kind: str, X: np.ndarray, y: np.ndarray, owner: np.ndarray, tr: np.ndarray,
                va: np.ndarray, rounds: int, patience: int, names) -> np.ndarray:
    """Product top-1 on the rows ``va`` after each boosting round of a model fitted on ``tr`` (after an
    early stop, the last value carries on). Rows are sorted by product, as the table keeps them."""
    import lightgbm as lgb

    train_set = _dataset(X[tr], y[tr], owner[tr], kind, names)
    valid_set = _dataset(X[va], y[va], owner[va], kind, names, reference=train_set)
    v_owner, v_y = owner[va], y[va]
    starts = np.flatnonzero(np.r_[True, v_owner[1:] != v_owner[:-1]])
    curve: list[float] = []

    def top1(preds, _data):
        best = np.maximum.reduceat(preds, starts)
        # a product counts when a true row holds its best score (ties: the first row, as rank() does)
        first_best = np.minimum.reduceat(np.where(preds == np.repeat(best, np.diff(np.r_[starts, len(preds)])),
                                                  np.arange(len(preds)), len(preds)), starts)
        curve.append(float(v_y[first_best].mean()))
        return "top1", curve[-1], True

    lgb.train(params, train_set, rounds, valid_sets=[valid_set], feval=top1,
              callbacks=[lgb.early_stopping(patience, verbose=False)])
    out = np.full(rounds, curve[-1] if curve else 0.0)
    out[:len(curve)] = curve[:rounds]
    return out


def _group_sizes(owner: np.ndarray) -> np.ndarray:
    """Rows per product for rows sorted by product (LightGBM ``group``)."""
    return np.unique(owner, return_counts=True)[1]
