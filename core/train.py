"""Training the core CNN on one process or many (``torchrun``), resumable to the exact batch.

A run folder (``RunDir``) holds everything: the settings, the taxonomy the class indices refer to,
the held-out products (which fusion trains on later), one metrics line per epoch, the checkpoint
(model, optimizer, step, epoch, batch within the epoch, RNG states; tensors and plain values only,
so it loads with ``weights_only=True``) and, when done, ``model.pt`` for ``etalage predict``.

Schedules: AdamW with linear warm-up then cosine decay, or ``grow-batch`` (the 2017 advice:
keep the rate and grow the batch instead, here by accumulating 1, 2 then 4 batches). With
``max_minutes`` the run measures its own speed after three steps and fits the schedule (warm-up
included) into the budget, so a time-boxed run still ends with a decayed rate and a validation score.

Recipe options (each measured on real photos, docs/benchmarks.md "Core on real photos"): a head-only phase first
(``head_epochs``: the backbone frozen, only the heads learn, so the full fine-tune starts from a sensible
classifier rather than pushing random-head gradients into pretrained features), frozen early layer groups
(``freeze``: no backward through the high-resolution stem, the costliest part on a CPU; with
``map_cache_gb`` their output is kept per picture and later epochs train on crops of it, ``mapcache``), layer-wise
learning rates (``layer_decay``), mixup / cutmix between products, an exponential moving average of the
weights (``ema``, evaluated and kept in place of the raw weights), and keeping the best validation
weights (``keep="best"``). Validation runs every ``eval_every`` epochs, each a line of ``metrics.jsonl``
and a point of ``curves.png``.

``train`` reads as its steps: prepare the run, build the model and optimizer, start or restore the
state, then train epoch by epoch (fit the budget, step, checkpoint, evaluate) and finish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.taxonomy import taxonomy_beside
from etalage.core.config import RESUME_INVARIANTS, TrainConfig
from etalage.core.curves import write_curves
from etalage.core.data import (
    Batch,
    EpochSampler,
    PictureTransform,
    ProductDataset,
    auto_picture_size,
    collate,
    default_workers,
    to_device,
)
from etalage.core.mapcache import plan_map_cache
from etalage.core.model import build_model, network_of, safe_torch_load
from etalage.core.probe import (
    PROBE_BUDGET_SHARE,
    FeaturePass,
    Probe,
    ProbeTooSlow,
    ensemble_network,
    fit_run_probe,
    kept_network,
    load_probe_heads,
    pooled_features,
    probe_network,
    probe_side,
    probe_wanted,
    validation_mask,
)
from etalage.core.rundir import RunDir
from etalage.core.runtime import (
    DistInfo,
    all_sum,
    broadcast_int,
    broadcast_tensor,
    init_distributed,
    resolve_device,
)
from etalage.errors import ConfigError, DataError, TaxonomyError
from etalage.files import atomic_write, write_json_atomic
from etalage.progress import bar as progress_bar
from etalage.resources import usable_cpus

log = logging.getLogger(__name__)

HEAD_BUDGET_SHARE = 0.25  # the most of a time budget the head-only phase may take
BUDGET_MARGIN = 0.97      # share of --max-minutes the run plans to use (the rest: saving, the last validation)


def rate_at(progress: float, cfg: TrainConfig) -> float:
    """The rate at ``progress`` (0 to 1) of the fine-tune: linear warm-up over its first ``warmup`` share,
    then cosine decay to 2% of the peak (or, for grow-batch, the peak kept)."""
    if progress < cfg.warmup:
        return cfg.lr * max(progress / cfg.warmup, 1e-3)
    if cfg.schedule == "grow-batch":
        return cfg.lr
    p = min(1.0, (progress - cfg.warmup) / max(1e-9, 1 - cfg.warmup))
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))


def lr_at(step: int, total: int, cfg: TrainConfig, head_steps: int = 0) -> float:
    """The peak-relative rate at ``step`` of ``total`` (a run counted in steps): the head-only phase's first
    ``head_steps`` warm up and hold; the fine-tune after them warms up and decays over its own steps."""
    if step < head_steps:
        return cfg.lr * min(1.0, (step + 1) / max(1, int(0.1 * head_steps)))
    step, total = step - head_steps, max(1, total - head_steps)
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return rate_at(cfg.warmup + (1 - cfg.warmup) * (step - warm) / max(1, total - warm), cfg)


def accumulation_at(step: int, total: int, cfg: TrainConfig) -> int:
    """Batches per optimizer update: 1 for cosine; 1, 2, 4 over thirds of the run for grow-batch."""
    return accumulation_for(step / max(1, total), cfg)


def accumulation_for(progress: float, cfg: TrainConfig) -> int:
    if cfg.schedule != "grow-batch":
        return 1
    return 2 ** min(2, int(3 * progress))


def _loss(out: dict, labels: torch.Tensor, level1_of: torch.Tensor, level2_of: torch.Tensor,
          cfg: TrainConfig, mixed: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """Class loss plus the level heads' losses; with ``mixed`` = (partner labels, lam) the mixup /
    cutmix blend of the two products' losses."""
    def one(y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(out["logits"].float(), y, label_smoothing=cfg.label_smoothing)
        if cfg.level1_weight:
            loss = loss + cfg.level1_weight * F.cross_entropy(out["level1"].float(), level1_of[y])
        if cfg.level2_weight:
            loss = loss + cfg.level2_weight * F.cross_entropy(out["level2"].float(), level2_of[y])
        return loss

    if mixed is None:
        return one(labels)
    partner, lam = mixed
    return lam * one(labels) + (1 - lam) * one(partner)


def mix_products(x: torch.Tensor, picture_product: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                 rng: np.random.Generator) -> tuple[torch.Tensor, tuple[torch.Tensor, float] | None]:
    """Mixup or cutmix between products (one of the two per batch when both are on): each product is
    paired with another of the batch, and every picture of it is blended with (mixup) or gets a box of
    (cutmix) its partner's first picture. Returns the pictures and (partner labels, lam), or None when
    off. Seeded per step, so a resumed run mixes the same way."""
    modes = [m for m, a in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if a > 0]
    n = len(labels)
    if not modes or n < 2:
        return x, None
    mode = modes[int(rng.integers(len(modes)))]
    lam = float(rng.beta(cfg.mixup if mode == "mixup" else cfg.cutmix, cfg.mixup if mode == "mixup" else cfg.cutmix))
    perm = torch.as_tensor(rng.permutation(n), device=x.device)
    counts = torch.bincount(picture_product, minlength=n)
    first = torch.cumsum(counts, 0) - counts
    partner_pic = x[first[perm][picture_product]]
    if mode == "mixup":
        x = lam * x + (1 - lam) * partner_pic
    else:
        h, w = x.shape[2:]
        cut = np.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1, x0, x1 = max(0, cy - ch // 2), min(h, cy + ch // 2), max(0, cx - cw // 2), min(w, cx + cw // 2)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = partner_pic[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, (labels[perm], lam)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, mean, std, level1_of: torch.Tensor,
             level2_of: torch.Tensor, info: DistInfo, amp: bool, channels_last: bool) -> dict:
    """Product top-1 over the loader's products at each level (the best class's parents against the
    truth's, as the competition's hierarchy reads), summed over ranks."""
    was_training = model.training
    model.eval()
    correct = correct_l1 = correct_l2 = n = 0
    for batch in loader:
        x = to_device(batch, device, mean, std, channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x, batch.picture_product.to(device), batch.n_products)
        labels = batch.labels.to(device)
        best = out["logits"].argmax(1)
        correct += int((best == labels).sum())
        correct_l1 += int((level1_of[best] == level1_of[labels]).sum())
        correct_l2 += int((level2_of[best] == level2_of[labels]).sum())
        n += batch.n_products
    model.train(was_training)
    correct, correct_l1, correct_l2, n = all_sum([correct, correct_l1, correct_l2, n], info)
    nan = float("nan")
    return {"val_top1": correct / n if n else nan, "val_level2_top1": correct_l2 / n if n else nan,
            "val_level1_top1": correct_l1 / n if n else nan, "val_products": int(n)}


# ---------------------------------------------------------------------------------------------
# random state as tensors and plain values (so checkpoints load with weights_only=True)


def rng_state() -> dict:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n, p = state["numpy"], state["python"]
    if isinstance(n, dict):
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    else:  # etalage 0.1 (loaded with trust_pickle): numpy's and Python's own state tuples
        np.random.set_state(n)
        random.setstate(p)
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# the steps of a run


def prepare_run(cfg: TrainConfig, resume: bool) -> tuple[RunDir, Taxonomy, Catalog, np.ndarray]:
    """Check inputs and the run folder; returns (run, taxonomy, catalog, class label per product)."""
    cfg.check()
    run = RunDir(cfg.out)
    tax = taxonomy_beside(cfg.train, cfg.taxonomy, required=True)
    catalog = Catalog.open(cfg.train)
    if len(catalog) == 0:
        raise DataError(f"{cfg.train}: empty training set")
    catalog.require_labels()
    try:
        labels = tax.indices_of(catalog.category_ids)
    except TaxonomyError as exc:
        raise TaxonomyError(f"{cfg.train}: {exc} ({tax.source}); is this the right category file?") from None
    if run.checkpoint_file.exists() and not resume:
        raise ConfigError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    if resume:
        if not run.checkpoint_file.exists():
            raise ConfigError(f"{run}: nothing to resume (no checkpoint.pt)")
        saved = TrainConfig.from_dict(run.config())
        for key in RESUME_INVARIANTS:
            was, now = getattr(saved, key), getattr(cfg, key)
            if key == "freeze":  # what it resolves to (its default depends on the weights)
                was, now = saved.frozen_groups(), cfg.frozen_groups()
            if was != now:
                flag = "--" + key.replace("_", "-")
                raise ConfigError(f"--resume: {key} was {was!r} in {run}, now {now!r} (pass {flag} {was} to continue "
                                  f"it; a default may have changed)")
    return run, tax, catalog, labels


@dataclass
class TrainResult:
    status: str                  # "finished" or "paused" (signal or stop_after_steps: continue with resume)
    metrics: dict                # the last line of metrics.jsonl
    model: torch.nn.Module       # the weights this process holds (every rank's, under torchrun)


def _new_state(total_steps: int, head_steps: int) -> dict:
    return {"step": 0, "epoch": 0, "batch_in_epoch": 0, "total_steps": total_steps, "head_steps": head_steps,
            "elapsed_s": 0.0, "eval_s": 0.0, "fine_tune_start": None, "progress": 0.0, "loss_sum": 0.0,
            "loss_n": 0, "next_eval": None, "best_top1": None, "finished": False,
            "probe_s": 0.0,  # the probe's pass over the products and its fit, before the first step
            "map_cache": None}  # whether the run trains on kept frozen-layer maps (decided once, at its start)


def _make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the heads and the backbone's layer groups; each group carries its ``lr_scale``
    (``layer_decay`` per group below the heads) and weight decay only on weights, not biases or norms."""
    layers = [(model.head_parameters(), 1.0)]
    groups = model.backbone_groups()
    for depth, params in enumerate(reversed(groups), start=1):
        layers.append((params, cfg.layer_decay ** depth))
    param_groups = []
    for params, scale in layers:
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                param_groups.append({"params": chosen, "weight_decay": cfg.weight_decay if decay else 0.0,
                                     "lr_scale": scale})
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


def _save_checkpoint(run: RunDir, model, optimizer, state: dict, spec: dict, ema=None, probe: Probe | None = None
                     ) -> None:
    blob = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": state, "spec": spec,
            "rng": rng_state(), "probe": probe.as_state() if probe is not None else None}
    if ema is not None:
        blob["ema"] = ema.module.state_dict()
    with atomic_write(run.checkpoint_file, "wb") as fh:
        torch.save(blob, fh)


def progress_line(line: dict, epochs: float, seconds_left: float) -> str:
    """One human line per validation (the terminal's and ``-v`` logs'; ``metrics.jsonl`` keeps the numbers):
    ``epoch 2.0/7 (fine-tune): loss 0.921, validation top-1 0.812 (level 2 0.930, level 1 0.985), 312
    pictures/s, 6:12 left`` (minutes:seconds)."""
    minutes, seconds = divmod(int(round(seconds_left)), 60)
    left = f"{minutes}:{seconds:02d}"
    epoch = line["epoch"] - 1 + min(1.0, line.get("epoch_fraction", 1.0))  # an epoch in progress, or one just done
    return (f"epoch {epoch:.1f}/{epochs:.1f} ({line['phase']}): loss {line['train_loss']:.3f}, validation top-1 "
            f"{line['val_top1']:.3f} (level 2 {line['val_level2_top1']:.3f}, level 1 {line['val_level1_top1']:.3f}), "
            f"{line['train_pictures_per_s']:.0f} pictures/s, {left} left")


def _save_model(path: Path, state_dict: dict, spec: dict) -> None:
    with atomic_write(path, "wb") as fh:
        torch.save({"state_dict": state_dict, "spec": spec}, fh)


def _start_run_folder(run: RunDir, cfg: TrainConfig, tax: Taxonomy, val_pos: np.ndarray) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.config_file, asdict(cfg))
    tax.save(run.taxonomy_file)
    with atomic_write(run.val_file, "wb") as fh:
        np.save(fh, val_pos)
    for stale in (run.metrics_file, run.best_file, run.curves_file):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


class _Trainer:
    """One call of ``train``: what the steps share (devices, data, model, optimizer, progress state)."""

    def __init__(self, cfg: TrainConfig, resume: bool, progress: bool, trust_pickle: bool = False):
        self.cfg, self.progress, self.trust_pickle, self.resumed = cfg, progress, trust_pickle, resume
        device_kind = "cuda" if (cfg.device in ("auto", "cuda") and torch.cuda.is_available()) else "cpu"
        self.info = init_distributed(device_kind)
        self.device = resolve_device(cfg.device, self.info.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        elif self.info.world > 1:
            torch.set_num_threads(max(1, usable_cpus() // self.info.world))
        self.run, self.tax, self.catalog, self.labels = prepare_run(cfg, resume)
        torch.manual_seed(cfg.seed)
        self._build_model(resume)
        ckpt = safe_torch_load(self.run.checkpoint_file, "checkpoint",
                               f"start the run again without --resume (another --out) or delete {self.run}",
                               trust_pickle) if resume else None
        self._split(ckpt)
        self.batch_size = self._batch_size()
        self._build_state(ckpt)
        self._make_loaders()
        if ckpt is None and self.probe is not None and self.info.is_main:
            self._checkpoint()  # a run killed from here on resumes without reading every product again

    def _batch_size(self) -> int:
        per_rank = len(self.train_pos) // self.info.world
        if per_rank >= self.cfg.batch_size:
            return self.cfg.batch_size
        if per_rank < 1:
            raise DataError(f"{self.cfg.train}: {len(self.train_pos)} training products, too few for "
                            f"{self.info.world} processes")
        log.warning("batch size %d > %d training products per process; using %d", self.cfg.batch_size, per_rank,
                    per_rank)
        return per_rank

    def _picture_settings(self) -> dict:
        """The picture side (given, or read off the dump), the training crop and how pictures are squared."""
        cfg = self.cfg
        size = cfg.picture_size or auto_picture_size(self.catalog, self.device.type)
        crop = cfg.crop_for(size)
        if crop > size:
            raise ConfigError(f"--crop {crop} is larger than the picture side {size} (--picture-size)")
        if cfg.picture_size is None:
            log.info("picture size %d (from %s's pictures; --picture-size to choose), training crops of %d",
                     size, Path(cfg.train).name, crop)
        return {"picture_size": size, "crop": crop, "resize": cfg.resize}

    def _build_model(self, resume: bool) -> None:
        """The network (pretrained weights on a new run; a resumed one loads its checkpoint's) on the device."""
        cfg, tax = self.cfg, self.tax
        self.model, self.spec = build_model(tax.n_classes, tax.n_level1, tax.n_level2, cfg.backbone,
                                            None if resume else cfg.weights, cfg.picture_pooling, cfg.dropout)
        self.spec.update(self._picture_settings())
        self.channels_last = self.device.type == "cpu" if cfg.channels_last is None else cfg.channels_last
        self.amp = self.device.type == "cuda"  # bf16 autocast
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _split(self, ckpt: dict | None) -> None:
        """The held-out products and the probe (``etalage.core.probe``). A new run with pretrained weights reads
        every product through the backbone once (rank 0 alone under torchrun; the others wait for its split and
        heads), groups near-duplicates for the split and fits the probe; a resumed run reads both back (the
        split from ``val_positions.npy`` when it depended on those features)."""
        cfg, info = self.cfg, self.info
        self.probe_seconds = 0.0
        if ckpt is not None:
            self.probe = Probe.from_state(ckpt.get("probe"))
            if cfg.val_groups:
                val_mask = np.zeros(len(self.labels), bool)
                val_mask[self.run.val_positions()] = True
            else:
                val_mask = validation_mask(cfg, self.labels)
        else:
            t0 = time.perf_counter()
            wanted = probe_wanted(cfg, len(self.catalog), len(np.unique(self.labels)))
            features = self._pretrained_features() if wanted and info.is_main else None
            val_mask = validation_mask(cfg, self.labels, features)
            if info.world > 1:
                val_mask = broadcast_tensor(torch.from_numpy(val_mask.astype(np.uint8)), info).numpy().astype(bool)
            self.probe = None
            if features is not None and (cfg.probe_init or cfg.keep_probe):
                self.probe = fit_run_probe(features, self.labels, val_mask, self.tax, cfg.seed,
                                           probe_side(self.catalog, cfg.probe_size))
                if cfg.probe_init:  # the heads of the training part only: the validation part stays unseen
                    load_probe_heads(self.model, self.probe.heads)
            if wanted and cfg.probe_init and info.world > 1:
                for p in self.model.head_parameters():
                    p.data.copy_(broadcast_tensor(p.data.cpu(), info))
            # every rank counts the pass (the others waited for it), so that their clocks agree on the budget
            self.probe_seconds = time.perf_counter() - t0 if wanted else 0.0
            if self.probe is not None:
                self.probe.seconds = self.probe_seconds
                log.info("%s", self.probe.summary())
        self.train_pos, self.val_pos = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)

    def _pretrained_features(self) -> np.ndarray:
        """Every training product's pretrained features at the probe's side (``etalage.core.probe``)."""
        cfg = self.cfg
        side = probe_side(self.catalog, cfg.probe_size)
        workers = cfg.workers if cfg.workers is not None else default_workers(self.device)
        allowed = cfg.max_minutes * 60 * PROBE_BUDGET_SHARE if cfg.max_minutes else None
        try:
            return pooled_features(self.model.backbone, self.catalog, np.arange(len(self.catalog)),
                                   PictureTransform(side, side, cfg.resize, "none"), self.device,
                                   (self.spec["mean"], self.spec["std"]),
                                   FeaturePass(self.cfg.batch_size, self.channels_last,
                                               self.progress and self.info.is_main, workers, allowed))
        except ProbeTooSlow as slow:
            log.info("no linear probe: %s; the heads start at random and the validation part is random", slow)
            return None

    def _build_state(self, ckpt: dict | None) -> None:
        """Optimizer and progress state: new, or restored from the checkpoint."""
        cfg = self.cfg
        self.optimizer = _make_optimizer(self.model, cfg)
        self.sampler = EpochSampler(len(self.train_pos), self.batch_size, cfg.seed, self.info.rank, self.info.world)
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        head_steps = int(round(cfg.head_epochs * self.steps_per_epoch))
        self.state = _new_state(head_steps + max(1, int(cfg.planned_epochs * self.steps_per_epoch)), head_steps)
        # the probe's pass is part of the run (and of --max-minutes)
        self.state["elapsed_s"] = self.state["probe_s"] = self.probe_seconds
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema, use_warmup=True)
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.state.update(ckpt["progress"])
            self.spec = ckpt["spec"]  # normalisation of the original weights, not of a random init
            if self.ema is not None:
                self.ema.module.load_state_dict(ckpt["ema"])
            set_rng_state(ckpt["rng"])
        elif self.info.is_main:
            _start_run_folder(self.run, cfg, self.tax, self.val_pos)
        self._set_phase()

    def _set_phase(self) -> None:
        """The head-only phase freezes the whole backbone; the fine-tune only the ``freeze`` first groups.
        DDP is wrapped again for each phase: it synchronises the parameters that train when it is built."""
        self.in_head_phase = self.state["step"] < self.state["head_steps"]
        self.model.set_frozen(None if self.in_head_phase else self.cfg.frozen_groups())
        self.ddp_model = self.model
        if self.info.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(self.ddp_model) if self.cfg.compile else self.ddp_model
        self.ddp_model.train()

    def _make_loaders(self) -> None:
        cfg, info = self.cfg, self.info
        workers = cfg.workers if cfg.workers is not None else default_workers(self.device, info.world)
        size, crop = self.spec["picture_size"], self.spec["crop"]
        train_tf = PictureTransform(size, crop, self.spec.get("resize", "stretch"), cfg.augment,
                                    cfg.picture_pooling == "mosaic")
        self.map_cache = self._plan_map_cache()
        self.from_group = self.map_cache.groups if self.map_cache is not None else 0
        if self.map_cache is not None:
            train_ds = self.map_cache.dataset(self.catalog, self.train_pos, self.labels[self.train_pos], train_tf,
                                              cfg.seed)
        else:
            train_ds = ProductDataset(self.catalog, self.train_pos, self.labels[self.train_pos], train_tf, train=True,
                                      seed=cfg.seed)
        self.loader = torch.utils.data.DataLoader(
            train_ds, batch_size=self.batch_size, sampler=self.sampler, num_workers=workers,
            collate_fn=train_ds.collate if self.map_cache is not None else collate,
            pin_memory=self.device.type == "cuda", drop_last=True,
            persistent_workers=workers > 0,  # no worker start-up every epoch
            # its own generator: a new iterator after --resume must not consume the global RNG that
            # dropout draws from
            generator=torch.Generator().manual_seed(cfg.seed))
        mine = self.val_pos[info.rank::info.world]
        val_ds = ProductDataset(self.catalog, mine, self.labels[mine], PictureTransform.of_model(self.spec))
        self.val_loader = torch.utils.data.DataLoader(val_ds, batch_size=self.batch_size, collate_fn=collate,
                                                      num_workers=workers, persistent_workers=workers > 0)
        self.level1_of = torch.as_tensor(self.tax.level1_of, dtype=torch.int64, device=self.device)
        self.level2_of = torch.as_tensor(self.tax.level2_of, dtype=torch.int64, device=self.device)

    def _plan_map_cache(self):
        """The kept frozen-layer maps the run trains on (``etalage.core.mapcache``), or None: decided when the
        run starts and kept by a resumed one (which trains on pictures again only where the maps cannot be
        kept any more, e.g. a full disk, and says so)."""
        if self.resumed and not self.state["map_cache"]:
            return None
        cache = plan_map_cache(self.cfg, self.run, self.model, self.catalog, self.train_pos, self.spec, self.device,
                               self.channels_last, self.info.world)
        if self.resumed and cache is None:
            log.warning("%s began on kept frozen-layer maps and continues on pictures", self.run)
        self.state["map_cache"] = cache is not None
        return cache

    def _inputs(self, batch) -> torch.Tensor:
        """The batch as the network's input: normalised pictures, or the frozen layers' cropped maps."""
        if self.map_cache is not None:
            return self.map_cache.inputs(batch)
        return to_device(batch, self.device, self.spec["mean"], self.spec["std"], self.channels_last)

    # -- the loop --------------------------------------------------------------------------------
    def run_all(self) -> TrainResult:
        if self.state["finished"]:
            log.info("%s: run already finished", self.run)
            return TrainResult("finished", self.run.last_metrics(), self.model)
        stop = {"signal": None}
        old_handlers = {}
        if self.info.world == 1:
            for s in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(ValueError):  # not in the main thread
                    old_handlers[s] = signal.signal(s, lambda signum, _frame: stop.update(signal=signum))
        try:
            status = self._epochs(stop)
            self._finish(status)
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
        return TrainResult(status, self.run.last_metrics(), self.model)

    def _eval_interval(self) -> int:
        return max(1, int(round(self.cfg.eval_every * self.steps_per_epoch)))

    def _epochs(self, stop: dict) -> str:
        state = self.state
        self.t_start = time.perf_counter() - state["elapsed_s"]
        self.first_step = state["step"]  # stop_after_steps counts the steps of this call: a job in slices
        self.last_ckpt = time.perf_counter()
        self.eval_cost: float | None = None
        if state["next_eval"] is None:
            state["next_eval"] = self._eval_interval()
        self.ddp_model.train()
        while state["step"] < state["total_steps"]:
            status = self._train_epoch(stop)
            if status == "paused":
                return status
            if state["batch_in_epoch"] >= self.steps_per_epoch or state["step"] >= state["total_steps"] \
                    or state["step"] >= state["next_eval"]:
                self._evaluate_and_log()
        return "finished"

    def _train_epoch(self, stop: dict) -> str:
        state, cfg = self.state, self.cfg
        self.sampler.set_epoch(state["epoch"], state["batch_in_epoch"])
        bar = progress_bar(total=self.steps_per_epoch, initial=state["batch_in_epoch"],
                           desc=f"epoch {state['epoch'] + 1}", unit="batch", enabled=self.progress and self.info.is_main)
        self.pictures_seen, self.t_epoch = 0, time.perf_counter()
        try:
            for batch in self.loader:
                if self.in_head_phase and state["step"] >= state["head_steps"]:
                    self._set_phase()  # the head-only phase is over: the fine-tune begins
                sync = self._step(batch)
                rate = self.pictures_seen * self.info.world / max(1e-9, time.perf_counter() - self.t_epoch)
                bar.set_postfix(loss=f"{state['loss_sum'] / state['loss_n']:.3f}", pic_s=f"{rate:.0f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
                bar.update(1)
                now = time.perf_counter()
                state["elapsed_s"] = now - self.t_start
                self._follow_budget()
                paused = cfg.stop_after_steps is not None and state["step"] - self.first_step >= cfg.stop_after_steps
                if (stop["signal"] is not None or paused) and sync:  # never drop accumulated gradients
                    return "paused"
                if state["step"] >= state["total_steps"] or (state["step"] >= state["next_eval"] and sync):
                    break
                if self.info.is_main and now - self.last_ckpt > cfg.checkpoint_minutes * 60:
                    self._checkpoint()
                    self.last_ckpt = now
        finally:
            bar.close()
        return "running"

    def _step(self, batch: Batch) -> bool:
        """One batch forward and backward (and an optimizer update when accumulation is complete)."""
        state, cfg = self.state, self.cfg
        step, total = state["step"], state["total_steps"]
        if cfg.max_minutes and not self.in_head_phase:  # the budget's share spent, or the steps', if further
            progress = max(state["progress"], (step - state["head_steps"]) / max(1, total - state["head_steps"]))
            accum, rate = accumulation_for(progress, cfg), rate_at(progress, cfg)
        else:
            accum, rate = accumulation_at(step, total, cfg), lr_at(step, total, cfg, state["head_steps"])
        for group in self.optimizer.param_groups:
            group["lr"] = rate * group.get("lr_scale", 1.0)
        x = self._inputs(batch)
        y = batch.labels.to(self.device, non_blocking=True)
        owner = batch.picture_product.to(self.device, non_blocking=True)
        x, mixed = mix_products(x, owner, y, cfg, np.random.default_rng([cfg.seed, step, 1]))
        sync = (step + 1) % accum == 0 or step + 1 == total
        ctx = self.ddp_model.no_sync() if (self.info.world > 1 and not sync) else contextlib.nullcontext()
        with ctx:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.forward(x, owner, batch.n_products, self.from_group)
            loss = _loss(out, y, self.level1_of, self.level2_of, cfg, mixed)
            (loss / accum).backward()
        if sync:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model, step=step + 1)
        state["step"] += 1
        state["batch_in_epoch"] += 1
        state["loss_sum"] += float(loss.detach())
        state["loss_n"] += 1
        self.pictures_seen += len(batch.picture_product)
        return sync

    def _follow_budget(self) -> None:
        """With ``max_minutes``, after each step: the schedule follows the time spent, not a number of steps
        guessed from the first ones (pages of the dump read for the first time, cold caches or another job
        make those unrepresentative). The head-only phase ends after ``head_epochs`` or
        ``HEAD_BUDGET_SHARE`` of the budget; the fine-tune's progress is its training time over the
        training time left to it (the budget less the validations already run and those still to come,
        estimated from the last one), so its warm-up and decay stretch over the whole budget whatever the
        speed, and it stops when that reaches 1 (or at ``--epochs``). Rank 0's clock decides under DDP."""
        state, cfg = self.state, self.cfg
        if not cfg.max_minutes:
            return
        budget = cfg.max_minutes * 60 * BUDGET_MARGIN
        now = state["elapsed_s"]
        if self.in_head_phase:
            over = broadcast_int(int(now > HEAD_BUDGET_SHARE * budget), self.info)
            if over:
                state["total_steps"] -= state["head_steps"] - state["step"]
                state["head_steps"] = state["step"]
                log.info("time budget: head-only phase ends after %d steps", state["step"])
            return
        if state["fine_tune_start"] is None:
            state["fine_tune_start"] = [now, state["eval_s"], state["step"]]
        start, evals_before, first = state["fine_tune_start"]
        evals = state["eval_s"] - evals_before
        trained = now - start - evals
        per_step = trained / max(1, state["step"] - first)
        eval_cost = self.eval_cost if self.eval_cost is not None else \
            per_step * len(self.val_pos) / max(1, self.batch_size * self.info.world) * 0.5
        left = max(0.0, budget - now)
        evals_to_come = 1 + left / max(1e-9, self._eval_interval() * per_step + eval_cost)
        available = max(trained, budget - start - evals - eval_cost * evals_to_come)
        progress = broadcast_int(int(1e6 * min(1.0, trained / max(1e-9, available))), self.info) / 1e6
        state["progress"] = progress
        if progress >= 1.0 or now > cfg.max_minutes * 60:
            state["total_steps"] = state["step"]

    def _evaluated_model(self):
        return self.ema.module if self.ema is not None else self.forward

    def _evaluate_and_log(self) -> None:
        state = self.state
        t_eval = time.perf_counter()
        metrics = evaluate(self._evaluated_model(), self.val_loader, self.device, self.spec["mean"], self.spec["std"],
                           self.level1_of, self.level2_of, self.info, self.amp, self.channels_last)
        elapsed = time.perf_counter() - self.t_epoch
        epoch_done = state["batch_in_epoch"] >= self.steps_per_epoch
        line = {"epoch": state["epoch"] + 1, "step": state["step"],
                "epoch_fraction": state["batch_in_epoch"] / self.steps_per_epoch,
                "phase": "head" if self.in_head_phase else "fine-tune",
                "train_loss": state["loss_sum"] / max(1, state["loss_n"]),
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_pictures_per_s": self.pictures_seen * self.info.world / max(1e-9, elapsed),
                "elapsed_s": time.perf_counter() - self.t_start, **metrics}
        if state["probe_s"]:
            line["probe_seconds"] = state["probe_s"]
        if self.map_cache is not None:  # share of this interval's pictures read from the kept maps
            cache = self.map_cache
            line["maps_read"] = cache.hits / max(1, cache.hits + cache.misses)
            cache.hits = cache.misses = 0
        self.eval_cost = time.perf_counter() - t_eval
        state["eval_s"] += self.eval_cost
        state.update(epoch=state["epoch"] + int(epoch_done), batch_in_epoch=0 if epoch_done else
                     state["batch_in_epoch"], loss_sum=0.0, loss_n=0,
                     next_eval=state["step"] + self._eval_interval())
        better = state["best_top1"] is None or not metrics["val_top1"] <= state["best_top1"]
        if better and not math.isnan(metrics["val_top1"]):
            state["best_top1"] = metrics["val_top1"]
        if self.info.is_main:
            if better and self.cfg.keep == "best":
                _save_model(self.run.best_file, self._kept_weights(), self.spec)
            with open(self.run.metrics_file, "a") as fh:
                fh.write(json.dumps(line) + "\n")
            log.info("%s", progress_line(line, self._epochs_planned(), self._seconds_left(line["elapsed_s"])))
            write_curves(self.run)
            self._checkpoint()
            self.last_ckpt = time.perf_counter()

    def _epochs_planned(self) -> float:
        """Epochs the schedule runs to: with a time budget, the fine-tune's steps so far over its progress through
        the budget (what the speed so far lets it fit), never more than ``--epochs`` allows."""
        state, per_epoch = self.state, max(1, self.steps_per_epoch)
        cap = state["total_steps"] / per_epoch
        progress = state.get("progress", 0.0)
        if not self.cfg.max_minutes or progress <= 0:
            return cap
        fine_tune = (state["step"] - state["head_steps"]) / progress
        return min(cap, (state["head_steps"] + fine_tune) / per_epoch)

    def _seconds_left(self, elapsed: float) -> float:
        """Time left: the budget's, with a time budget, else the remaining steps at the speed so far."""
        if self.cfg.max_minutes:
            return max(0.0, self.cfg.max_minutes * 60 - elapsed)
        done = max(1, self.state["step"])
        return elapsed / done * max(0, self.state["total_steps"] - done)

    def _kept_weights(self) -> dict:
        return (self.ema.module if self.ema is not None else self.model).state_dict()

    def _checkpoint(self) -> None:
        if self.map_cache is not None:
            self.map_cache.save()
        _save_checkpoint(self.run, self.model, self.optimizer, self.state, self.spec, self.ema, self.probe)

    def _finish(self, status: str) -> None:
        other = self._kept() if status == "finished" and self.info.is_main else None
        if status == "finished":
            self.state["finished"] = True
        if self.info.is_main:
            self._checkpoint()
            if status == "finished":
                if other is not None:
                    _save_model(self.run.model_file, *other)
                    with contextlib.suppress(FileNotFoundError):
                        self.run.best_file.unlink()
                elif self.cfg.keep == "best" and self.run.best_file.exists():
                    os.replace(self.run.best_file, self.run.model_file)
                else:
                    _save_model(self.run.model_file, self._kept_weights(), self.spec)
                if self.map_cache is not None:
                    self.map_cache.remove()
        if self.info.world > 1:
            dist.barrier()

    def _kept(self) -> tuple[dict, dict] | None:
        """(state dict, spec) of the network ``model.pt`` holds instead of the fine-tune (``keep_probe``): the
        probe, or the mean of the probe and the fine-tune (``ProbeEnsemble``, validated here); None: the
        fine-tune. Which, and why, is said in the last line of ``metrics.jsonl`` (with the probe's and the
        mean's validation scores) and in the log."""
        if self.probe is None or not self.cfg.keep_probe:
            return None
        lines = self.run.metrics()
        fine = {}
        if lines:
            fine = max(lines, key=lambda m: m["val_top1"]) if self.cfg.keep == "best" else lines[-1]
        ensemble = ensemble_val = None
        if len(self.val_pos) and self.cfg.picture_pooling != "mosaic":  # a mosaic is not the probe's pictures
            ensemble = ensemble_network(self.probe, self._fine_tuned_weights(), self.spec, self.cfg.weights,
                                        self.cfg.resize)
            ensemble_val = self._validate(*ensemble)
        kept, why = kept_network(fine, self.probe.val, ensemble_val)
        self.run.amend_last_metrics({"kept": kept, "kept_because": why,
                                     **{f"probe_{k}": v for k, v in self.probe.val.items()},
                                     **{f"ensemble_{k}": v for k, v in (ensemble_val or {}).items()}})
        log.info("model.pt: %s", why)
        if kept == "probe":
            return probe_network(self.probe, self.spec, self.cfg.weights, self.cfg.resize)
        return ensemble if kept == "ensemble" else None

    def _fine_tuned_weights(self) -> dict:
        """The fine-tuned weights ``model.pt`` would hold: the best validated (``--keep best``) or the last."""
        if self.cfg.keep == "best" and self.run.best_file.exists():
            return safe_torch_load(self.run.best_file, "best weights",
                                   f"retrain with `etalage train --out {self.run.path}`")["state_dict"]
        return self._kept_weights()

    def _validate(self, state_dict: dict, spec: dict) -> dict:
        """Validation top-1 at each level of the network ``spec`` describes with ``state_dict`` (this process's
        share of nothing: called on the main rank alone, so counted there alone)."""
        model = network_of(spec)
        model.load_state_dict(state_dict)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        ds = ProductDataset(self.catalog, self.val_pos, self.labels[self.val_pos], PictureTransform.of_model(spec))
        workers = self.cfg.workers if self.cfg.workers is not None else default_workers(self.device)
        loader = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, collate_fn=collate,
                                             num_workers=workers)
        with torch.no_grad():
            return evaluate(model, loader, self.device, spec["mean"], spec["std"], self.level1_of, self.level2_of,
                            DistInfo(), self.amp, self.channels_last)


def fold_runs(out: str | Path, folds: int) -> list[RunDir]:
    """The run folders of a fold set (``train --folds K --fold all --out OUT``): ``OUT/fold0`` ..."""
    return [RunDir(Path(out) / f"fold{i}") for i in range(folds)]


def train_folds(cfg: TrainConfig, progress: bool = True, trust_pickle: bool = False) -> list[TrainResult]:
    """Train the ``cfg.folds`` fold runs of one split one after the other into ``OUT/fold0`` ...: each
    holds its fold out, the same ``max_minutes`` each. A finished fold is kept and an interrupted one
    resumed, so the command continues where it stopped; a paused fold stops the loop."""
    results = []
    for run in fold_runs(cfg.out, cfg.folds):
        fold_cfg = replace(cfg, fold=int(run.path.name[4:]), out=str(run.path))
        if run.finished:
            log.info("%s: finished before", run)
            results.append(TrainResult("finished", run.last_metrics(), None))
            continue
        log.info("fold %d of %d -> %s", fold_cfg.fold + 1, cfg.folds, run)
        res = train(fold_cfg, resume=run.checkpoint_file.exists(), progress=progress, trust_pickle=trust_pickle)
        results.append(res)
        if res.status != "finished":
            break
    return results


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, trust_pickle: bool = False) -> TrainResult:
    """Train (or continue) a run. Works under ``torchrun`` (every rank calls it). ``trust_pickle``: resume
    from a checkpoint that holds more than tensors and plain values (etalage 0.1 saved numpy random
    states): it can run code, so only for checkpoints you made yourself.

    The run seeds and steps the random generators (torch's, numpy's, Python's) and, with several processes on
    a CPU, sets torch's threads: all of them are put back as they were when it returns, so a caller's
    notebook goes on as before.

    >>> result = train(TrainConfig(train="train.bson", out="runs/first", max_minutes=20))
    >>> result.status, result.metrics["val_top1"]
    """
    saved, threads = rng_state(), torch.get_num_threads()
    try:
        return _Trainer(cfg, resume, progress, trust_pickle).run_all()
    finally:
        set_rng_state(saved)
        torch.set_num_threads(threads)
