"""Core predictions: per product the top-K classes, per picture its own top-K, level-1
probabilities and (optionally) the fused embedding, written in resumable shards.

Never an N x 5270 matrix: each batch's probabilities are reduced to top-K on the device, and a
chunk of products becomes one ``part-START-END.npz`` (written atomically) as soon as it is done,
so a killed run redoes at most one chunk and memory stays flat whatever N is. The parts are read
back as a ``CoreRanking`` (``etalage.core.ranking``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from etalage.catalog import Catalog
from etalage.catalog.bsonindex import file_stamp
from etalage.chunks import DEFAULT_CHUNK, list_parts, part_path, shard_chunk_ranges
from etalage.compute import Compute
from etalage.core.data import (
    PictureBytesDataset,
    PictureTransform,
    ProductDataset,
    bytes_collate,
    collate,
    default_workers,
    device_batch,
    to_device,
)
from etalage.core.model import load_model, picture_pooling_of, safe_torch_load
from etalage.core.ranking import MAX_PICTURES, PREDICTION_VERSION, CoreRanking
from etalage.core.rundir import RunDir
from etalage.core.runtime import resolve_device
from etalage.errors import StageOutputError
from etalage.files import claim_folder, save_npz_atomic
from etalage.options import TTA_MODES, check_choice
from etalage.progress import bar as progress_bar


def _digest(positions: np.ndarray) -> str:
    import hashlib

    return hashlib.md5(np.ascontiguousarray(positions, np.int64).tobytes()).hexdigest()


def tta_views(x: torch.Tensor, mode: str, crop: int) -> list[torch.Tensor]:
    """The views of a batch of pictures that test-time augmentation averages over: ``none`` the pictures,
    ``flip`` and their mirror images, ``crops`` the 4 corner and the centre crops at the training crop's
    side (the scale the network learnt at) and their mirror images: 10 views, the 2017 9th place's TTA10."""
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, torch.flip(x, dims=[3])]
    h, w = x.shape[2:]
    c = min(crop, h, w)
    corners = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2)]
    crops = [x[:, :, y:y + c, x0:x0 + c] for y, x0 in corners]
    return crops + [torch.flip(v, dims=[3]) for v in crops]


@dataclass(frozen=True)
class PredictOptions:
    """What a core prediction keeps per product: its ``topk`` classes, each picture's ``picture_topk`` and,
    with ``embedding``, the pooled embedding (float16; what the embedding-neighbour signal queries with)."""

    topk: int = 20
    picture_topk: int = 5
    embedding: bool = False


class CorePredictor:
    """A trained run's model between decoding (pre-processing) and top-K reduction (post-processing).

    >>> predictor = CorePredictor("runs/demo")
    >>> ranking = predictor.predict_catalog(Catalog.open("test.bson"), "preds/test")
    >>> ranking.topk_class[:3]
    """

    def __init__(self, run: str | Path | RunDir, device: str = "auto", batch_size: int = 64,
                 workers: int | None = None, tta: str = "none", compile: bool = False,
                 channels_last: bool | None = None, trust_pickle: bool = False, decode_on_device: bool | None = None):
        self.tta = check_choice(tta, TTA_MODES, "--tta")
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.device = resolve_device(device)
        self.model, self.spec = load_model(self.run.require_model(), self.device, trust_pickle)
        self.taxonomy = self.run.taxonomy()
        # see TrainConfig.channels_last: on by default on the CPU only
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
        self.batch_size = batch_size
        self.workers = workers if workers is not None else default_workers(self.device)
        self.transform = PictureTransform.of_model(self.spec)
        # JPEGs decoded on the GPU when the core runs there (the mosaic pooling tiles pictures on the CPU);
        # the CPU path decodes with Pillow as ever
        on_gpu = self.device.type == "cuda" and not self.transform.mosaic
        self.decode_on_device = on_gpu if decode_on_device is None else bool(decode_on_device)

    @classmethod
    def of(cls, run: str | Path | RunDir, compute: Compute, tta: str = "none", compile: bool = False) -> CorePredictor:
        """The predictor of ``run`` with a job's compute settings (device, batch size, workers, trust)."""
        return cls(run, device=compute.device, batch_size=compute.batch_size, workers=compute.workers, tta=tta,
                   compile=compile, trust_pickle=compute.trust_pickle)

    @torch.no_grad()
    def predict_batch(self, batch, topk: int, picture_topk: int, embedding: bool) -> dict[str, np.ndarray]:
        x = to_device(batch, self.device, self.spec["mean"], self.spec["std"], self.channels_last)
        owner = batch.picture_product.to(self.device)
        views = tta_views(x, self.tta, int(self.spec.get("crop", x.shape[-1])))
        probs = pic_probs = l1 = emb = 0
        for v in views:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                out = self.forward(v, owner, batch.n_products)
            probs = probs + torch.softmax(out["logits"].float(), 1) / len(views)
            pic_probs = pic_probs + torch.softmax(out["picture_logits"].float(), 1) / len(views)
            l1 = l1 + torch.softmax(out["level1"].float(), 1) / len(views)
            emb = emb + out["embedding"].float() / len(views)
        k = min(topk, probs.shape[1])
        top_p, top_c = probs.topk(k, dim=1)
        kp = min(picture_topk, probs.shape[1])
        pp, pc = pic_probs.topk(kp, dim=1)
        b = batch.n_products
        counts = torch.bincount(owner, minlength=b)
        slot = torch.arange(len(owner), device=self.device) - (torch.cumsum(counts, 0) - counts)[owner]
        keep = slot < MAX_PICTURES
        pic_c = torch.full((b, MAX_PICTURES, kp), -1, dtype=torch.int32, device=self.device)
        pic_p = torch.zeros((b, MAX_PICTURES, kp), dtype=torch.float16, device=self.device)
        pic_c[owner[keep], slot[keep]] = pc[keep].to(torch.int32)
        pic_p[owner[keep], slot[keep]] = pp[keep].half()
        out = {"topk_class": top_c.to(torch.int32), "topk_prob": top_p.half(), "picture_topk_class": pic_c,
               "picture_topk_prob": pic_p, "level1_prob": l1.half(), "n_pictures": counts.to(torch.int8)}
        if embedding:
            out["embedding"] = emb.half()
        return {k: v.cpu().numpy() for k, v in out.items()}

    def claim(self, catalog: Catalog, out_dir: str | Path, options: PredictOptions = PredictOptions(),
              chunk: int = DEFAULT_CHUNK, positions: np.ndarray | None = None, producer: str | None = None
              ) -> np.ndarray:
        """Stamp ``out_dir`` for these predictions (or check it holds them); returns the positions."""
        return claim_predictions(self.run, self.spec, self.tta, catalog, out_dir, options, chunk, positions, producer)

    def predict_catalog(self, catalog: Catalog, out_dir: str | Path, topk: int = 20, picture_topk: int = 5,
                        shard: tuple[int, int] = (0, 1), embedding: bool = False, chunk: int = DEFAULT_CHUNK,
                        positions: np.ndarray | None = None, producer: str | None = None,
                        progress: bool = True) -> CoreRanking | None:
        """Predict shard ``i/n`` of ``catalog`` into ``out_dir``; finished chunks are not redone.

        ``positions``: only these products, in this order (e.g. the core's validation products for
        fusion training); ``producer``: the command that fills ``out_dir``, quoted by errors.
        Returns the full ``CoreRanking`` when every shard is done, else None.
        """
        out_dir = Path(out_dir)
        positions = self.claim(catalog, out_dir, PredictOptions(topk, picture_topk, embedding), chunk, positions,
                               producer)
        done = list_parts(out_dir)
        todo = [c for c in shard_chunk_ranges(len(positions), chunk, shard) if c not in done]
        total = sum(b - a for a, b in todo)
        with progress_bar(total=total, unit="product", desc=f"predict {Path(catalog.path).name}",
                          enabled=progress) as bar:
            for a, b in todo:
                self.predict_part(catalog, out_dir, positions, (a, b), topk, picture_topk, embedding, bar)
        try:
            return CoreRanking.load(out_dir)
        except StageOutputError:
            return None

    def predict_part(self, catalog: Catalog, out_dir: str | Path, positions: np.ndarray, rows: tuple[int, int],
                     topk: int = 20, picture_topk: int = 5, embedding: bool = False, bar=None,
                     workers: int | None = None) -> int:
        """One part file: the products ``positions[a:b]`` of ``catalog`` predicted into
        ``out_dir/part-A-B.npz`` (the one per-chunk step of every engine). ``catalog``: a ``Catalog``, or one
        whose pictures were read beforehand (``Catalog.with_chunk``). Returns the pictures decoded."""
        a, b = rows
        parts: dict[str, list[np.ndarray]] = {}
        pictures = 0
        for batch in self._batches(catalog, positions[a:b], workers):
            for k, v in self.predict_batch(batch, topk, picture_topk, embedding).items():
                parts.setdefault(k, []).append(v)
            pictures += len(batch.picture_product)
            if bar is not None:
                bar.update(batch.n_products)
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        arrays["product_ids"] = catalog.product_ids[positions[a:b]].astype(np.int64)
        save_npz_atomic(part_path(out_dir, a, b), **arrays)
        return pictures

    def _batches(self, catalog: Catalog, positions: np.ndarray, workers: int | None = None):
        """Batches of ``batch_size`` products in order: decoded by Pillow (in DataLoader workers) and
        collated on the CPU, or with ``decode_on_device`` read as bytes and decoded on the GPU."""
        workers = self.workers if workers is None else workers
        if self.decode_on_device:
            loader = torch.utils.data.DataLoader(PictureBytesDataset(catalog, positions), batch_size=self.batch_size,
                                                 collate_fn=bytes_collate, num_workers=workers)
            for items in loader:
                ids = catalog.product_ids[[p for p, _ in items]].tolist()
                yield device_batch([pics for _, pics in items], ids, self.transform, self.device)
            return
        ds = ProductDataset(catalog, positions, None, self.transform)
        yield from torch.utils.data.DataLoader(ds, batch_size=self.batch_size, collate_fn=collate, num_workers=workers,
                                               pin_memory=self.device.type == "cuda")


def model_spec(run: str | Path | RunDir, trust_pickle: bool = False) -> dict:
    """A trained run's network description (what ``claim_predictions`` stamps) without building it."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    model_file = run.require_model()
    return safe_torch_load(model_file, "trained model", f"retrain with `etalage train --out {run.path}`",
                           trust_pickle)["spec"]


def claim_predictions(run: RunDir, spec: dict, tta: str, catalog: Catalog, out_dir: str | Path,
                      options: PredictOptions = PredictOptions(), chunk: int = DEFAULT_CHUNK,
                      positions: np.ndarray | None = None, producer: str | None = None) -> np.ndarray:
    """Stamp ``out_dir`` with the settings of the predictions it holds (run, data and its stamp, positions,
    top-K, TTA, network), or check a stamp there matches: predictions of two jobs never mix. Returns the
    positions predicted (every product when None)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    positions = np.arange(len(catalog)) if positions is None else np.asarray(positions, np.int64)
    meta = {"version": PREDICTION_VERSION, "run": str(run.path), "data": str(catalog.path),
            "data_stamp": file_stamp(Path(catalog.path)), "n_products": len(positions),
            "positions_digest": _digest(positions), "producer": producer, "chunk": chunk,
            "topk": options.topk, "picture_topk": options.picture_topk, "tta": check_choice(tta, TTA_MODES, "--tta"),
            "embedding": options.embedding, "n_classes": spec["n_classes"], "pooling": picture_pooling_of(spec),
            "backbone": spec["backbone"]}
    claim_folder(out_dir / "meta.json", meta, ignore=("producer",))
    return positions
