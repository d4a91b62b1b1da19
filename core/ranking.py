"""``CoreRanking``: the core's ranking of every product of one BSON file, the one reader every later
stage (OCR selection, specialists, fusion, submission) uses. Torch-free: reading predictions never
loads the network.

Dtypes: class indices int32 (-1 = no picture), probabilities float16, product ids int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.chunks import load_chunked

CLASS_BITS = 23  # class indices < 2**23 (5270 on the real taxonomy)


def pack_pairs(rows: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(row, class) pairs as sortable int64 keys ``row << 23 | class``: one searchsorted finds a pair."""
    return (np.asarray(rows, np.int64) << CLASS_BITS) | np.asarray(classes, np.int64)


def unpack_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return keys >> CLASS_BITS, keys & ((1 << CLASS_BITS) - 1)


PREDICTION_VERSION = 1
MAX_PICTURES = 4
ROUTING_THRESHOLD = 0.3  # level-1 probability mass on a group that sends a product to its reader


@dataclass
class CoreRanking:
    """Per product, in file order (or in the order of the positions predicted)."""

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
        """Read all parts of ``pred_dir`` (or only the chunk ``rows`` = (start, end)); a gap names the
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

    @classmethod
    def concat(cls, parts: list[CoreRanking]) -> CoreRanking:
        """Several rankings one after the other (e.g. each fold run's ranking of its own fold)."""
        if len(parts) == 1:
            return parts[0]

        def cat(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return cls(cat("product_ids"), cat("topk_class"), cat("topk_prob"), cat("n_pictures"),
                   cat("picture_topk_class"), cat("picture_topk_prob"), cat("level1_prob"), cat("embedding"),
                   parts[0].meta)

    def top1(self) -> np.ndarray:
        """Best class index per product (int32)."""
        return self.topk_class[:, 0]

    def routed_to(self, level1: list[int], level1_of: np.ndarray, threshold: float = ROUTING_THRESHOLD
                  ) -> np.ndarray:
        """Boolean mask: the products the core sends to readers of the level-1 groups ``level1``: their
        level-1 probability on those groups reaches ``threshold``, or their best class is in them.

        This is the one routing rule: specialists' default gate and ``etalage ocr`` on test files.
        """
        mass = self.level1_prob[:, level1].astype(np.float32).sum(1)
        return (mass >= threshold) | np.isin(level1_of[self.top1()], level1)


def write_ranking_parquet(path, product_ids: np.ndarray, classes: np.ndarray, scores: np.ndarray, taxonomy,
                          score_name: str = "probability") -> None:
    """A ranking in long form for any Parquet reader (pandas, polars, duckdb): one row per (product,
    rank) with ``product_id``, ``rank`` (1 = best), ``category_id``, ``class_index`` and the score;
    empty slots (-1) are left out. Written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from etalage.files import atomic_write

    n, k = classes.shape
    keep = (classes >= 0).reshape(-1)
    cls = classes.reshape(-1)[keep].astype(np.int32)
    table = pa.table({
        "product_id": np.repeat(np.asarray(product_ids, np.int64), k)[keep],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int8), n)[keep],
        "category_id": taxonomy.category_ids[cls].astype(np.int64),
        "class_index": cls,
        score_name: np.asarray(scores, np.float32).reshape(-1)[keep],
    })
    with atomic_write(path, "wb") as fh:
        pq.write_table(table, fh)
