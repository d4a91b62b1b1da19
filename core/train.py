"""Training the core CNN on one process or many (``torchrun``), resumable to the exact batch.

A run directory holds everything: ``config.json``, ``category_names.csv`` (the taxonomy the
class indices refer to), ``val_positions.npy`` (the held-out products, which fusion trains on
later), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (model, optimizer, step, epoch,
batch within the epoch, RNG states) and, when done, ``model.pt`` for ``etalage predict``.

Schedules: AdamW with linear warm-up then cosine decay, or ``grow-batch`` (the 2017 advice:
keep the rate and grow the batch instead, here by accumulating 1, 2 then 4 batches). With
``max_minutes`` the run measures its own speed after a few steps and fits the schedule into the
budget, so a time-boxed run still ends with a decayed rate and a validation score.
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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from etalage.catalog import Catalog, Taxonomy, validation_split
from etalage.catalog.io import atomic_write
from etalage.core.backbones import create_backbone
from etalage.core.data import Batch, EpochSampler, ProductDataset, collate, default_workers, to_device
from etalage.core.model import FUSIONS, MultiImageNet

from etalage.errors import ConfigError, DataError, TaxonomyError

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "grow-batch")


@dataclass
class TrainConfig:
    train: str
    out: str
    taxonomy: str | None = None          # default: category_names.csv beside the training file
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"     # "imagenet" (offline package), "none", or a state-dict path
    fusion: str = "gate"
    picture_size: int = 180              # pictures are resized to this side (180 = as stored)
    crop: int = 160                      # random training crops; evaluation sees the whole picture
    batch_size: int = 64                 # products per batch (per process)
    epochs: float = 3.0
    max_minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.02
    warmup: float = 0.05                 # share of the steps spent warming up
    schedule: str = "cosine"
    level1_weight: float = 0.2
    level2_weight: float = 0.2
    label_smoothing: float = 0.0
    dropout: float = 0.2
    val_fraction: float = 0.05
    seed: int = 0
    workers: int | None = None
    device: str = "auto"
    compile: bool = False
    # NHWC memory layout on CUDA. Off by default: on an H100 with bf16, efficientnet_lite0 trained at
    # 68 pictures/s in channels_last against 2,273 in the default layout, because every new picture
    # count per batch sends cuDNN looking for kernels again.
    channels_last: bool = False
    checkpoint_minutes: float = 10.0
    stop_after_steps: int | None = None  # pause after this many steps of this call (continue with resume=True)

    def check(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"--fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.crop > self.picture_size:
            raise ConfigError(f"--crop {self.crop} is larger than --picture-size {self.picture_size}")
        if self.batch_size < 1 or self.epochs <= 0:
            raise ConfigError("--batch-size must be >= 1 and --epochs > 0")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    @classmethod
    def from_json(cls, path: Path) -> TrainConfig:
        raw = json.loads(path.read_text())
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


# ---------------------------------------------------------------------------------------------
# distributed plumbing


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _all_sum(values: list[float], info: DistInfo) -> list[float]:
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _broadcast_int(value: int, info: DistInfo) -> int:
    if info.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(t, 0)
    return int(t.item())


# ---------------------------------------------------------------------------------------------


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but no CUDA device is available")
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def build_model(n_classes: int, n_level1: int, n_level2: int, backbone: str, weights: str | None, fusion: str,
                dropout: float = 0.2) -> tuple[MultiImageNet, dict]:
    """The core network and the description ``model.pt`` stores to rebuild it without weights files."""
    bb = create_backbone(backbone, weights)
    model = MultiImageNet(bb.model, bb.num_features, n_classes, n_level1, n_level2, fusion, dropout)
    spec = {"backbone": backbone, "num_features": bb.num_features, "n_classes": n_classes, "n_level1": n_level1,
            "n_level2": n_level2, "fusion": fusion, "dropout": dropout, "mean": list(bb.mean), "std": list(bb.std)}
    return model, spec


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
    correct, correct_l1, n = _all_sum([correct, correct_l1, n], info)
    return {"val_top1": correct / n if n else float("nan"), "val_level1_top1": correct_l1 / n if n else float("nan"),
            "val_products": int(n)}


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(run: Path, model, optimizer, progress: dict, spec: dict) -> None:
    with atomic_write(run / "checkpoint.pt", "wb") as fh:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": progress,
                    "spec": spec, "rng": _rng_state()}, fh)


def prepare_run(cfg: TrainConfig, resume: bool) -> tuple[Path, Taxonomy, Catalog, np.ndarray]:
    """Check inputs, lay out the run directory; returns (run, taxonomy, catalog, class labels)."""
    cfg.check()
    run = Path(cfg.out)
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
    if (run / "checkpoint.pt").exists() and not resume:
        raise ConfigError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not (run / "checkpoint.pt").exists():
        raise ConfigError(f"{run}: nothing to resume (no checkpoint.pt)")
    return run, tax, catalog, labels


@dataclass
class TrainResult:
    status: str                  # "finished" or "paused" (signal or stop_after_steps: continue with resume)
    metrics: dict                # the last line of metrics.jsonl
    model: torch.nn.Module       # the weights this process holds (every rank's, under torchrun)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or continue) a run. Works under ``torchrun`` (every rank calls it)."""
    device_kind = "cuda" if (cfg.device in ("auto", "cuda") and torch.cuda.is_available()) else "cpu"
    info = init_distributed(device_kind)
    device = resolve_device(cfg.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif info.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world))
    run, tax, catalog, labels = prepare_run(cfg, resume)
    if resume:
        saved = TrainConfig.from_json(run / "config.json")
        for key in ("backbone", "fusion", "picture_size", "crop", "batch_size", "seed", "val_fraction", "schedule"):
            if getattr(saved, key) != getattr(cfg, key):
                raise ConfigError(f"--resume: {key} was {getattr(saved, key)!r} in {run}, now {getattr(cfg, key)!r}")
    torch.manual_seed(cfg.seed)
    val_mask = validation_split(labels, cfg.val_fraction, cfg.seed)
    train_pos, val_pos = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    per_rank = len(train_pos) // info.world
    batch_size = cfg.batch_size
    if per_rank < batch_size:
        if per_rank < 1:
            raise DataError(f"{cfg.train}: {len(train_pos)} training products, too few for {info.world} processes")
        log.warning("batch size %d > %d training products per process; using %d", batch_size, per_rank, per_rank)
        batch_size = per_rank

    model, spec = build_model(tax.n_classes, tax.n_level1, tax.n_level2, cfg.backbone,
                              None if resume else cfg.weights, cfg.fusion, cfg.dropout)
    spec["picture_size"] = cfg.picture_size
    channels_last = cfg.channels_last and device.type == "cuda"
    amp = device.type == "cuda"  # bf16 autocast
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)

    sampler = EpochSampler(len(train_pos), batch_size, cfg.seed, info.rank, info.world)
    steps_per_epoch = sampler.batches_per_epoch()
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "total_steps": max(1, int(cfg.epochs * steps_per_epoch)),
             "budget_fitted": False, "elapsed_s": 0.0, "loss_sum": 0.0, "loss_n": 0, "finished": False}
    if resume:
        ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.update(ckpt["progress"])
        spec = ckpt["spec"]  # normalisation of the original weights, not of a random init
        _set_rng_state(ckpt["rng"])
        if state["finished"]:
            log.info("%s: run already finished", run)
            return TrainResult("finished", _last_metrics(run), model)
    elif info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        with atomic_write(run / "config.json", "w") as fh:
            json.dump(asdict(cfg), fh, indent=2)
        tax.save(run / "category_names.csv")
        with atomic_write(run / "val_positions.npy", "wb") as fh:
            np.save(fh, val_pos)
        with contextlib.suppress(FileNotFoundError):
            (run / "metrics.jsonl").unlink()
    ddp_model = model
    if info.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(ddp_model) if cfg.compile else ddp_model

    workers = cfg.workers if cfg.workers is not None else default_workers(device, info.world)
    train_ds = ProductDataset(catalog, train_pos, labels[train_pos], cfg.picture_size, cfg.crop, cfg.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                         num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=workers > 0,  # no worker start-up every epoch
                                         # its own generator: a new iterator after --resume must not
                                         # consume the global RNG that dropout draws from
                                         generator=torch.Generator().manual_seed(cfg.seed))
    val_ds = ProductDataset(catalog, val_pos[info.rank::info.world], labels[val_pos[info.rank::info.world]],
                            cfg.picture_size, None)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                                             persistent_workers=workers > 0)
    level1_of = torch.as_tensor(tax.level1_of, dtype=torch.int64, device=device)
    level2_of = torch.as_tensor(tax.level2_of, dtype=torch.int64, device=device)
    mean, std = spec["mean"], spec["std"]

    stop = {"signal": None}

    def _on_signal(signum, _frame):
        stop["signal"] = signum

    old_handlers = {}
    if info.world == 1:
        for s in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not in the main thread
                old_handlers[s] = signal.signal(s, _on_signal)

    t_start = time.perf_counter() - state["elapsed_s"]
    first_step = state["step"]  # stop_after_steps counts the steps of this call, so a job can run in slices
    last_ckpt = time.perf_counter()
    probe_at = state["step"] + min(20, max(3, state["total_steps"] // 20))
    probe_t0 = None
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    status = "finished"
    ddp_model.train()
    try:
        while state["step"] < state["total_steps"]:
            sampler.set_epoch(state["epoch"], state["batch_in_epoch"])
            bar = None
            if progress and info.is_main:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=state["batch_in_epoch"], desc=f"epoch {state['epoch'] + 1}",
                           unit="batch", leave=False, dynamic_ncols=True)
            pictures_seen, t_epoch = 0, time.perf_counter()
            for batch in loader:
                batch: Batch
                step, total = state["step"], state["total_steps"]
                accum = accumulation_at(step, total, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, cfg)
                x = to_device(batch, device, mean, std, channels_last)
                y = batch.labels.to(device, non_blocking=True)
                sync = (step + 1) % accum == 0 or step + 1 == total
                ctx = ddp_model.no_sync() if (info.world > 1 and not sync) else contextlib.nullcontext()
                with ctx:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        out = fwd(x, batch.picture_product.to(device, non_blocking=True), batch.n_products)
                    loss = _loss(out, y, level1_of, level2_of, cfg)
                    (loss / accum).backward()
                if sync:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["batch_in_epoch"] += 1
                state["loss_sum"] += float(loss.detach())
                state["loss_n"] += 1
                pictures_seen += len(batch.pictures)
                if bar is not None:
                    rate = pictures_seen * info.world / max(1e-9, time.perf_counter() - t_epoch)
                    bar.set_postfix(loss=f"{state['loss_sum'] / state['loss_n']:.3f}", pic_s=f"{rate:.0f}",
                                    lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
                    bar.update(1)
                now = time.perf_counter()
                state["elapsed_s"] = now - t_start
                # Fit the schedule into the time budget once the speed is known.
                if budget_s and not state["budget_fitted"]:
                    if probe_t0 is None:
                        probe_t0 = (now, state["step"])
                    elif state["step"] >= probe_at:
                        per_step = (now - probe_t0[0]) / (state["step"] - probe_t0[1])
                        val_cost = per_step * len(val_pos) / max(1, batch_size * info.world) * 0.5
                        epochs_left = max(1.0, (state["total_steps"] - state["step"]) / steps_per_epoch)
                        room = budget_s * 0.97 - state["elapsed_s"] - val_cost * min(epochs_left, 5)
                        fitted = state["step"] + max(1, int(room / per_step))
                        state["total_steps"] = _broadcast_int(min(state["total_steps"], fitted), info)
                        state["budget_fitted"] = True
                        log.info("time budget: %d steps in total (%.3fs per step)", state["total_steps"], per_step)
                paused = cfg.stop_after_steps is not None and state["step"] - first_step >= cfg.stop_after_steps
                if (stop["signal"] is not None or paused) and sync:  # never drop accumulated gradients
                    status = "paused"
                    break
                if budget_s and state["elapsed_s"] > budget_s:
                    state["total_steps"] = state["step"]
                if state["step"] >= state["total_steps"]:
                    break
                if info.is_main and now - last_ckpt > cfg.checkpoint_minutes * 60:
                    _save_checkpoint(run, model, optimizer, state, spec)
                    last_ckpt = now
            if bar is not None:
                bar.close()
            if status == "paused":
                break
            epoch_done = state["batch_in_epoch"] >= steps_per_epoch
            if epoch_done or state["step"] >= state["total_steps"]:
                metrics = evaluate(fwd, val_loader, device, mean, std, level1_of, info, amp, channels_last)
                elapsed = time.perf_counter() - t_epoch
                line = {"epoch": state["epoch"] + 1, "step": state["step"], "epoch_fraction":
                        state["batch_in_epoch"] / steps_per_epoch,
                        "train_loss": state["loss_sum"] / max(1, state["loss_n"]),
                        "lr": optimizer.param_groups[0]["lr"], "train_pictures_per_s":
                        pictures_seen * info.world / max(1e-9, elapsed), "elapsed_s": time.perf_counter() - t_start,
                        **metrics}
                state.update(epoch=state["epoch"] + int(epoch_done), batch_in_epoch=0 if epoch_done else
                             state["batch_in_epoch"], loss_sum=0.0, loss_n=0)
                if info.is_main:
                    with open(run / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps(line) + "\n")
                    log.info("epoch %d: %s", line["epoch"], json.dumps(line))
                    _save_checkpoint(run, model, optimizer, state, spec)
                    last_ckpt = time.perf_counter()
        if status == "finished":
            state["finished"] = True
        if info.is_main:
            _save_checkpoint(run, model, optimizer, state, spec)
            if status == "finished":
                with atomic_write(run / "model.pt", "wb") as fh:
                    torch.save({"state_dict": model.state_dict(), "spec": spec}, fh)
        if info.world > 1:
            dist.barrier()
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    return TrainResult(status, _last_metrics(run), model)


def _last_metrics(run: Path) -> dict:
    path = run / "metrics.jsonl"
    if not path.exists():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


def load_trained(run: str | Path, device: str | torch.device = "cpu") -> tuple[MultiImageNet, dict, Taxonomy]:
    """The finished model of a run, its spec and taxonomy (no weight files needed beyond ``model.pt``)."""
    run = Path(run)
    path = run / "model.pt"
    if not path.exists():
        hint = " (the run is unfinished: continue it with `etalage train --resume`)" if (
            run / "checkpoint.pt").exists() else ""
        raise ConfigError(f"{path}: no trained model; run `etalage train --out {run}` first{hint}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    spec = blob["spec"]
    model, _ = build_model(spec["n_classes"], spec["n_level1"], spec["n_level2"], spec["backbone"], None,
                           spec["fusion"], spec.get("dropout", 0.2))
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, spec, Taxonomy.load(run / "category_names.csv")
