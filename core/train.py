"""Training the core CNN on one process or many (``torchrun``), resumable to the exact batch.

A run folder (``RunDir``) holds everything: the settings, the taxonomy the class indices refer to,
the held-out products (which fusion trains on later), one metrics line per epoch, the checkpoint
(model, optimizer, step, epoch, batch within the epoch, RNG states; tensors and plain values only,
so it loads with ``weights_only=True``) and, when done, ``model.pt`` for ``etalage predict``.

Schedules: AdamW with linear warm-up then cosine decay, or ``grow-batch`` (the 2017 advice:
keep the rate and grow the batch instead, here by accumulating 1, 2 then 4 batches). With
``max_minutes`` the run measures its own speed after three steps and fits the schedule (warm-up
included) into the budget, so a time-boxed run still ends with a decayed rate and a validation score.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from etalage.catalog import Catalog, Taxonomy, validation_split
from etalage.core.config import RESUME_INVARIANTS, TrainConfig
from etalage.core.data import Batch, EpochSampler, ProductDataset, collate, default_workers, to_device
from etalage.core.model import build_model, safe_torch_load
from etalage.core.rundir import RunDir
from etalage.core.runtime import DistInfo, all_sum, broadcast_int, init_distributed, resolve_device
from etalage.errors import ConfigError, DataError, TaxonomyError
from etalage.files import atomic_write, write_json_atomic
from etalage.progress import bar as progress_bar

log = logging.getLogger(__name__)

BUDGET_PROBE_STEPS = 3  # steps timed before a time-boxed run fits its schedule into the budget


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "grow-batch":
        return cfg.lr
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def accumulation_at(step: int, total: int, cfg: TrainConfig) -> int:
    """Batches per optimizer update: 1 for cosine; 1, 2, 4 over thirds of the run for grow-batch."""
    if cfg.schedule != "grow-batch":
        return 1
    return 2 ** min(2, int(3 * step / max(1, total)))


def _loss(out: dict, labels: torch.Tensor, level1_of: torch.Tensor, level2_of: torch.Tensor,
          cfg: TrainConfig) -> torch.Tensor:
    loss = F.cross_entropy(out["logits"].float(), labels, label_smoothing=cfg.label_smoothing)
    if cfg.level1_weight:
        loss = loss + cfg.level1_weight * F.cross_entropy(out["level1"].float(), level1_of[labels])
    if cfg.level2_weight:
        loss = loss + cfg.level2_weight * F.cross_entropy(out["level2"].float(), level2_of[labels])
    return loss


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, mean, std, level1_of: torch.Tensor,
             info: DistInfo, amp: bool, channels_last: bool) -> dict:
    """Product top-1 (and level-1 top-1) over the loader's products, summed over ranks."""
    was_training = model.training
    model.eval()
    correct = correct_l1 = n = 0
    for batch in loader:
        x = to_device(batch, device, mean, std, channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x, batch.picture_product.to(device), batch.n_products)
        labels = batch.labels.to(device)
        correct += int((out["logits"].argmax(1) == labels).sum())
        correct_l1 += int((out["level1"].argmax(1) == level1_of[labels]).sum())
        n += batch.n_products
    model.train(was_training)
    correct, correct_l1, n = all_sum([correct, correct_l1, n], info)
    return {"val_top1": correct / n if n else float("nan"), "val_level1_top1": correct_l1 / n if n else float("nan"),
            "val_products": int(n)}


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
    tax_path = Path(cfg.taxonomy) if cfg.taxonomy else Path(cfg.train).parent / "category_names.csv"
    if not tax_path.exists():
        raise TaxonomyError(f"{tax_path}: no category file; pass --taxonomy category_names.csv")
    tax = Taxonomy.load(tax_path)
    catalog = Catalog.open(cfg.train)
    if len(catalog) == 0:
        raise DataError(f"{cfg.train}: empty training set")
    catalog.require_labels()
    try:
        labels = tax.indices_of(catalog.category_ids)
    except TaxonomyError as exc:
        raise TaxonomyError(f"{cfg.train}: {exc} ({tax_path}); is this the right category file?") from None
    if run.checkpoint_file.exists() and not resume:
        raise ConfigError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    if resume:
        if not run.checkpoint_file.exists():
            raise ConfigError(f"{run}: nothing to resume (no checkpoint.pt)")
        saved = TrainConfig.from_dict(run.config())
        for key in RESUME_INVARIANTS:
            if getattr(saved, key) != getattr(cfg, key):
                raise ConfigError(f"--resume: {key} was {getattr(saved, key)!r} in {run}, now {getattr(cfg, key)!r}")
    return run, tax, catalog, labels


@dataclass
class TrainResult:
    status: str                  # "finished" or "paused" (signal or stop_after_steps: continue with resume)
    metrics: dict                # the last line of metrics.jsonl
    model: torch.nn.Module       # the weights this process holds (every rank's, under torchrun)


def _new_state(total_steps: int) -> dict:
    return {"step": 0, "epoch": 0, "batch_in_epoch": 0, "total_steps": total_steps, "budget_fitted": False,
            "elapsed_s": 0.0, "loss_sum": 0.0, "loss_n": 0, "finished": False}


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def _save_checkpoint(run: RunDir, model, optimizer, state: dict, spec: dict) -> None:
    with atomic_write(run.checkpoint_file, "wb") as fh:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": state,
                    "spec": spec, "rng": rng_state()}, fh)


def _start_run_folder(run: RunDir, cfg: TrainConfig, tax: Taxonomy, val_pos: np.ndarray) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.config_file, asdict(cfg))
    tax.save(run.taxonomy_file)
    with atomic_write(run.val_file, "wb") as fh:
        np.save(fh, val_pos)
    with contextlib.suppress(FileNotFoundError):
        run.metrics_file.unlink()


class _Trainer:
    """One call of ``train``: what the steps share (devices, data, model, optimizer, progress state)."""

    def __init__(self, cfg: TrainConfig, resume: bool, progress: bool, trust_pickle: bool = False):
        self.cfg, self.progress, self.trust_pickle = cfg, progress, trust_pickle
        device_kind = "cuda" if (cfg.device in ("auto", "cuda") and torch.cuda.is_available()) else "cpu"
        self.info = init_distributed(device_kind)
        self.device = resolve_device(cfg.device, self.info.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        elif self.info.world > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.info.world))
        self.run, self.tax, self.catalog, self.labels = prepare_run(cfg, resume)
        torch.manual_seed(cfg.seed)
        val_mask = validation_split(self.labels, cfg.val_fraction, cfg.seed)
        self.train_pos, self.val_pos = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
        self.batch_size = self._batch_size()
        self._build(resume)
        self._make_loaders()

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

    def _build(self, resume: bool) -> None:
        """Model, optimizer and progress state: new, or restored from the checkpoint."""
        cfg, tax = self.cfg, self.tax
        self.model, self.spec = build_model(tax.n_classes, tax.n_level1, tax.n_level2, cfg.backbone,
                                            None if resume else cfg.weights, cfg.picture_fusion, cfg.dropout)
        self.spec["picture_size"] = cfg.picture_size
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        self.amp = self.device.type == "cuda"  # bf16 autocast
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = _make_optimizer(self.model, cfg)
        self.sampler = EpochSampler(len(self.train_pos), self.batch_size, cfg.seed, self.info.rank, self.info.world)
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        self.state = _new_state(max(1, int(cfg.epochs * self.steps_per_epoch)))
        if resume:
            ckpt = safe_torch_load(self.run.checkpoint_file, "checkpoint",
                                   f"start the run again without --resume (another --out) or delete {self.run}",
                                   self.trust_pickle)
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.state.update(ckpt["progress"])
            self.spec = ckpt["spec"]  # normalisation of the original weights, not of a random init
            set_rng_state(ckpt["rng"])
        elif self.info.is_main:
            _start_run_folder(self.run, cfg, self.tax, self.val_pos)
        self.ddp_model = self.model
        if self.info.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(self.ddp_model) if cfg.compile else self.ddp_model

    def _make_loaders(self) -> None:
        cfg, info = self.cfg, self.info
        workers = cfg.workers if cfg.workers is not None else default_workers(self.device, info.world)
        train_ds = ProductDataset(self.catalog, self.train_pos, self.labels[self.train_pos], cfg.picture_size,
                                  cfg.crop, cfg.seed)
        self.loader = torch.utils.data.DataLoader(
            train_ds, batch_size=self.batch_size, sampler=self.sampler, collate_fn=collate, num_workers=workers,
            pin_memory=self.device.type == "cuda", drop_last=True,
            persistent_workers=workers > 0,  # no worker start-up every epoch
            # its own generator: a new iterator after --resume must not consume the global RNG that
            # dropout draws from
            generator=torch.Generator().manual_seed(cfg.seed))
        mine = self.val_pos[info.rank::info.world]
        val_ds = ProductDataset(self.catalog, mine, self.labels[mine], cfg.picture_size, None)
        self.val_loader = torch.utils.data.DataLoader(val_ds, batch_size=self.batch_size, collate_fn=collate,
                                                      num_workers=workers, persistent_workers=workers > 0)
        self.level1_of = torch.as_tensor(self.tax.level1_of, dtype=torch.int64, device=self.device)
        self.level2_of = torch.as_tensor(self.tax.level2_of, dtype=torch.int64, device=self.device)

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

    def _epochs(self, stop: dict) -> str:
        state = self.state
        self.t_start = time.perf_counter() - state["elapsed_s"]
        self.first_step = state["step"]  # stop_after_steps counts the steps of this call: a job in slices
        self.last_ckpt = time.perf_counter()
        self.probe: tuple[float, int] | None = None
        self.ddp_model.train()
        while state["step"] < state["total_steps"]:
            status = self._train_epoch(stop)
            if status == "paused":
                return status
            if state["batch_in_epoch"] >= self.steps_per_epoch or state["step"] >= state["total_steps"]:
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
                sync = self._step(batch)
                rate = self.pictures_seen * self.info.world / max(1e-9, time.perf_counter() - self.t_epoch)
                bar.set_postfix(loss=f"{state['loss_sum'] / state['loss_n']:.3f}", pic_s=f"{rate:.0f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
                bar.update(1)
                now = time.perf_counter()
                state["elapsed_s"] = now - self.t_start
                self._fit_budget(now)
                paused = cfg.stop_after_steps is not None and state["step"] - self.first_step >= cfg.stop_after_steps
                if (stop["signal"] is not None or paused) and sync:  # never drop accumulated gradients
                    return "paused"
                if cfg.max_minutes and state["elapsed_s"] > cfg.max_minutes * 60:
                    state["total_steps"] = state["step"]
                if state["step"] >= state["total_steps"]:
                    break
                if self.info.is_main and now - self.last_ckpt > cfg.checkpoint_minutes * 60:
                    _save_checkpoint(self.run, self.model, self.optimizer, state, self.spec)
                    self.last_ckpt = now
        finally:
            bar.close()
        return "running"

    def _step(self, batch: Batch) -> bool:
        """One batch forward and backward (and an optimizer update when accumulation is complete)."""
        state, cfg = self.state, self.cfg
        step, total = state["step"], state["total_steps"]
        accum = accumulation_at(step, total, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        x = to_device(batch, self.device, self.spec["mean"], self.spec["std"], self.channels_last)
        y = batch.labels.to(self.device, non_blocking=True)
        sync = (step + 1) % accum == 0 or step + 1 == total
        ctx = self.ddp_model.no_sync() if (self.info.world > 1 and not sync) else contextlib.nullcontext()
        with ctx:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.forward(x, batch.picture_product.to(self.device, non_blocking=True), batch.n_products)
            loss = _loss(out, y, self.level1_of, self.level2_of, cfg)
            (loss / accum).backward()
        if sync:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["batch_in_epoch"] += 1
        state["loss_sum"] += float(loss.detach())
        state["loss_n"] += 1
        self.pictures_seen += len(batch.pictures)
        return sync

    def _fit_budget(self, now: float) -> None:
        """With ``max_minutes``: once a few steps are timed, fit the total steps (and so the warm-up and
        the decay, both shares of it) into the budget, leaving time for the evaluations."""
        state, cfg = self.state, self.cfg
        if not cfg.max_minutes or state["budget_fitted"]:
            return
        if self.probe is None:  # the first step pays for allocation and warm caches: time from after it
            self.probe = (now, state["step"])
            return
        if state["step"] - self.probe[1] < BUDGET_PROBE_STEPS:
            return
        per_step = (now - self.probe[0]) / (state["step"] - self.probe[1])
        val_cost = per_step * len(self.val_pos) / max(1, self.batch_size * self.info.world) * 0.5
        epochs_left = max(1.0, (state["total_steps"] - state["step"]) / self.steps_per_epoch)
        room = cfg.max_minutes * 60 * 0.97 - state["elapsed_s"] - val_cost * min(epochs_left, 5)
        fitted = state["step"] + max(1, int(room / per_step))
        state["total_steps"] = broadcast_int(min(state["total_steps"], fitted), self.info)
        state["budget_fitted"] = True
        log.info("time budget: %d steps in total (%.3fs per step)", state["total_steps"], per_step)

    def _evaluate_and_log(self) -> None:
        state = self.state
        metrics = evaluate(self.forward, self.val_loader, self.device, self.spec["mean"], self.spec["std"],
                           self.level1_of, self.info, self.amp, self.channels_last)
        elapsed = time.perf_counter() - self.t_epoch
        epoch_done = state["batch_in_epoch"] >= self.steps_per_epoch
        line = {"epoch": state["epoch"] + 1, "step": state["step"],
                "epoch_fraction": state["batch_in_epoch"] / self.steps_per_epoch,
                "train_loss": state["loss_sum"] / max(1, state["loss_n"]),
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_pictures_per_s": self.pictures_seen * self.info.world / max(1e-9, elapsed),
                "elapsed_s": time.perf_counter() - self.t_start, **metrics}
        state.update(epoch=state["epoch"] + int(epoch_done), batch_in_epoch=0 if epoch_done else
                     state["batch_in_epoch"], loss_sum=0.0, loss_n=0)
        if self.info.is_main:
            with open(self.run.metrics_file, "a") as fh:
                fh.write(json.dumps(line) + "\n")
            log.info("epoch %d: %s", line["epoch"], json.dumps(line))
            _save_checkpoint(self.run, self.model, self.optimizer, state, self.spec)
            self.last_ckpt = time.perf_counter()

    def _finish(self, status: str) -> None:
        if status == "finished":
            self.state["finished"] = True
        if self.info.is_main:
            _save_checkpoint(self.run, self.model, self.optimizer, self.state, self.spec)
            if status == "finished":
                with atomic_write(self.run.model_file, "wb") as fh:
                    torch.save({"state_dict": self.model.state_dict(), "spec": self.spec}, fh)
        if self.info.world > 1:
            dist.barrier()


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, trust_pickle: bool = False) -> TrainResult:
    """Train (or continue) a run. Works under ``torchrun`` (every rank calls it). ``trust_pickle``: resume
    from a checkpoint that holds more than tensors and plain values (etalage 0.1 saved numpy random
    states): it can run code, so only for checkpoints you made yourself."""
    return _Trainer(cfg, resume, progress, trust_pickle).run_all()
