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
from etalage.fusion.signals import IdNeighbourPrior, PictureHashIndex, md5_keys, unpack_pairs
from etalage.fusion.table import CandidateTable, candidates, core_features

from etalage.errors import ConfigError

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


def assemble(ranking, taxonomy, id_prior: IdNeighbourPrior, ks: list[int], hash_index: PictureHashIndex,
             picture_md5: np.ndarray, picture_owner: np.ndarray, training_queries: bool = False,
             own_classes: np.ndarray | None = None) -> CandidateTable:
    """The full table for the products of ``ranking``; ``training_queries`` removes each product's own
    contribution to the hash and id signals (``own_classes``: their labels, per product row)."""
    h_owner, h_cls = hash_candidates(hash_index, picture_md5, picture_owner)
    owner, cls = candidates(ranking, h_owner, h_cls)
    feats = core_features(ranking, owner, cls, taxonomy)
    pic_own = None
    if training_queries:
        if own_classes is None:
            raise ValueError("training_queries needs own_classes")
        pic_own = np.asarray(own_classes)[picture_owner]
    feats.update(hash_index.features(picture_md5, picture_owner, owner, cls, pic_own))
    feats.update(id_prior.features(ranking.product_ids[owner], cls, ks, exclude_self=training_queries))
    freq = np.bincount(id_prior.classes, minlength=taxonomy.n_classes) / max(1, len(id_prior.classes))
    feats["class_frequency"] = freq[cls].astype(np.float32)
    return CandidateTable(owner, cls, feats)


@dataclass
class FusionModel:
    kind: str                       # "ranker" or "binary"
    feature_names: tuple[str, ...]
    booster: object = field(repr=False)
    best_iteration: int = 0

    @classmethod
    def fit(cls, table: CandidateTable, truth: np.ndarray, feature_names: tuple[str, ...], kind: str = "ranker",
            valid_fraction: float = 0.2, seed: int = 0, n_estimators: int = 500) -> FusionModel:
        """``truth``: the class of each product row. Products are split for early stopping."""
        import lightgbm as lgb

        if kind not in ("ranker", "binary"):
            raise ConfigError(f"fusion model kind must be ranker or binary, got {kind!r}")
        y = (table.classes == np.asarray(truth)[table.owner]).astype(np.int32)
        X = table.matrix(feature_names)
        n_products = int(table.owner.max()) + 1
        valid_products = np.random.default_rng(seed).random(n_products) < valid_fraction
        va = valid_products[table.owner]
        params = dict(n_estimators=n_estimators, learning_rate=0.05, num_leaves=31, min_child_samples=10,
                      random_state=seed, verbose=-1)
        callbacks = [lgb.early_stopping(30, verbose=False)]
        if kind == "ranker":
            model = lgb.LGBMRanker(objective="lambdarank", **params)
            model.fit(X[~va], y[~va], group=np.bincount(table.owner[~va])[np.unique(table.owner[~va])],
                      eval_X=(X[va],), eval_y=(y[va],),
                      eval_group=[np.bincount(table.owner[va])[np.unique(table.owner[va])]],
                      eval_at=[1], callbacks=callbacks)
        else:
            model = lgb.LGBMClassifier(objective="binary", **params)
            model.fit(X[~va], y[~va], eval_X=(X[va],), eval_y=(y[va],), callbacks=callbacks)
        return cls(kind, tuple(feature_names), model.booster_, int(model.best_iteration_ or n_estimators))

    def scores(self, table: CandidateTable) -> np.ndarray:
        return self.booster.predict(table.matrix(self.feature_names), num_iteration=self.best_iteration or None)

    def predict(self, table: CandidateTable, n_products: int) -> np.ndarray:
        """Best class per product row (int32); products without candidates get -1."""
        s = self.scores(table)
        order = np.lexsort((-s, table.owner))
        first = np.r_[True, table.owner[order][1:] != table.owner[order][:-1]]
        best = np.full(n_products, -1, np.int32)
        best[table.owner[order][first]] = table.classes[order][first]
        return best

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / "fusion.lgb.txt"), num_iteration=self.best_iteration or None)
        (folder / "fusion.json").write_text(json.dumps({"kind": self.kind, "features": list(self.feature_names)}))

    @classmethod
    def load(cls, folder: str | Path, expected_features: tuple[str, ...] | None = None) -> FusionModel:
        import lightgbm as lgb

        folder = Path(folder)
        if not (folder / "fusion.json").exists():
            raise ConfigError(f"{folder}: no fusion model; train one first")
        meta = json.loads((folder / "fusion.json").read_text())
        names = tuple(meta["features"])
        if expected_features is not None and set(names) - set(expected_features):
            missing = sorted(set(names) - set(expected_features))
            raise ConfigError(f"{folder}: the model needs features the table lacks ({', '.join(missing[:5])}); "
                              f"rebuild the table with the same signals or retrain the fusion model")
        return cls(meta["kind"], names, lgb.Booster(model_file=str(folder / "fusion.lgb.txt")), 0)
