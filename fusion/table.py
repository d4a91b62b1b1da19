"""The fusion table: one row per (product, candidate class), features by name, rows of a product
contiguous (the layout LightGBM's ranker wants: ``group`` = rows per product).

Candidates are the core's top-K plus any extra (product, class) pairs (picture-hash matches,
specialists' top-k). Core features come from the ``CoreRanking`` alone: no N x 5270 matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from etalage.core.ranking import pack_pairs, unpack_pairs
from etalage.errors import ConfigError
from etalage.ocr.features import OCR_SUMMARY_NAMES

CORE_FEATURE_NAMES = (
    "core_prob", "core_logprob", "core_rank", "core_margin_to_top1",
    "picture_prob_max", "picture_prob_min", "picture_prob_mean",
    "level1_mass", "level2_mass_topk", "n_pictures",
)


@dataclass
class CandidateTable:
    owner: np.ndarray        # (R,) int64: product row (position in the ranking) of each candidate
    classes: np.ndarray      # (R,) int32: taxonomy class index
    features: dict[str, np.ndarray]

    def matrix(self, names: tuple[str, ...]) -> np.ndarray:
        missing = [n for n in names if n not in self.features]
        if missing:
            raise ConfigError(f"features not in the table: {', '.join(missing)}")
        return np.stack([self.features[n] for n in names], axis=1).astype(np.float32)


EVIDENCE_TOP = 3       # the core's best classes, always candidates
EVIDENCE_PROB = 0.01   # a core probability that keeps a class whatever its rank


def core_evidence(ranking) -> np.ndarray:
    """(N, K) mask over the core's top-K: the slots that are candidates on the core's word alone.

    The rest of the top-K (small probabilities deep in the list) stay candidates only with other
    evidence (a training neighbour id of the class, a shared picture, a specialist's vote): without
    any, no signal can lift them to the top, and dropping them halves the rows to build and rank
    (on the demo and test catalogues every true class stayed among the candidates).
    """
    n, k = ranking.topk_class.shape
    return (np.arange(k)[None, :] < EVIDENCE_TOP) | (ranking.topk_prob.astype(np.float32) >= EVIDENCE_PROB)


def candidates(ranking, extra_owner: np.ndarray | None = None, extra_classes: np.ndarray | None = None,
               keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unique (product row, class) pairs: the core's top-K (only the ``keep`` slots when given), plus
    extras; sorted by product."""
    n, k = ranking.topk_class.shape
    owner = np.repeat(np.arange(n, dtype=np.int64), k)
    cls = ranking.topk_class.reshape(-1).astype(np.int64)
    if keep is not None:
        owner, cls = owner[keep.reshape(-1)], cls[keep.reshape(-1)]
    if extra_owner is not None and len(extra_owner):
        owner = np.concatenate([owner, np.asarray(extra_owner, np.int64)])
        cls = np.concatenate([cls, np.asarray(extra_classes, np.int64)])
    rows, classes = unpack_pairs(np.unique(pack_pairs(owner, cls)))
    return rows.astype(np.int64), classes.astype(np.int32)


def core_features(ranking, owner: np.ndarray, classes: np.ndarray, taxonomy) -> dict[str, np.ndarray]:
    """``CORE_FEATURE_NAMES`` for each candidate, from the ranking's top-K (a class outside a
    product's top-K gets probability 0 and rank K).

    Reductions over the short axes (4 pictures, 5 classes) are written column by column: numpy's
    reductions over an axis of length 4 cost 30x an elementwise pass, and this runs for every
    candidate of every test product.
    """
    n, k = ranking.topk_class.shape
    top_p = ranking.topk_prob.astype(np.float32)
    rows = np.arange(len(owner))
    # position of the candidate in its product's top-K (k when absent)
    hit = ranking.topk_class[owner] == classes[:, None]
    first = hit.argmax(1)
    found = hit[rows, first]
    rank = np.where(found, first, k)
    prob = np.where(found, top_p[owner, first], 0.0).astype(np.float32)
    # per-picture probabilities of the candidate (pictures' own top-K; 0 when absent)
    pic_probs = np.where(ranking.picture_topk_class[owner] == classes[:, None, None],
                         ranking.picture_topk_prob.astype(np.float32)[owner], 0)            # (R, 4, KP)
    pic_p = pic_probs[:, :, 0].copy()
    for j in range(1, pic_probs.shape[2]):
        pic_p += pic_probs[:, :, j]                                                        # (R, 4)
    has_pic = (ranking.picture_topk_class[:, :, 0] >= 0)[owner]
    n_pic = has_pic.sum(1, dtype=np.int32)
    pic_max = np.full(len(owner), -np.inf, np.float32)
    pic_min = np.full(len(owner), np.inf, np.float32)
    pic_sum = np.zeros(len(owner), np.float32)
    for j in range(pic_p.shape[1]):
        col, ok = pic_p[:, j], has_pic[:, j]
        pic_max = np.where(ok, np.maximum(pic_max, col), pic_max)
        pic_min = np.where(ok, np.minimum(pic_min, col), pic_min)
        pic_sum += np.where(ok, col, 0)
    # parents' mass: level-1 from the stored probabilities, level-2 from the top-K
    l1 = ranking.level1_prob.astype(np.float32)[owner, taxonomy.level1_of[classes]]
    same_l2 = (taxonomy.level2_of[ranking.topk_class[owner]] == taxonomy.level2_of[classes][:, None])
    l2_mass = np.einsum("ij,ij->i", top_p[owner], same_l2.astype(np.float32))
    return {"core_prob": prob, "core_logprob": np.log(prob + 1e-6).astype(np.float32),
            "core_rank": rank.astype(np.float32), "core_margin_to_top1": (top_p[owner, 0] - prob).astype(np.float32),
            "picture_prob_max": pic_max, "picture_prob_min": pic_min,
            "picture_prob_mean": pic_sum / np.maximum(1, n_pic), "level1_mass": l1,
            "level2_mass_topk": l2_mass.astype(np.float32),
            "n_pictures": ranking.n_pictures[owner].astype(np.float32)}


SPECIALIST_CANDIDATES = 5  # each specialist's top-k that joins the candidates


def specialist_candidates(outputs, k: int = SPECIALIST_CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
    """(product row, class) pairs of every specialist's top-``k``."""
    owners, classes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for out in outputs:
        kk = min(k, out.topk_class.shape[1])
        top = out.topk_class[:, :kk]
        real = (top >= 0).reshape(-1)  # -1 pads the lists of specialists with fewer than k classes
        owners.append(np.repeat(out.rows, kk)[real])
        classes.append(top.reshape(-1)[real].astype(np.int64))
    return np.concatenate(owners), np.concatenate(classes)


def specialist_features(outputs, owner: np.ndarray, classes: np.ndarray, n_products: int,
                        level1_of: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per candidate: ``specialist_score`` (best score any specialist gave the class; 0 outside its
    top-K) and ``specialist_rank``; each specialist's own score and rank of the class (``NAME_score``,
    ``NAME_rank``), with ``level1_of`` its score for the class's level-1 group (``NAME_group_score``:
    the sum of its top-K scores in that group) and per-product features (``NAME_FEATURE``); the OCR
    summary (from the specialists that read). All NaN where no specialist looked at the product
    (LightGBM's missing value): a specialist's own columns are NaN for every product it did not look
    at (a title specialist's for products without a title).

    The group score is what lets a specialist of several groups (``media``) overrule the core's
    group: an album the core took for a book gets a book candidate whose ``media_group_score`` is low,
    which the reranker weighs against the core's ``level1_mass``."""
    n_rows = len(owner)
    score = np.full(n_rows, np.nan, np.float32)
    rank = np.full(n_rows, np.nan, np.float32)
    ocr = np.full((n_products, len(OCR_SUMMARY_NAMES)), np.nan, np.float32)
    query = pack_pairs(owner, classes)
    out_feats: dict[str, np.ndarray] = {}
    for out in outputs:
        per_product = np.full((n_products, len(out.feature_names)), np.nan, np.float32)
        per_product[out.rows] = out.features
        for j, name in enumerate(out.feature_names):
            out_feats[f"{out.name}_{name}"] = per_product[owner, j]
        out_feats[f"{out.name}_score"] = np.full(n_rows, np.nan, np.float32)
        out_feats[f"{out.name}_rank"] = np.full(n_rows, np.nan, np.float32)
        if level1_of is not None:
            out_feats[f"{out.name}_group_score"] = np.full(n_rows, np.nan, np.float32)
        if not len(out.rows):
            continue
        ocr[out.rows] = np.where(np.isnan(out.ocr), ocr[out.rows], out.ocr)  # NaN: a specialist that does not read
        k = out.topk_class.shape[1]
        looked = np.zeros(n_products, bool)
        looked[out.rows] = True
        keys = pack_pairs(np.repeat(out.rows, k), out.topk_class.reshape(-1))
        order = np.argsort(keys, kind="stable")
        at = np.searchsorted(keys[order], query).clip(0, len(keys) - 1)
        hit = keys[order][at] == query
        s = np.where(hit, out.topk_score.reshape(-1)[order][at], 0).astype(np.float32)
        r = np.where(hit, order[at] % k, k).astype(np.float32)
        mine = looked[owner]
        out_feats[f"{out.name}_score"] = np.where(mine, s, np.nan).astype(np.float32)
        out_feats[f"{out.name}_rank"] = np.where(mine, r, np.nan).astype(np.float32)
        if level1_of is not None:
            out_feats[f"{out.name}_group_score"] = _group_scores(out, owner, classes, level1_of, n_products, mine)
        score = np.where(mine, np.fmax(score, s), score)
        rank = np.where(mine, np.fmin(rank, r), rank)
    feats = {"specialist_score": score, "specialist_rank": rank, **out_feats}
    for j, name in enumerate(OCR_SUMMARY_NAMES):
        feats[name] = ocr[owner, j]
    return feats


def _group_scores(out, owner: np.ndarray, classes: np.ndarray, level1_of: np.ndarray, n_products: int,
                  mine: np.ndarray) -> np.ndarray:
    """Per candidate row: the specialist's summed top-K score over the candidate's level-1 group (0 when
    none of its top-K lies there; NaN where it did not look)."""
    per_group = np.zeros((n_products, int(level1_of.max()) + 1), np.float32)
    for j in range(out.topk_class.shape[1]):   # one vote per looked-at product and column: no repeated index
        ok = out.topk_class[:, j] >= 0
        per_group[out.rows[ok], level1_of[out.topk_class[ok, j]]] += out.topk_score[ok, j]
    return np.where(mine, per_group[owner, level1_of[classes]], np.nan).astype(np.float32)


ENSEMBLE_FEATURE_NAMES = ("ens_geomean_prob", "ens_top1_votes", "ens_best_rank", "ens_min_prob")


def ensemble_candidates(models) -> tuple[np.ndarray, np.ndarray]:
    """(product row, class) pairs: each core model's evidence slots (``core_evidence`` on its own
    ranking), so a class one model ranks high is a candidate even where the average buries it."""
    owners, classes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for _, ranking in models:
        keep = core_evidence(ranking)
        n, k = ranking.topk_class.shape
        owners.append(np.repeat(np.arange(n, dtype=np.int64), k)[keep.reshape(-1)])
        classes.append(ranking.topk_class.reshape(-1)[keep.reshape(-1)].astype(np.int64))
    return np.concatenate(owners), np.concatenate(classes)


def ensemble_features(models, owner: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Per candidate, with several core models (``(name, CoreRanking)`` over the same rows): each model's
    probability and rank of the class (``run_NAME_prob``, ``run_NAME_rank``; 0 and K outside its top-K) and,
    across them, the geometric mean of the probabilities (a model's absent class counts
    ``GEOMEAN_FLOOR``), how many models rank the class first, its best rank and its smallest probability.
    (Their mean is the combined ranking's ``core_prob``.)"""
    from etalage.core.ensemble import GEOMEAN_FLOOR

    feats: dict[str, np.ndarray] = {}
    log_sum = np.zeros(len(owner), np.float64)
    votes = np.zeros(len(owner), np.float32)
    best_rank = np.full(len(owner), np.inf, np.float32)
    min_prob = np.full(len(owner), np.inf, np.float32)
    for name, ranking in models:
        k = ranking.topk_class.shape[1]
        hit = ranking.topk_class[owner] == classes[:, None]
        first = hit.argmax(1)
        found = hit[np.arange(len(owner)), first]
        prob = np.where(found, ranking.topk_prob.astype(np.float32)[owner, first], 0.0).astype(np.float32)
        rank = np.where(found, first, k).astype(np.float32)
        feats[f"run_{name}_prob"], feats[f"run_{name}_rank"] = prob, rank
        log_sum += np.log(np.maximum(prob, GEOMEAN_FLOOR))
        votes += rank == 0
        best_rank = np.minimum(best_rank, rank)
        min_prob = np.minimum(min_prob, prob)
    feats["ens_geomean_prob"] = np.exp(log_sum / max(1, len(models))).astype(np.float32)
    feats["ens_top1_votes"] = votes
    feats["ens_best_rank"] = best_rank
    feats["ens_min_prob"] = min_prob
    return feats
