"""From catalog positions to batches of flat picture tensors, reproducibly.

Augmentation randomness is seeded by (seed, epoch, product position), and the sampler's order by
(seed, epoch), so a run resumed from a checkpoint sees exactly the batches it would have seen,
whatever the number of DataLoader workers. Pictures stay uint8 until they reach the device, where
they are normalised (a quarter of the bytes to move).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from etalage.catalog import Catalog
from etalage.catalog.pictures import DecodeStats, letterbox, random_crop
from etalage.core.model import picture_pooling_of
from etalage.options import AUGMENTATIONS, RESIZE_MODES, check_choice
from etalage.resources import usable_cpus

BLANK = np.full((8, 8, 3), 255, np.uint8)  # stands in for a product whose pictures are all corrupt
RESIZED_CROP_SCALE = (0.35, 1.0)           # share of the picture a "resized-crop" keeps


@dataclass(frozen=True)
class PictureTransform:
    """A decoded picture -> the (3, H, W) uint8 array the network sees.

    Every picture is first brought to ``size`` x ``size``: ``letterbox`` keeps its aspect and pads with
    white (what a catalogue photo's background is), ``stretch`` squashes it. Evaluation (no ``rng``)
    stops there. Training then applies ``augment`` at the ``crop`` side: ``crop-flip`` (a random crop and
    flip, the 2017 teams' recipe), ``resized-crop`` (a random share of 35-100% of the picture, of
    3:4 to 4:3 aspect, resized to the crop; and flip), or ``crop-flip`` followed by torchvision's
    ``trivial`` (TrivialAugmentWide) or ``randaugment`` (RandAugment, 2 ops of magnitude 9);
    ``none`` takes the centre crop.
    """

    size: int
    crop: int
    resize: str = "letterbox"
    augment: str = "crop-flip"
    mosaic: bool = False   # the ``mosaic`` picture pooling: a product's pictures tiled into one

    @classmethod
    def of_model(cls, spec: dict) -> PictureTransform:
        """The evaluation transform a trained network expects (older runs: stretched, crop 8/9)."""
        size = int(spec.get("picture_size", 180))
        return cls(size, int(spec.get("crop", size * 8 // 9)), spec.get("resize", "stretch"), "none",
                   picture_pooling_of(spec) == "mosaic")

    def __post_init__(self):
        check_choice(self.resize, RESIZE_MODES, "--resize")
        check_choice(self.augment, AUGMENTATIONS, "--augment")

    def square(self, pic: np.ndarray) -> np.ndarray:
        if pic.shape[0] == self.size and pic.shape[1] == self.size:
            return pic
        if self.resize == "letterbox":
            return letterbox(pic, self.size)
        return np.asarray(Image.fromarray(pic).resize((self.size, self.size), Image.BILINEAR))

    def __call__(self, pic: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        pic = self.square(pic)
        if rng is not None:
            pic = self._augment(pic, rng)
        return np.ascontiguousarray(pic.transpose(2, 0, 1))

    def product(self, pictures: list[np.ndarray], rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """A product's pictures as the network sees them: each one, or with ``mosaic`` one 2x2 tiling of
        up to four (each a quarter of the side, on white) augmented as a whole."""
        if not self.mosaic or len(pictures) == 1:
            return [self(p, rng) for p in pictures]
        half = self.size // 2
        tile = PictureTransform(half, half, self.resize)
        canvas = np.full((self.size, self.size, 3), 255, np.uint8)
        for k, pic in enumerate(pictures[:4]):
            y, x = (k // 2) * half, (k % 2) * half
            canvas[y:y + half, x:x + half] = tile.square(pic)
        return [self(canvas, rng)]

    def _augment(self, pic: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.augment == "none":
            o = (self.size - self.crop) // 2
            return pic[o:o + self.crop, o:o + self.crop]
        if self.augment == "resized-crop":
            return _resized_crop(pic, self.crop, rng)
        pic = random_crop(pic, self.crop, rng)
        if self.augment in ("trivial", "randaugment"):
            pic = _torchvision_policy(pic, self.augment, int(rng.integers(2**62)))
        return pic


def _resized_crop(pic: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop with a seeded generator (torchvision's draws from torch's global one)."""
    h, w = pic.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*RESIZED_CROP_SCALE)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = w, h
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = Image.fromarray(np.ascontiguousarray(pic[y:y + ch, x:x + cw])).resize((size, size), Image.BILINEAR)
    out = np.asarray(out)
    return out[:, ::-1] if rng.random() < 0.5 else out


_POLICIES: dict = {}


def _torchvision_policy(pic: np.ndarray, name: str, seed: int) -> np.ndarray:
    """torchvision's TrivialAugmentWide / RandAugment on one picture, its draws seeded by ``seed`` (so a
    resumed run sees the same pictures) without touching the global generator dropout uses."""
    from torchvision.transforms import v2

    policy = _POLICIES.get(name)
    if policy is None:
        policy = _POLICIES[name] = v2.TrivialAugmentWide() if name == "trivial" else v2.RandAugment(2, 9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = policy(torch.from_numpy(np.ascontiguousarray(pic.transpose(2, 0, 1))))
    return out.numpy().transpose(1, 2, 0)


class ProductDataset(torch.utils.data.Dataset):
    """Map-style dataset over catalog positions; items are keyed by (position, epoch).

    ``train=True`` augments (seeded by seed, epoch and position); otherwise each picture is only
    brought to the transform's square."""

    def __init__(self, catalog: Catalog, positions: np.ndarray, labels: np.ndarray | None,
                 transform: PictureTransform, train: bool = False, seed: int = 0):
        self.catalog = catalog
        self.positions = np.asarray(positions, np.int64)
        self.labels = None if labels is None else np.asarray(labels, np.int64)
        self.transform = transform
        self.train = train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        pos = int(self.positions[i])
        stats = DecodeStats()
        pics = self.catalog.decode(pos, stats)
        if not pics:
            pics = [BLANK]
        rng = np.random.default_rng([self.seed, epoch, pos]) if self.train else None
        return {"pictures": self.transform.product(pics, rng), "index": i, "corrupt": stats.corrupt,
                "label": -1 if self.labels is None else int(self.labels[i])}


# The picture side a run takes when none is given: the dump's own, within these bounds. On the CPU the cap
# is what the dev runs measured best within a 20-minute budget on 2 cores (docs/benchmarks.md, "Core on real photos":
# 160 px trains 1.6x slower per picture than 128 for less in the same time); on a GPU the 2017 teams'
# 160-180 px is affordable. The floor: small catalogue photos (Myntra's 60x80) are upscaled to it, which
# ImageNet features, learnt at 224, read better than 80 px.
AUTO_SIZE_CAP = {"cpu": 128, "cuda": 180}
AUTO_SIZE_FLOOR = 96


def auto_picture_size(catalog: Catalog, device: str = "cpu", sample: int = 256) -> int:
    """The side the core works at when none is given, from the dump's own pictures: their median longest
    side (``median_side``), a multiple of 16, between ``AUTO_SIZE_FLOOR`` and the device's ``AUTO_SIZE_CAP``:
    128 for Cdiscount's 180x180 pictures on a CPU, 96 for 60x80 catalogue photos."""
    cap = AUTO_SIZE_CAP.get(device, AUTO_SIZE_CAP["cpu"])
    side = median_side(catalog, sample)
    if side is None:
        return cap
    return int(min(cap, max(AUTO_SIZE_FLOOR, int(round(side / 16)) * 16)))


def median_side(catalog: Catalog, sample: int = 256) -> int | None:
    """The median longest side of the first pictures of a sample of products spread over the dump, read from
    the JPEG headers (nothing decoded); None when none can be read."""
    n = len(catalog)
    positions = np.unique(np.linspace(0, n - 1, min(n, sample)).astype(np.int64))
    sides = []
    for pos in positions:
        for data in catalog.picture_bytes(int(pos))[:1]:
            try:
                with Image.open(io.BytesIO(data)) as im:  # the header only: nothing is decoded
                    sides.append(max(im.size))
            except Exception:  # noqa: BLE001 - a corrupt picture says nothing about the others
                continue
    return int(np.median(sides)) if sides else None


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
    return min(8, max(1, usable_cpus() // processes - 1))


def to_device(batch: Batch, device: torch.device, mean: tuple, std: tuple, channels_last: bool = False
              ) -> torch.Tensor:
    """uint8 pictures -> normalised float on ``device`` (channels_last on request)."""
    x = batch.pictures.to(device, non_blocking=True).float().div_(255)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ---------------------------------------------------------------------------------------------
# decoding on the device: where the core runs on a GPU, JPEGs are decoded there (nvJPEG) in batches,
# so the CPU only reads bytes; what the device decoder cannot take goes to the CPU decoder
# (``decode_picture``, which also bounds what it decodes). The CPU path above never comes here.

_SOF_DEVICE = (0xC0, 0xC1)  # baseline and extended sequential Huffman JPEGs: what nvJPEG decodes in batches
_SOF_ANY = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every start-of-frame marker


def jpeg_header(data: bytes | memoryview) -> tuple[int, int, int, int] | None:
    """(start-of-frame marker, height, width, components) read off a JPEG's markers without decoding
    anything; None when the bytes are not a JPEG or its header is cut short."""
    data = memoryview(data)
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF_ANY:
            if i + 10 > n:
                return None
            h = (data[i + 5] << 8) | data[i + 6]
            w = (data[i + 7] << 8) | data[i + 8]
            return marker, h, w, data[i + 9]
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a JPEG we know
            return None
        i += 2 + length
    return None


def device_decodable(data: bytes | memoryview) -> bool:
    """Whether the device decoder may take these bytes: a sequential JPEG of 1 or 3 components within
    ``MAX_SIDE`` (larger ones are scaled down by the CPU decoder, progressive and CMYK ones decoded there)."""
    from etalage.catalog.pictures import MAX_PIXELS, MAX_SIDE

    head = jpeg_header(data)
    if head is None:
        return False
    marker, h, w, comps = head
    return marker in _SOF_DEVICE and comps in (1, 3) and 0 < max(h, w) <= MAX_SIDE and h * w <= MAX_PIXELS


def decode_on_device(datas: list[bytes], device, decode=None) -> list[torch.Tensor | None]:
    """JPEG bytes -> per picture a (3, H, W) uint8 RGB tensor on ``device``, decoded in one batched call
    (``torchvision.io.decode_jpeg``; nvJPEG on CUDA), or None where the CPU decoder must take it: bytes
    the device decoder may not take (``device_decodable``) and pictures it fails on. One failing picture
    fails a batched call, so then each is tried alone. ``decode``: the decoder (tests pass a stand-in)."""
    import warnings

    from torchvision.io import ImageReadMode

    if decode is None:
        from torchvision.io import decode_jpeg as decode
    out: list[torch.Tensor | None] = [None] * len(datas)
    ok = [i for i, d in enumerate(datas) if device_decodable(d)]
    if not ok:
        return out
    raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in ok]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its decoders deprecated
        try:
            for i, t in zip(ok, decode(raw, mode=ImageReadMode.RGB, device=device), strict=True):
                out[i] = t
        except RuntimeError:
            for i, r in zip(ok, raw, strict=True):
                try:
                    out[i] = decode(r, mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    out[i] = None
    return out


def square_on_device(pic: torch.Tensor, size: int, resize: str = "letterbox") -> torch.Tensor:
    """(3, H, W) uint8 pictures on their device (or a stack of N of one size, (N, 3, H, W)) brought to
    ``size`` x ``size`` as ``PictureTransform.square`` does on the CPU: ``letterbox`` keeps the aspect on
    white, ``stretch`` squashes (antialiased bicubic / bilinear resizing on the device; close to Pillow's,
    not bit for bit)."""
    import torch.nn.functional as F

    h, w = pic.shape[-2:]
    if h == size and w == size:
        return pic
    x = (pic if pic.dim() == 4 else pic.unsqueeze(0)).float()
    if resize == "letterbox":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        inner = F.interpolate(x, (nh, nw), mode="bicubic", antialias=True, align_corners=False)
        out = torch.full((len(x), 3, size, size), 255.0, device=pic.device)
        y0, x0 = (size - nh) // 2, (size - nw) // 2
        out[:, :, y0:y0 + nh, x0:x0 + nw] = inner
    else:
        out = F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if pic.dim() == 4 else out[0]


def device_batch(products: list[list[bytes]], product_ids: list[int], transform: PictureTransform, device,
                 stats: DecodeStats | None = None, decode=None) -> Batch:
    """One batch of products (each its pictures' bytes) decoded and squared on ``device``: what ``collate``
    of ``ProductDataset`` items gives on the CPU path, pictures already on the device. Pictures the device
    decoder cannot take are decoded by the CPU one; corrupt ones are skipped and counted; a product left
    without any picture gets the blank one, as on the CPU path. Pictures of one size are resized together
    (Cdiscount's are all 180 x 180: one call)."""
    from etalage.catalog.pictures import CorruptPicture, decode_picture

    flat = [d for pics in products for d in pics]
    decoded = iter(decode_on_device(flat, device, decode))
    pictures: list[torch.Tensor] = []
    owner: list[int] = []
    corrupt = 0
    for b, (pics, pid) in enumerate(zip(products, product_ids, strict=True)):
        mine = 0
        for k, data in enumerate(pics):
            t = next(decoded)
            if t is None:
                try:
                    t = torch.from_numpy(np.ascontiguousarray(decode_picture(data).transpose(2, 0, 1))).to(device)
                except CorruptPicture:
                    corrupt += 1
                    if stats is not None:
                        stats.record_corrupt(pid, k)
                    continue
            if stats is not None:
                stats.decoded += 1
            pictures.append(t)
            mine += 1
        if not mine:
            pictures.append(torch.from_numpy(np.ascontiguousarray(BLANK.transpose(2, 0, 1))).to(device))
            mine = 1
        owner += [b] * mine
    by_shape: dict[tuple, list[int]] = {}
    for i, t in enumerate(pictures):
        by_shape.setdefault(tuple(t.shape), []).append(i)
    out = torch.empty((len(pictures), 3, transform.size, transform.size), dtype=torch.uint8, device=device)
    for rows in by_shape.values():
        out[rows] = square_on_device(torch.stack([pictures[i] for i in rows]), transform.size, transform.resize)
    return Batch(out, torch.tensor(owner, dtype=torch.int64), torch.full((len(products),), -1, dtype=torch.int64),
                 torch.arange(len(products)), corrupt)


class PictureBytesDataset(torch.utils.data.Dataset):
    """Catalog positions -> (position, the product's picture bytes): what DataLoader workers read when the
    pictures are decoded on the device (``device_batch``)."""

    def __init__(self, catalog, positions: np.ndarray):
        self.catalog = catalog
        self.positions = np.asarray(positions, np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[int, list[bytes]]:
        pos = int(self.positions[i])
        return pos, self.catalog.picture_bytes(pos)


def bytes_collate(items: list[tuple[int, list[bytes]]]) -> list[tuple[int, list[bytes]]]:
    return items
