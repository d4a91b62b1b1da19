"""The frozen layer groups' outputs, kept per training picture: what the core trains on after a picture's
first pass, instead of decoding it and running those layers again at every epoch.

With ``freeze`` > 0 (the default with pretrained weights) the first layer groups of the backbone never
change during a run, yet the pixel path decodes each picture, augments it and runs it through them at every
step. The cache keeps their output (the feature maps) of every training picture squared to the picture
side but not cropped, in two views (as is and mirrored; one with ``augment="none"``), float16, in a
memory-mapped file of the run folder. Training takes a random crop of the map in place of a random crop
of the picture: crop-flip on the map's grid (the crop's corner moves in steps of the frozen layers'
stride, and the layers above see the picture's context around the crop where the pixel path pads).

Filled lazily: a picture's view is computed the first time training draws it, so the first epoch costs
what the pixel path does (the frozen layers run on the whole square rather than the crop), the second
decodes only the views not drawn before, and nothing is spent up front that a short run would not use. A
map depends only on the picture and the frozen weights (computed in eval mode), so a resumed run reuses the
file (and then continues exactly as an uninterrupted run), or recomputes the maps when it is gone (the same
to float16 rounding: a convolution's sums run in another order for another batch); which maps are filled is
saved with each checkpoint, after the maps themselves are flushed.

Its size: channels x (side / stride)^2 x 2 bytes per picture and view; EfficientNet-Lite0 with the stem
and two stages frozen at 128 px keeps 24 x 32 x 32 x 2 = 48 KiB, 96 KiB per picture with both views, 2.2 GiB
for fashion-dev's 23,951 training photos. ``map_cache_gb`` bounds it (0, the default, turns it off): a
run whose cache would take more trains on the pixel path. Mixup and cutmix act on the maps (cutmix boxes on the map's grid, mixup between
feature maps rather than pixels); the pooling over pictures comes after the backbone, unchanged.
Validation and prediction always read pictures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from etalage.catalog import Catalog
from etalage.catalog.bsonindex import file_stamp
from etalage.catalog.pictures import CorruptPicture, DecodeStats, decode_picture
from etalage.core.config import TrainConfig
from etalage.core.data import BLANK, PictureTransform
from etalage.core.rundir import RunDir
from etalage.files import save_npz_atomic

log = logging.getLogger(__name__)

MAP_VIEWS = {"crop-flip": 2, "none": 1}  # the augmentations done on maps, and the views each keeps
UNFILLED, FILLED, NO_PICTURE = 0, 1, 2     # a row's state per view (NO_PICTURE: its product had fewer pictures)
DISK_MARGIN = 1 << 30                      # free space the cache leaves on the run folder's disk


@dataclass(frozen=True)
class MapLayout:
    """Where each training product's maps lie in the file (rows of consecutive pictures) and their shape."""

    channels: int
    side: int               # the map's side: the picture side over the frozen layers' stride
    crop: int               # the training crop's side on the map
    views: int
    first_row: np.ndarray   # (products,) int64
    reserved: np.ndarray    # (products,) int64: rows per product, one per picture (one for a mosaic)

    @property
    def shape(self) -> tuple[int, ...]:
        return int(self.reserved.sum()), self.views, self.channels, self.side, self.side

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 2


@dataclass
class MapBatch:
    """A training batch on the cached path: maps read from the cache, and pictures whose drawn view is not
    there yet (the cache computes and keeps them before the step). ``picture_product``, ``labels`` and
    ``n_products`` read as ``Batch``'s."""

    maps: torch.Tensor             # (Pc, C, S, S) float16: read from the cache
    raw: torch.Tensor              # (Pr, 3, H, W) uint8: squared pictures still to run through the frozen layers
    raw_rows: torch.Tensor         # (Pr,) int64: their rows in the cache
    raw_views: torch.Tensor        # (Pr,) int64: their views (1: mirrored)
    no_picture_rows: torch.Tensor  # rows reserved for pictures their products turned out not to have
    order: torch.Tensor            # (P,) int64: each picture's index in cat(maps, maps computed from raw)
    corners: torch.Tensor          # (P, 2) int64: its training crop's top-left corner on the map
    picture_product: torch.Tensor  # (P,) int64
    labels: torch.Tensor           # (B,) int64
    index: torch.Tensor            # (B,) int64
    corrupt: int

    @property
    def n_products(self) -> int:
        return len(self.labels)


class MapDataset(torch.utils.data.Dataset):
    """Training products keyed by (position, epoch), as ``ProductDataset``: each picture's view and crop
    corner are drawn from (seed, epoch, position); a picture whose drawn view is in the cache comes as its
    map, any other decoded and squared (its map is computed in the step). Row ``j`` of a product is its
    ``j``-th picture (a corrupt one's row is marked empty; a product without any picture gets the blank one, as
    on the pixel path)."""

    def __init__(self, catalog: Catalog, positions: np.ndarray, labels: np.ndarray, transform: PictureTransform,
                 layout: MapLayout, cache_file: Path, filled: torch.Tensor, seed: int):
        self.catalog, self.positions, self.labels = catalog, np.asarray(positions, np.int64), labels
        self.transform, self.layout, self.cache_file, self.filled, self.seed = transform, layout, cache_file, filled, seed
        self._maps = None  # opened in the process that reads (DataLoader workers open their own)

    def __len__(self) -> int:
        return len(self.positions)

    def _draws(self, k: int, epoch: int, pos: int) -> tuple[np.ndarray, np.ndarray]:
        """Each of the product's ``k`` pictures' view (1: mirrored) and crop corner on the map."""
        slack = self.layout.side - self.layout.crop
        if self.layout.views == 1:
            return np.zeros(k, np.int64), np.full((k, 2), slack // 2, np.int64)
        rng = np.random.default_rng([self.seed, epoch, pos])
        return (rng.random(k) < 0.5).astype(np.int64), rng.integers(0, slack + 1, size=(k, 2))

    def _squares(self, pos: int) -> tuple[dict[int, np.ndarray], DecodeStats]:
        """The product's decodable pictures squared, by picture number (a mosaic: its one tiling)."""
        stats = DecodeStats()
        if self.transform.mosaic:
            return {0: self.transform.product(self.catalog.decode(pos, stats) or [BLANK])[0]}, stats
        squares = {}
        pid = int(self.catalog.product_ids[pos])
        for j, data in enumerate(self.catalog.picture_bytes(pos)):
            try:
                squares[j] = self.transform(decode_picture(data))
                stats.decoded += 1
            except CorruptPicture:
                stats.record_corrupt(pid, j)
        return squares or {0: self.transform(BLANK)}, stats

    def __getitem__(self, key) -> dict:
        i, epoch = key
        pos, k = int(self.positions[i]), int(self.layout.reserved[i])
        rows = int(self.layout.first_row[i]) + np.arange(k)
        views, corners = self._draws(k, epoch, pos)
        state = self.filled[torch.from_numpy(rows), torch.from_numpy(views)].numpy()
        squares, corrupt = {}, 0
        if (state == UNFILLED).any():
            squares, stats = self._squares(pos)
            corrupt = stats.corrupt
            state = np.where(np.isin(np.arange(k), list(squares)), state, NO_PICTURE)
        kept, cached = state != NO_PICTURE, state == FILLED
        fresh = kept & ~cached
        if cached.any() and self._maps is None:
            self._maps = np.load(self.cache_file, mmap_mode="r")
        return {"label": int(self.labels[i]), "index": i, "corrupt": corrupt,
                "maps": self._maps[rows[cached], views[cached]] if cached.any() else [],
                "raw": [squares[j] for j in np.flatnonzero(fresh)], "raw_rows": rows[fresh],
                "raw_views": views[fresh], "cached": cached[kept], "corners": corners[kept],
                "no_picture": rows[state == NO_PICTURE]}

    def collate(self, items: list[dict]) -> MapBatch:
        side, channels, square = self.layout.side, self.layout.channels, self.transform.size
        maps = [m for it in items for m in it["maps"]]
        raw = [p for it in items for p in it["raw"]]
        order, n_maps, n_raw = [], 0, 0
        for it in items:
            for from_cache in it["cached"]:
                order.append(n_maps if from_cache else len(maps) + n_raw)
                n_maps, n_raw = n_maps + bool(from_cache), n_raw + (not from_cache)

        def cat(key: str) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([np.asarray(it[key], np.int64) for it in items]))

        return MapBatch(
            maps=torch.from_numpy(np.stack(maps)) if maps else torch.zeros((0, channels, side, side), dtype=torch.float16),
            raw=torch.from_numpy(np.stack(raw)) if raw else torch.zeros((0, 3, square, square), dtype=torch.uint8),
            raw_rows=cat("raw_rows"), raw_views=cat("raw_views"), no_picture_rows=cat("no_picture"),
            order=torch.tensor(order, dtype=torch.int64), corners=cat("corners").view(-1, 2),
            picture_product=torch.tensor([b for b, it in enumerate(items) for _ in it["cached"]], dtype=torch.int64),
            labels=torch.tensor([it["label"] for it in items], dtype=torch.int64),
            index=torch.tensor([it["index"] for it in items], dtype=torch.int64),
            corrupt=sum(it["corrupt"] for it in items))


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """Eval mode for the duration (dropout and drop-path off, norms on their running statistics), then each
    submodule's own mode again."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


class FrozenMapCache:
    """The maps of one run's training pictures (``RUN/frozen_maps.npy``) and which are filled: made by
    ``plan_map_cache``, fed by ``inputs`` at every step, saved with each checkpoint, removed at the end."""

    def __init__(self, run: RunDir, prefix: nn.Module, groups: int, layout: MapLayout, stamp: dict,
                 spec: dict, device: torch.device, channels_last: bool):
        self.run, self.prefix, self.groups, self.layout, self.stamp = run, prefix, groups, layout, stamp
        self.mean = torch.tensor(spec["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec["std"], device=device).view(1, 3, 1, 1)
        self.device, self.channels_last = device, channels_last
        # shared memory: DataLoader workers read which maps are filled as the training process fills them
        self.filled = torch.zeros(layout.shape[:2], dtype=torch.uint8).share_memory_()
        self.hits = self.misses = 0
        self.maps = self._open()

    def _open(self) -> np.memmap:
        """The run folder's file when it was made from the same pictures and frozen weights (a resumed
        run), else a new one: sparse, its disk space reserved at once so that a full disk fails here rather
        than in the middle of an epoch."""
        run = self.run
        with contextlib.suppress(FileNotFoundError, OSError, KeyError, ValueError):
            with np.load(run.map_cache_state_file) as saved:
                if json.loads(str(saved["stamp"])) == self.stamp:
                    maps = np.load(run.map_cache_file, mmap_mode="r+")
                    if maps.shape == self.layout.shape:
                        self.filled.copy_(torch.from_numpy(saved["filled"]))
                        log.info("frozen-layer maps: %.0f%% reused from %s", 100 * self.filled_share(),
                                 run.map_cache_file)
                        return maps
        self.remove()
        maps = np.lib.format.open_memmap(run.map_cache_file, mode="w+", dtype=np.float16, shape=self.layout.shape)
        with open(run.map_cache_file, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        self._save_state()
        return maps

    def filled_share(self) -> float:
        return float((self.filled == FILLED).float().mean()) if self.filled.numel() else 0.0

    def dataset(self, catalog: Catalog, positions: np.ndarray, labels: np.ndarray, transform: PictureTransform,
                seed: int) -> MapDataset:
        return MapDataset(catalog, positions, labels, transform, self.layout, self.run.map_cache_file, self.filled,
                          seed)

    def inputs(self, batch: MapBatch) -> torch.Tensor:
        """The step's input: each picture's map (computed and kept first where the cache lacked it) cropped
        at its drawn corner, float on the device."""
        fresh = self._compute(batch.raw, batch.raw_views)
        if len(fresh):
            rows, views = batch.raw_rows.numpy(), batch.raw_views.numpy()
            self.maps[rows, views] = fresh.numpy()
            self.filled[batch.raw_rows, batch.raw_views] = FILLED
        self.filled[batch.no_picture_rows] = NO_PICTURE
        self.hits += len(batch.maps)
        self.misses += len(fresh)
        full = torch.cat([batch.maps, fresh])[batch.order]
        c = self.layout.crop
        x = torch.stack([full[p, :, top:top + c, left:left + c]
                         for p, (top, left) in enumerate(batch.corners.tolist())])
        x = x.to(self.device, non_blocking=True).float()
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def _compute(self, raw: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """(P, 3, H, W) uint8 squared pictures -> (P, C, S, S) float16 maps on the CPU, view 1 mirrored."""
        if not len(raw):
            return torch.zeros((0, *self.layout.shape[2:]), dtype=torch.float16)
        x = (raw.to(self.device).float().div_(255) - self.mean) / self.std
        mirrored = views.to(self.device) == 1
        x[mirrored] = x[mirrored].flip(3)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _eval_mode(self.prefix):
            out = self.prefix(x)
        return out.to("cpu", torch.float16).contiguous()

    def save(self) -> None:
        """With a checkpoint: the maps flushed to disk first, then which are filled."""
        self.maps.flush()
        self._save_state()

    def _save_state(self) -> None:
        save_npz_atomic(self.run.map_cache_state_file, stamp=np.array(json.dumps(self.stamp, sort_keys=True)),
                        filled=self.filled.numpy())

    def remove(self) -> None:
        """Delete the files (a finished run no longer needs them)."""
        self.maps = None
        for f in (self.run.map_cache_state_file, self.run.map_cache_file):
            f.unlink(missing_ok=True)


def _layout(prefix: nn.Module, catalog: Catalog, positions: np.ndarray, spec: dict, views: int, mosaic: bool,
            device: torch.device) -> MapLayout:
    size, crop = int(spec["picture_size"]), int(spec["crop"])
    with torch.no_grad(), _eval_mode(prefix):
        probe = prefix(torch.zeros((1, 3, size, size), device=device))
    channels, side = int(probe.shape[1]), int(probe.shape[2])
    reserved = np.ones(len(positions), np.int64) if mosaic else \
        np.maximum(1, catalog.n_pictures[positions].astype(np.int64))
    first_row = np.cumsum(reserved) - reserved
    return MapLayout(channels, side, max(1, min(side, round(crop * side / size))), views, first_row, reserved)


def _stamp(cfg: TrainConfig, prefix: nn.Module, layout: MapLayout, catalog: Catalog, positions: np.ndarray,
           spec: dict) -> dict:
    """What the maps are a function of: the pictures (file, products, squaring) and the frozen weights."""
    weights = hashlib.sha1()
    for name, tensor in sorted(prefix.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"version": 1, "train": str(Path(catalog.path).resolve()), "file": file_stamp(Path(catalog.path)),
            "positions": hashlib.sha1(np.asarray(positions, np.int64).tobytes()).hexdigest(),
            "picture_size": int(spec["picture_size"]), "resize": spec.get("resize", "stretch"),
            "pooling": cfg.picture_pooling, "backbone": cfg.backbone, "groups": cfg.frozen_groups(),
            "frozen_weights": weights.hexdigest(), "shape": list(layout.shape)}


def plan_map_cache(cfg: TrainConfig, run: RunDir, model, catalog: Catalog, positions: np.ndarray, spec: dict,
                   device: torch.device, channels_last: bool, world: int) -> FrozenMapCache | None:
    """The cache for this run, or None where it trains on pictures: nothing frozen or ``map_cache_gb`` 0,
    an augmentation the maps cannot do, several processes, a backbone that is not cut, or a cache over
    ``map_cache_gb`` or over the disk's free space (each but the first said in the log)."""
    groups = cfg.frozen_groups()
    if cfg.map_cache_gb <= 0 or groups <= 0:
        return None
    views = MAP_VIEWS.get(cfg.augment)
    prefix = model.frozen_prefix(groups)
    why = None
    if views is None:
        why = f"--augment {cfg.augment} changes the pixels the frozen layers see"
    elif world > 1:
        why = "several processes (each would keep its own copy)"
    elif prefix is None:
        why = f"backbone {cfg.backbone} is not cut after {groups} layer groups"
    if why is not None:
        log.info("frozen-layer maps not kept: %s; training on pictures", why)
        return None
    layout = _layout(prefix, catalog, positions, spec, views, cfg.picture_pooling == "mosaic", device)
    gib = layout.nbytes / 2**30
    existing = run.map_cache_file.stat().st_size if run.map_cache_file.exists() else 0
    free = shutil.disk_usage(run.path).free + existing - DISK_MARGIN
    if layout.nbytes > cfg.map_cache_gb * 2**30 or layout.nbytes > free:
        log.info("frozen-layer maps not kept: they would take %.2f GiB (%d rows x %d views x %s), over %s; "
                 "training on pictures", gib, layout.shape[0], views, "x".join(map(str, layout.shape[2:])),
                 f"--map-cache-gb {cfg.map_cache_gb:g}" if layout.nbytes > cfg.map_cache_gb * 2**30
                 else f"the free space of {run.path}")
        return None
    stamp = _stamp(cfg, prefix, layout, catalog, positions, spec)
    try:
        cache = FrozenMapCache(run, prefix, groups, layout, stamp, spec, device, channels_last)
    except OSError as exc:
        log.warning("frozen-layer maps not kept (%s: %s); training on pictures", run.map_cache_file, exc)
        with contextlib.suppress(OSError):
            run.map_cache_file.unlink(missing_ok=True)
        return None
    log.info("frozen-layer maps kept in %s: %.2f GiB at most (%d x %s per picture and view, %d views), "
             "filled as training draws them", run.map_cache_file, gib, layout.channels,
             f"{layout.side}x{layout.side}", views)
    return cache
