"""Several core runs as one signal: a core model is one run or the K fold runs of one split, and several
models are combined by averaging their rankings. Torch-free: the rules and the arithmetic on rankings.

Honesty is the point. The second level (fusion) and the audit may only learn from a product's prediction
by a network that never trained on it: a single run's validation products, or, for a fold set, every
training product predicted by the run that held its fold out (out of fold). Several models can be
combined only where each is honest on the same products: runs that share their validation products,
or fold sets of one split; anything else is refused by ``check_compatible`` with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.core.ranking import CoreRanking, pack_pairs, unpack_pairs
from etalage.core.rundir import RunDir
from etalage.errors import ConfigError

FOLD_NAME = re.compile(r"^fold(\d+)$")
GEOMEAN_FLOOR = 1e-4  # the probability a class outside a model's top-K counts as in a geometric mean


@dataclass
class CoreModel:
    """One core run, or the fold runs of one split (``train --folds K``), named for feature columns."""

    name: str
    runs: list[RunDir]   # one run, or K fold runs in fold order
    path: Path

    @classmethod
    def open(cls, path: str | Path, name: str | None = None) -> CoreModel:
        """A run folder (``RUN/model.pt``), or a folder of fold runs (``OUT/fold0`` ... from ``train --folds
        K``); every run must be finished."""
        path = Path(path)
        if RunDir(path).config_file.exists():
            runs = [RunDir(path)]
        else:
            folds = sorted((int(m.group(1)), p) for p in path.glob("fold*") if (m := FOLD_NAME.match(p.name)))
            if not folds:
                raise ConfigError(f"{path}: neither a core run (no config.json) nor a folder of fold runs "
                                  f"(no fold0/ ...); train one with `etalage train --out {path}`")
            runs = [RunDir(p) for _, p in folds]
            cfgs = [r.config() for r in runs]
            k = cfgs[0].get("folds") or 0
            if [i for i, _ in folds] != list(range(k)) or any(c.get("folds") != k for c in cfgs):
                raise ConfigError(f"{path}: holds {', '.join(p.name for _, p in folds)}, not the folds 0..{k - 1} of "
                                  f"one {k}-fold split; train the missing ones with `etalage train --folds {k} "
                                  f"--fold all --out {path}`")
        for r in runs:
            r.require_model()
        return cls(name or _safe_name(path.name), runs, path)

    @property
    def is_folds(self) -> bool:
        return len(self.runs) > 1

    def config(self) -> dict:
        return self.runs[0].config()

    def holdout(self) -> tuple[np.ndarray, np.ndarray]:
        """The training products this model predicts honestly, ascending, and for each the run (index into
        ``runs``) that never trained on it."""
        parts = [(r.val_positions(), np.full(len(r.val_positions()), i)) for i, r in enumerate(self.runs)]
        pos = np.concatenate([p for p, _ in parts])
        run = np.concatenate([i for _, i in parts])
        order = np.argsort(pos, kind="stable")
        pos, run = pos[order], run[order]
        if len(pos) and (np.diff(pos) == 0).any():
            dup = int(pos[1:][np.diff(pos) == 0][0])
            raise ConfigError(f"{self.path}: product at position {dup} is held out by two fold runs; the folds "
                              f"are not of one split")
        return pos, run.astype(np.int64)


def _safe_name(name: str) -> str:
    """A model's name as a feature-column prefix: letters, digits and underscores."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower() or "core"


def open_models(paths: list[str | Path]) -> list[CoreModel]:
    """The core models of ``fusion fit --run A --run B ...`` (unique names), checked compatible."""
    models = [CoreModel.open(p) for p in paths]
    check_not_loose_folds(models)
    seen: dict[str, int] = {}
    for m in models:
        seen[m.name] = seen.get(m.name, 0) + 1
        if seen[m.name] > 1:
            m.name = f"{m.name}_{seen[m.name]}"
    check_compatible(models)
    return models


def check_not_loose_folds(models: list[CoreModel]) -> None:
    """Fold runs trained one by one (``train --folds K --fold i --out runs/fI``, the way to spread folds over
    machines) and given as separate ``--run``s are one model, not K: say how to make them the fold set they are
    (one folder holding fold0 ... foldK-1), instead of refusing them as runs that hold out different products."""
    loose = [m for m in models if not m.is_folds and m.config().get("folds")]
    if len(loose) < 2:  # one fold run alone is an honest single run on its own fold
        return
    cfg = loose[0].config()
    k, folder = int(cfg["folds"]), loose[0].path.parent / "folds"
    moves = " && ".join(f"mv {m.path} {folder}/fold{m.config().get('fold')}" for m in loose)
    raise ConfigError(f"{', '.join(str(m.path) for m in loose)}: fold runs of a {k}-fold split trained one by one; "
                      f"together they are one model: put all {k} in one folder as fold0 ... fold{k - 1} "
                      f"(mkdir -p {folder} && {moves}) and pass --run {folder}")


def check_compatible(models: list[CoreModel]) -> None:
    """Refuse models that cannot score the same products honestly, saying why: every one trained on the
    same dump with the same taxonomy, and either all single runs holding out the same products or all fold
    sets of the same split."""
    if len(models) <= 1:
        return
    first = models[0]
    base_cfg = first.config()
    base_tax = first.runs[0].taxonomy()
    for m in models[1:]:
        cfg = m.config()
        if Path(cfg["train"]).resolve() != Path(base_cfg["train"]).resolve():
            raise ConfigError(f"{m.path} was trained on {cfg['train']}, {first.path} on {base_cfg['train']}: the "
                              f"runs of one fusion must share their training dump")
        tax = m.runs[0].taxonomy()
        if not np.array_equal(tax.category_ids, base_tax.category_ids) or tax.level3_names != base_tax.level3_names:
            raise ConfigError(f"{m.path} and {first.path} have different taxonomies (category_names.csv)")
        if m.is_folds != first.is_folds:
            raise ConfigError(f"{m.path} is {'a fold set' if m.is_folds else 'a single run'} and {first.path} "
                              f"{'a fold set' if first.is_folds else 'a single run'}: combine single runs that share "
                              f"their validation products, or fold sets of one split")
        a_pos, a_run = first.holdout()
        b_pos, b_run = m.holdout()
        if not np.array_equal(a_pos, b_pos) or not np.array_equal(a_run, b_run):
            what = "fold runs do not hold out the same folds" if m.is_folds else "runs hold out different products"
            raise ConfigError(f"{m.path} and {first.path}: the {what} (their --seed, --val-fraction or --folds "
                              f"differ); train them with the same split, or the fusion could learn from "
                              f"predictions of networks that saw the product")


# ---------------------------------------------------------------------------------------------
# combining rankings


def mean_ranking(rankings: list[CoreRanking], topk: int | None = None,
                 weights: list[float] | None = None) -> CoreRanking:
    """The (weighted) mean of several rankings of the same products: each class's probability averaged
    over the models, a class outside a model's top-K counting 0 there, then the best ``topk`` kept; the
    same per picture and for the level-1 probabilities. Embeddings live in each run's own space and are
    not averaged (None). Memory: the union of the top-K lists, never N x classes."""
    if len(rankings) == 1:
        return rankings[0]
    first = rankings[0]
    n = len(first)
    for r in rankings[1:]:
        if not np.array_equal(r.product_ids, first.product_ids):
            raise ConfigError("rankings of different products cannot be averaged")
    w = np.asarray(weights if weights is not None else [1.0] * len(rankings), np.float32)
    w = w / w.sum()
    k = topk or first.topk_class.shape[1]
    classes, probs = _mean_topk([r.topk_class for r in rankings], [r.topk_prob for r in rankings], w, k)
    pics = [r.picture_topk_class.reshape(n * r.picture_topk_class.shape[1], -1) for r in rankings]
    pic_probs = [r.picture_topk_prob.reshape(n * r.picture_topk_prob.shape[1], -1) for r in rankings]
    kp = first.picture_topk_class.shape[2]
    pc, pp = _mean_topk(pics, pic_probs, w, kp)
    has_pic = first.picture_topk_class[:, :, :1] >= 0
    pc = np.where(has_pic, pc.reshape(first.picture_topk_class.shape), -1).astype(np.int32)
    pp = np.where(has_pic, pp.reshape(first.picture_topk_prob.shape), 0).astype(np.float16)
    level1 = sum(wi * r.level1_prob.astype(np.float32) for wi, r in zip(w, rankings, strict=True))
    meta = {**first.meta, "combined": len(rankings)}
    return CoreRanking(first.product_ids, classes, probs, first.n_pictures, pc, pp, level1.astype(np.float16), None,
                       meta)


def _mean_topk(classes: list[np.ndarray], probs: list[np.ndarray], w: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of several top-K lists -> the weighted mean probability of each class in their union, best
    ``k`` per row (class -1, probability 0 where the union is smaller)."""
    n = classes[0].shape[0]
    rows = np.concatenate([np.repeat(np.arange(n, dtype=np.int64), c.shape[1]) for c in classes])
    cls = np.concatenate([c.reshape(-1).astype(np.int64) for c in classes])
    p = np.concatenate([wi * pr.astype(np.float32).reshape(-1) for wi, pr in zip(w, probs, strict=True)])
    ok = cls >= 0
    keys, inverse = np.unique(pack_pairs(rows[ok], cls[ok]), return_inverse=True)
    total = np.bincount(inverse, weights=p[ok], minlength=len(keys)).astype(np.float32)
    r, c = unpack_pairs(keys)
    order = np.lexsort((-total, r))
    r, c, total = r[order], c[order], total[order]
    counts = np.bincount(r, minlength=n)
    slot = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = slot < k
    out_c = np.full((n, k), -1, np.int32)
    out_p = np.zeros((n, k), np.float16)
    out_c[r[keep], slot[keep]] = c[keep]
    out_p[r[keep], slot[keep]] = total[keep]
    return out_c, out_p


def rows_of(positions: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index into sorted ``positions`` of each of ``wanted`` (all present)."""
    at = np.searchsorted(positions, wanted)
    if len(wanted) and (at.max() >= len(positions) or not np.array_equal(positions[at], wanted)):
        raise ConfigError("some products are not among the held-out ones")
    return at
