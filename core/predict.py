"""Core predictions: per product the top-K classes, per picture its own top-K, level-1
probabilities and (optionally) the fused embedding, written in resumable shards.

Never an N x 5270 matrix: each batch's probabilities are reduced to top-K on the device, and a
chunk of products becomes one ``part-START-END.npz`` (written atomically) as soon as it is done,
so a killed run redoes at most one chunk and memory stays flat whatever N is. ``CoreRanking``
is the one reader every later stage (specialists, fusion, submission) uses.

Dtypes: class indices int32 (-1 = no picture), probabilities float16, product ids int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from etalage.catalog import Catalog
from etalage.catalog.bsonindex import file_stamp
from etalage.catalog.io import (
    claim_folder,
    list_parts,
    load_chunked,
    part_path,
    save_npz_atomic,
    shard_chunk_ranges,
)
from etalage.core.data import ProductDataset, collate, default_workers, to_device
from etalage.core.train import DistInfo, load_trained, resolve_device

from etalage.errors import ConfigError, StageOutputError

PREDICTION_VERSION = 1
MAX_PICTURES = 4
TTA_MODES = ("none", "flip")


@dataclass
class CoreRanking:
    """The core's ranking of every product of one BSON file, in file order."""

    product_ids: np.ndarray          # (N,) int64
    topk_class: np.ndarray           # (N, K) int32, best first
    topk_prob: np.ndarray            # (N, K) float16
    n_pictures: np.ndarray           # (N,) int8
    picture_topk_class: np.ndarray   # (N, 4, KP) int32, -1 where the product has fewer pictures
    picture_topk_prob: np.ndarray    # (N, 4, KP) float16
    level1_prob: np.ndarray          # (N, L1) float16
    embedding: np.ndarray | None     # (N, F) float16 when predicted with embeddings
    meta: dict

    def __len__(self) -> int:
        return len(self.product_ids)

    @classmethod
    def load(cls, pred_dir: str | Path, rows: tuple[int, int] | None = None) -> CoreRanking:
        """Read all shards of ``pred_dir`` (or only the chunk ``rows`` = (start, end)); a gap names the
        command that fills it."""
        def command(meta):
            if meta is None:
                return f"etalage predict --out {pred_dir} ..."
            return f"etalage predict --run {meta['run']} --data {meta['data']} --out {pred_dir}"

        meta, cat = load_chunked(pred_dir, rows, "core predictions", command)
        return cls(cat["product_ids"], cat["topk_class"], cat["topk_prob"], cat["n_pictures"],
                   cat["picture_topk_class"], cat["picture_topk_prob"], cat["level1_prob"], cat.get("embedding"),
                   meta)

    def take(self, rows: np.ndarray) -> CoreRanking:
        """The ranking of some products only (e.g. the core's validation products)."""
        emb = None if self.embedding is None else self.embedding[rows]
        return CoreRanking(self.product_ids[rows], self.topk_class[rows], self.topk_prob[rows], self.n_pictures[rows],
                           self.picture_topk_class[rows], self.picture_topk_prob[rows], self.level1_prob[rows], emb,
                           self.meta)

    def top1(self) -> np.ndarray:
        """Best class index per product (int32)."""
        return self.topk_class[:, 0]


def _digest(positions: np.ndarray) -> str:
    import hashlib

    return hashlib.md5(np.ascontiguousarray(positions, np.int64).tobytes()).hexdigest()


class CorePredictor:
    """A trained run's model between decoding (pre-processing) and top-K reduction (post-processing).

    >>> predictor = CorePredictor("runs/demo")
    >>> ranking = predictor.predict_catalog(Catalog.open("test.bson"), "preds/test")
    >>> ranking.topk_class[:3]
    """

    def __init__(self, run: str | Path, device: str = "auto", batch_size: int = 64, workers: int | None = None,
                 tta: str = "none", compile: bool = False, channels_last: bool = False):
        if tta not in TTA_MODES:
            raise ConfigError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self.run = Path(run)
        self.device = resolve_device(device, DistInfo())
        self.model, self.spec, self.taxonomy = load_trained(run, self.device)
        self.channels_last = channels_last and self.device.type == "cuda"  # see TrainConfig.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
        self.batch_size = batch_size
        self.workers = workers if workers is not None else default_workers(self.device)
        self.tta = tta

    @torch.no_grad()
    def predict_batch(self, batch, topk: int, picture_topk: int, embedding: bool) -> dict[str, np.ndarray]:
        x = to_device(batch, self.device, self.spec["mean"], self.spec["std"], self.channels_last)
        owner = batch.picture_product.to(self.device)
        views = [x] if self.tta == "none" else [x, torch.flip(x, dims=[3])]
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

    def predict_catalog(self, catalog: Catalog, out_dir: str | Path, topk: int = 20, picture_topk: int = 5,
                        shard: tuple[int, int] = (0, 1), embedding: bool = False, chunk: int = 4096,
                        positions: np.ndarray | None = None, producer: str | None = None,
                        progress: bool = True) -> CoreRanking | None:
        """Predict shard ``i/n`` of ``catalog`` into ``out_dir``; finished chunks are not redone.

        ``positions``: only these products, in this order (e.g. the core's validation products for
        fusion training); ``producer``: the command that fills ``out_dir``, quoted by errors.
        Returns the full ``CoreRanking`` when every shard is done, else None.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        positions = np.arange(len(catalog)) if positions is None else np.asarray(positions, np.int64)
        meta = {"version": PREDICTION_VERSION, "run": str(self.run), "data": str(catalog.path),
                "data_stamp": file_stamp(Path(catalog.path)), "n_products": len(positions),
                "positions_digest": _digest(positions), "producer": producer, "chunk": chunk,
                "topk": topk, "picture_topk": picture_topk, "tta": self.tta, "embedding": embedding,
                "n_classes": self.spec["n_classes"], "fusion": self.spec["fusion"], "backbone": self.spec["backbone"]}
        claim_folder(out_dir / "meta.json", meta, ignore=("producer",))
        done = list_parts(out_dir)
        todo = [c for c in shard_chunk_ranges(len(positions), chunk, shard) if c not in done]
        ds = ProductDataset(catalog, positions, None, self.spec.get("picture_size", 180), None)
        from tqdm import tqdm

        total = sum(b - a for a, b in todo)
        with tqdm(total=total, unit="product", desc=f"predict {Path(catalog.path).name}", disable=not progress,
                  leave=False, dynamic_ncols=True) as bar:
            for a, b in todo:
                sub = torch.utils.data.Subset(ds, range(a, b))
                loader = torch.utils.data.DataLoader(sub, batch_size=self.batch_size, collate_fn=collate,
                                                     num_workers=self.workers,
                                                     pin_memory=self.device.type == "cuda")
                parts: dict[str, list[np.ndarray]] = {}
                for batch in loader:
                    for k, v in self.predict_batch(batch, topk, picture_topk, embedding).items():
                        parts.setdefault(k, []).append(v)
                    bar.update(batch.n_products)
                arrays = {k: np.concatenate(v) for k, v in parts.items()}
                arrays["product_ids"] = catalog.product_ids[positions[a:b]].astype(np.int64)
                save_npz_atomic(part_path(out_dir, a, b), **arrays)
        try:
            return CoreRanking.load(out_dir)
        except StageOutputError:
            return None
