"""From catalog positions to batches of flat picture tensors, reproducibly.

Augmentation randomness is seeded by (seed, epoch, product position), and the sampler's order by
(seed, epoch), so a run resumed from a checkpoint sees exactly the batches it would have seen,
whatever the number of DataLoader workers. Pictures stay uint8 until they reach the device, where
they are normalised (a quarter of the bytes to move).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from etalage.catalog import Catalog
from etalage.catalog.pictures import DecodeStats, random_crop

BLANK = np.full((8, 8, 3), 255, np.uint8)  # stands in for a product whose pictures are all corrupt


class ProductDataset(torch.utils.data.Dataset):
    """Map-style dataset over catalog positions; items are keyed by (position, epoch)."""

    def __init__(self, catalog: Catalog, positions: np.ndarray, labels: np.ndarray | None,
                 picture_size: int = 180, crop: int | None = None, seed: int = 0):
        self.catalog = catalog
        self.positions = np.asarray(positions, np.int64)
        self.labels = None if labels is None else np.asarray(labels, np.int64)
        self.picture_size = picture_size
        self.crop = crop  # None: evaluation, the whole (resized) picture
        self.seed = seed

    def __len__(self) -> int:
        return len(self.positions)

    def _prepare(self, pic: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if pic.shape[0] != self.picture_size or pic.shape[1] != self.picture_size:
            pic = np.asarray(Image.fromarray(pic).resize((self.picture_size, self.picture_size), Image.BILINEAR))
        if rng is not None:  # training: a random crop; evaluation sees the whole picture
            pic = random_crop(pic, self.crop, rng)
        return np.ascontiguousarray(pic.transpose(2, 0, 1))

    def __getitem__(self, key) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        pos = int(self.positions[i])
        stats = DecodeStats()
        pics = self.catalog.decode(pos, stats)
        if not pics:
            pics = [BLANK]
        rng = np.random.default_rng([self.seed, epoch, pos]) if self.crop is not None else None
        return {"pictures": [self._prepare(p, rng) for p in pics], "index": i, "corrupt": stats.corrupt,
                "label": -1 if self.labels is None else int(self.labels[i])}


@dataclass
class Batch:
    pictures: torch.Tensor         # (P, 3, H, W) uint8
    picture_product: torch.Tensor  # (P,) int64: product row of each picture
    labels: torch.Tensor           # (B,) int64, -1 when unknown
    index: torch.Tensor            # (B,) int64: dataset rows
    corrupt: int

    @property
    def n_products(self) -> int:
        return len(self.labels)


def collate(items: list[dict]) -> Batch:
    pics = [p for it in items for p in it["pictures"]]
    owner = [b for b, it in enumerate(items) for _ in it["pictures"]]
    return Batch(torch.from_numpy(np.stack(pics)), torch.tensor(owner, dtype=torch.int64),
                 torch.tensor([it["label"] for it in items], dtype=torch.int64),
                 torch.tensor([it["index"] for it in items], dtype=torch.int64),
                 sum(it["corrupt"] for it in items))


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (seed, epoch) order, split over ``world`` ranks, resumable at a batch boundary.

    Each rank gets ``n // world`` items per epoch (the remainder is dropped, as DistributedSampler
    with drop_last does), so every rank runs the same number of steps.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def per_rank(self) -> int:
        return self.n // self.world

    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size  # the last partial batch is dropped in training

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        mine = order[self.rank::self.world][: self.per_rank]
        for i in mine[self.start_batch * self.batch_size: self.batches_per_epoch() * self.batch_size]:
            yield (int(i), self.epoch)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch) * self.batch_size


def default_workers(device: torch.device, processes: int = 1) -> int:
    """DataLoader workers when the user names none.

    On CPU: none. The forward pass already uses every core, and decoding costs ~3% of it, but a
    worker process preempts the forward's OpenMP threads: on 2 cores, predicting with one worker ran
    at 0.79x of the bare backbone, inline decoding at 0.99x. On CUDA: most of the cores, since
    decoding is what feeds the GPU.
    """
    if device.type != "cuda":
        return 0
    return min(8, max(1, (os.cpu_count() or 2) // processes - 1))


def to_device(batch: Batch, device: torch.device, mean: tuple, std: tuple, channels_last: bool = False
              ) -> torch.Tensor:
    """uint8 pictures -> normalised float on ``device`` (channels_last on request)."""
    x = batch.pictures.to(device, non_blocking=True).float().div_(255)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
