"""The pretrained backbone's own linear probe, inside a training run: what the core must at least match.

A logistic regression on frozen ImageNet features is the floor a fine-tune has to clear (``etalage bench
core`` reports it as an anchor). On 2,640 GroceryStore photos taken in a few sessions the fine-tuned core only
tied it on fine classes and lost 5.7 points at level 2, while scoring 0.977 on a validation part that shared
sessions with training. So a run with pretrained weights reads every training product once, before the
fine-tune, through the pretrained backbone (eval mode, no gradient, pictures letterboxed to the probe's side,
features averaged over a product's pictures: what the anchor reads), and those features serve three ends
(``etalage.core.train``):

- ``val_groups``: the validation part holds out whole groups of near-duplicate products (connected components
  of cosine similarity, ``etalage.catalog.split``), so that it scores photos of sessions training never saw;
- ``probe_init``: the leaf and level heads are fitted on the training part's features by logistic regression
  (scikit-learn, the anchor's settings; the standardisation folded into the linear layers' weights) and loaded
  into the network before the fine-tune (LP-FT, Kumar et al. 2022: a fitted head keeps the first steps'
  gradients from distorting the pretrained features);
- ``keep_probe``: at the end, the probe, the fine-tuned network and the mean of their probabilities (one
  ``ProbeEnsemble`` network, ``etalage.core.model``) are compared on that validation part and ``model.pt`` is
  the best: the probe is saved as a network of its own (the pretrained backbone, ``mean`` pooling, the fitted
  heads), the ensemble as the two, and either loads and predicts like any other. The mean was added when a
  20-minute grocery-dev run showed the fine-tune learning the training sessions and the probe generalising
  at the coarse levels: their mean beat both at every level of the official val. The probe's heads are the
  ones validated, fitted without the held-out products, as the fine-tune never sees them: fusion learns on
  the run's predictions of those products. (Fitted on every product, GroceryStore's official val would score
  0.6 / 1.1 points more at leaf / level 2, the mean of three grouped parts: what ``etalage bench core``'s
  anchor, fitted on all, has.)

The probe's side is the dump's own (the median longest side, 96 to 180 px): at the CPU fine-tune's 128 px the
probe on GroceryStore's official val fell from 0.669 / 0.818 / 0.980 (leaf / level 2 / level 1, at 180) to
0.611 / 0.720 / 0.946, below the fine-tune it would back up. Heads fitted at 180 px and applied to 128 px
features still score 0.561 leaf there (0.611 fitted at 128): a fair start for a 128 px fine-tune, at no
second pass. The pass is not free on a CPU: at 180 px it reads about as many products per second as the
fine-tune trains pictures per second (0.9x, measured in one process on grocery-dev: crops of 112 px with three
layer groups frozen are cheap), so on single-picture catalogues it costs about one epoch of --max-minutes.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.split import (
    fold_split,
    grouped_validation_split,
    near_duplicate_groups,
    validation_split,
)
from etalage.core.data import PictureTransform, ProductDataset, collate, to_device
from etalage.progress import bar as progress_bar

log = logging.getLogger(__name__)

# The most products x classes present a run fits the probe for: scikit-learn's L-BFGS costs about that times the
# features per iteration (the three heads of 4,000 fashion-dev products of 86 classes: 37 s on 2 busy cores, about
# 65 iterations for the leaf head; fashion-dev's 23,951 products are 2.1 M); Cdiscount's 7 M products of 5,270
# classes would take days.
PROBE_MAX_CELLS = 5_000_000
PROBE_C = 1.0              # inverse L2 strength on standardised features: the anchor's (etalage bench core)
PROBE_MAX_ITER = 1000
ABSENT_BIAS = -1e4         # the bias of a class the probe never saw: never its best class
# With --max-minutes, the pass over every product may take at most this share of the budget, projected from its
# first batches; else the run goes on without it (random heads, a random validation part). Measured 2026-12-03 on
# fashion-dev (23,951 products, 2 CPU cores): the pass took 512 s of a 10-minute budget and the kept probe scored
# 0.797 on the split's test part, against 0.817-0.849 for 8-12 minutes of fine-tuning without it; on grocery-dev
# (2,640 products) and the README's sample the pass is under 1/6 of the budget and the probe is what generalises.
PROBE_BUDGET_SHARE = 0.25
PROBE_PROJECT_AFTER = 4    # batches read before the pass's duration is projected
PROBE_ALWAYS_S = 60.0      # a pass projected under this is always finished: small dumps are where the probe wins


class ProbeTooSlow(RuntimeError):
    """The pass over every product would take more than its share of the time budget (projected seconds)."""

    def __init__(self, projected_s: float, allowed_s: float):
        super().__init__(f"the pretrained features' pass would take about {projected_s / 60:.1f} min, over "
                         f"{allowed_s / 60:.1f} min ({PROBE_BUDGET_SHARE:.0%} of --max-minutes)")
        self.projected_s = projected_s
HEADS = {"classifier": "leaf", "level2_head": "level2", "level1_head": "level1"}


@dataclass(frozen=True)
class FeaturePass:
    """How ``pooled_features`` reads: batch size, channels-last inputs, a progress bar, loader workers, and the
    most seconds the whole pass may take (None: no limit)."""

    batch_size: int = 64
    channels_last: bool = False
    progress: bool = False
    workers: int = 0
    max_seconds: float | None = None


def pooled_features(backbone: nn.Module, catalog: Catalog, positions: np.ndarray, transform: PictureTransform,
                    device: torch.device, normalise: tuple, how: FeaturePass = FeaturePass()) -> np.ndarray:
    """(len(positions), F) float32: ``backbone``'s features of each product, averaged over its pictures, each
    picture brought to ``transform``'s square (``normalise``: the weights' (mean, std)). Eval mode, no gradient;
    the backbone's mode is put back. ``how.max_seconds``: raise ``ProbeTooSlow`` as soon as the first batches say the
    whole pass would take longer, and longer than ``PROBE_ALWAYS_S`` (a time budget's share, not spent on a pass
    that cannot pay for itself)."""
    import time

    started = time.perf_counter()
    was_training = backbone.training
    backbone.eval()
    ds = ProductDataset(catalog, positions, None, transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=how.batch_size, collate_fn=collate, num_workers=how.workers)
    out, done, batches = None, 0, 0
    try:
        with torch.no_grad(), progress_bar(total=len(positions), unit="product", enabled=how.progress,
                                           desc=f"pretrained features {catalog.path.name}") as bar:
            for batch in loader:
                x = to_device(batch, device, normalise[0], normalise[1], how.channels_last)
                feats = backbone(x).float()
                owner = batch.picture_product.to(device)
                pooled = feats.new_zeros((batch.n_products, feats.shape[1])).index_add_(0, owner, feats)
                pooled /= torch.bincount(owner, minlength=batch.n_products).clamp(min=1)[:, None]
                if out is None:
                    out = np.zeros((len(positions), feats.shape[1]), np.float32)
                out[batch.index.numpy()] = pooled.cpu().numpy()
                bar.update(batch.n_products)
                done += batch.n_products
                batches += 1
                if how.max_seconds is not None and batches == PROBE_PROJECT_AFTER:
                    projected = (time.perf_counter() - started) / done * len(positions)
                    if projected > max(how.max_seconds, PROBE_ALWAYS_S):
                        raise ProbeTooSlow(projected, how.max_seconds)
    finally:
        backbone.train(was_training)
    return out if out is not None else np.zeros((0, 0), np.float32)


def fit_linear_head(x: np.ndarray, y: np.ndarray, n_out: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(weight (n_out, F), bias (n_out,)) of a logistic regression of ``y`` (0..n_out-1) on standardised ``x``,
    the standardisation folded in, so that ``x @ weight.T + bias`` are its logits on raw features. A class
    absent from ``y`` gets no weight and ``ABSENT_BIAS``; a single class present, a constant win."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, np.float32)
    weight = np.zeros((n_out, x.shape[1]), np.float32)
    bias = np.full(n_out, ABSENT_BIAS, np.float32)
    present = np.unique(y)
    if len(present) == 1:
        bias[present] = 0.0
        return weight, bias
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:  # said once in the log, not on the terminal
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(x), y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.info("linear probe: not converged after %d iterations (used as it is)", PROBE_MAX_ITER)
    scale = scaler.scale_.astype(np.float32)
    w = clf.coef_.astype(np.float32) / scale
    b = clf.intercept_.astype(np.float32) - w @ scaler.mean_.astype(np.float32)
    if len(clf.classes_) == 2:  # scikit-learn keeps one row for two classes: the logit of the second
        w, b = np.stack([-w[0] / 2, w[0] / 2]), np.array([-b[0] / 2, b[0] / 2], np.float32)
    weight[clf.classes_], bias[clf.classes_] = w, b
    return weight, bias


@dataclass
class Probe:
    """The fitted heads (the network's head names -> weight, bias), the side their features were read at,
    and their validation top-1 at each level (NaN without a validation part). Tensors and plain values:
    a checkpoint holds it as ``as_state()``."""

    heads: dict[str, tuple[torch.Tensor, torch.Tensor]]
    side: int
    val: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_state(self) -> dict:
        return {"heads": {k: {"weight": w, "bias": b} for k, (w, b) in self.heads.items()}, "side": self.side,
                "val": dict(self.val), "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict | None) -> Probe | None:
        if not state:
            return None
        heads = {k: (v["weight"], v["bias"]) for k, v in state["heads"].items()}
        return cls(heads, int(state["side"]), dict(state["val"]), float(state["seconds"]))

    def summary(self) -> str:
        v = self.val
        return (f"linear probe on the pretrained features at {self.side} px, {self.seconds:.0f} s; validation top-1 "
                f"{v.get('val_top1', math.nan):.3f} (level 2 {v.get('val_level2_top1', math.nan):.3f}, level 1 "
                f"{v.get('val_level1_top1', math.nan):.3f}) on {v.get('val_products', 0)} products")

    def leaf_logits(self, features: np.ndarray) -> np.ndarray:
        w, b = self.heads["classifier"]
        return np.asarray(features, np.float32) @ w.numpy().T + b.numpy()


def fit_probe(features: np.ndarray, labels: np.ndarray, tax: Taxonomy, side: int, seed: int = 0) -> Probe:
    """The leaf, level-2 and level-1 heads fitted on ``features`` of products of classes ``labels``."""
    t0 = time.perf_counter()
    targets = {"leaf": (labels, tax.n_classes), "level2": (tax.level2_of[labels], tax.n_level2),
               "level1": (tax.level1_of[labels], tax.n_level1)}
    heads = {}
    for name, level in HEADS.items():
        y, n_out = targets[level]
        w, b = fit_linear_head(features, np.asarray(y, np.int64), n_out, seed)
        heads[name] = (torch.from_numpy(w), torch.from_numpy(b))
    return Probe(heads, side, seconds=time.perf_counter() - t0)


def fit_run_probe(features: np.ndarray, labels: np.ndarray, val_mask: np.ndarray, tax: Taxonomy, seed: int,
                  side: int) -> Probe:
    """The probe fitted on the training part's ``features`` and scored on the held-out part's."""
    probe = fit_probe(features[~val_mask], labels[~val_mask], tax, side, seed)
    pred = probe.leaf_logits(features[val_mask]).argmax(1)
    probe.val = {**level_scores(pred, labels[val_mask], tax), "val_products": int(val_mask.sum())}
    return probe


def level_scores(pred: np.ndarray, truth: np.ndarray, tax: Taxonomy) -> dict:
    """Top-1 of the best classes ``pred`` at the leaves and at their parents (the run's validation keys)."""
    if len(truth) == 0:
        return {"val_top1": math.nan, "val_level2_top1": math.nan, "val_level1_top1": math.nan}
    return {"val_top1": float((pred == truth).mean()),
            "val_level2_top1": float((tax.level2_of[pred] == tax.level2_of[truth]).mean()),
            "val_level1_top1": float((tax.level1_of[pred] == tax.level1_of[truth]).mean())}


def load_probe_heads(model: nn.Module, heads: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The probe's ``heads`` into ``model``'s, and its picture pooling started as the plain mean the probe's
    features are (a gate of 0.5 for every picture; attention scores all equal): the network's first
    predictions are the probe's."""
    with torch.no_grad():
        for name, (w, b) in heads.items():
            layer = getattr(model, name)
            layer.weight.copy_(w.to(layer.weight.dtype))
            layer.bias.copy_(b.to(layer.bias.dtype))
        if hasattr(model, "gate") or hasattr(model, "attention"):
            last = model.gate if hasattr(model, "gate") else model.attention[-1]
            last.weight.zero_()
            last.bias.zero_()


def probe_network(probe: Probe, spec: dict, weights: str, resize: str) -> tuple[dict, dict]:
    """(state dict, spec) of the probe as a network of its own: the pretrained backbone, ``mean`` pooling over
    pictures seen at the probe's side, the fitted heads; what ``model.pt`` holds when the probe is kept."""
    from etalage.core.config import default_crop
    from etalage.core.model import build_model

    model, fresh = build_model(spec["n_classes"], spec["n_level1"], spec["n_level2"], spec["backbone"], weights,
                               "mean", spec.get("dropout", 0.2))
    load_probe_heads(model, probe.heads)
    side = probe.side
    out = {**spec, **fresh, "picture_size": side, "crop": default_crop(side),
           "resize": resize, "kept": "probe"}
    return model.state_dict(), out


def ensemble_network(probe: Probe, fine_state: dict, fine_spec: dict, weights: str, resize: str
                     ) -> tuple[dict, dict]:
    """(state dict, spec) of the probe and the fine-tuned network (``fine_state``, ``fine_spec``) as one
    ``ProbeEnsemble``: what ``model.pt`` holds when their mean is kept."""
    from etalage.core.model import ensemble_spec

    probe_state, probe_spec = probe_network(probe, fine_spec, weights, resize)
    state = {**{f"probe.{k}": v for k, v in probe_state.items()},
             **{f"fine_tune.{k}": v for k, v in fine_state.items()}}
    return state, ensemble_spec(probe_spec, fine_spec)


def probe_side(catalog: Catalog, size: int | None) -> int:
    """The side the probe reads pictures at: as set, else the dump's own median side between 96 and 180 px
    (180 for packed dumps: what the anchor of ``etalage bench core`` reads)."""
    from etalage.core.data import AUTO_SIZE_CAP, AUTO_SIZE_FLOOR, median_side

    if size:
        return size
    side = median_side(catalog)
    return AUTO_SIZE_CAP["cuda"] if side is None else int(min(AUTO_SIZE_CAP["cuda"], max(AUTO_SIZE_FLOOR, side)))


def probe_wanted(cfg, n_products: int, n_classes: int) -> bool:
    """Whether a new run reads its products through the pretrained backbone: pretrained weights, one of the
    probe's uses on, and a probe small enough to fit (``PROBE_MAX_CELLS``)."""
    uses = cfg.probe_init or cfg.keep_probe or (cfg.val_groups and not cfg.folds)
    if cfg.weights in (None, "none", "random") or not uses:
        return False
    if n_products * n_classes > PROBE_MAX_CELLS:
        log.info("no linear probe: %d products x %d classes is over %d (the heads start at random and the "
                 "validation part is random)", n_products, n_classes, PROBE_MAX_CELLS)
        return False
    return True


def validation_mask(cfg, labels: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
    """The products a run holds out (True): its fold, or a ``val_fraction`` share, stratified by class; with
    ``features`` and ``val_groups``, whole groups of near-duplicates (``etalage.catalog.split``). Fold runs keep
    folds stratified by class: each run of a fold set computes its own features, and a grouping that differed
    in one product between two runs (a float at the threshold) would leave it in two folds or none."""
    if cfg.folds:
        return fold_split(labels, cfg.folds, cfg.seed) == cfg.fold
    if features is None or not cfg.val_groups:
        return validation_split(labels, cfg.val_fraction, cfg.seed)
    groups = near_duplicate_groups(features, cfg.val_groups, labels)
    mask = grouped_validation_split(labels, groups, cfg.val_fraction, cfg.seed)
    sizes = np.bincount(groups)
    log.info("validation: %d products held out in whole groups of near-duplicates (cosine >= %g within a class: "
             "%d groups, the largest of %d products, %d products alone)", int(mask.sum()), cfg.val_groups,
             len(sizes), int(sizes.max()), int((sizes == 1).sum()))
    return mask


LEVELS = ("val_top1", "val_level2_top1", "val_level1_top1")
KEPT_WORDS = {"fine-tune": "fine-tuned network", "probe": "linear probe",
              "ensemble": "mean of the linear probe and the fine-tuned network"}


def kept_network(fine_tuned: dict, probe: dict, ensemble: dict | None = None) -> tuple[str, str]:
    """("probe", "ensemble" or "fine-tune", why), from the networks' validation top-1 at the three levels: the
    highest mean over the levels, a tie going to the fine-tune, then to the ensemble (the mean of the probe's
    and the fine-tune's probabilities, ``ProbeEnsemble``; None: not a candidate). The mean, not the leaf
    alone: the goal is to be at least the probe at every level, and on GroceryStore's official val the
    fine-tune tied the probe on fine classes while losing 5.7 points at level 2. Without a validation score
    (no held-out products), the fine-tune."""
    candidates = {"fine-tune": fine_tuned, "ensemble": ensemble, "probe": probe}
    scores = {name: [v.get(k, math.nan) for k in LEVELS] for name, v in candidates.items() if v is not None}
    if any(math.isnan(x) for v in scores.values() for x in v):
        return "fine-tune", "no validation score to compare with the probe's"
    kept = max(scores, key=lambda name: (np.mean(scores[name]), -list(scores).index(name)))
    words = "; ".join(f"{name} " + ", ".join(f"{level} {x:.3f}" for level, x in zip(("leaf", "level 2", "level 1"),
                                                                                    v, strict=True))
                      for name, v in scores.items())
    if kept == "fine-tune":
        return kept, f"the fine-tune validates at least as well as the other candidates ({words})"
    return kept, f"the {KEPT_WORDS[kept]} validates best ({words})"
