"""Embedding neighbours: the training products nearest a product in the core's own feature space, as
candidates and features of the second level (the 2017 8th place: 5 nearest training pictures by
cosine, each voting ``((1 + s) / 2) ** 35`` for its class, 0.752 alone and +2.7 points blended).

The training products' embeddings (the core's pooled features, L2-normalised, so inner product is
cosine) go into a faiss index: exact (``IndexFlatIP``) up to ``EXACT_MAX`` products, where one
4,096-product query chunk costs about 3.4 s on 2 cores, 2.4x the rest of its fusion stage, and grows with
the index (7.0 s at 100,000: ``benchmarks/bench_neighbours.py``); above it an inverted-file
index with product quantisation (``IndexIVFPQ``: 64 bytes a product instead of 2,560 in float16), which
is what Cdiscount's 7.07M training products need (docs/benchmarks.md, "Second level over several cores", for the memory).
Each index remembers the class and the training position of every product it holds: a query that is
itself a training product (fusion's own rows) drops itself from its neighbours, so nothing leaks its
label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.core.ranking import pack_pairs
from etalage.errors import StageOutputError
from etalage.files import atomic_write, save_npz_atomic

EXACT_MAX = 50_000         # products an exact index holds; above, IVF-PQ (0.4 s a chunk; see module docstring)
NEIGHBOURS = 10            # neighbours per query; their classes join the candidates
VOTE_POWER = 35            # the 8th place's vote ((1 + s) / 2) ** 35
NEIGHBOUR_FEATURE_NAMES = ("emb_best_cos", "emb_vote", "emb_vote_share", "emb_count")
PQ_BYTES = 64              # bytes per product in the compressed index
IVF_PROBES = 16


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


@dataclass
class NeighbourHits:
    """The nearest training products of each query row: cosine (Q, k) float32 and class (Q, k) int32,
    -1 where fewer than k were found."""

    sims: np.ndarray
    classes: np.ndarray

    def take(self, rows: np.ndarray) -> NeighbourHits:
        return NeighbourHits(self.sims[rows], self.classes[rows])


class EmbeddingIndex:
    """A faiss index over training products' embeddings, with their classes and positions."""

    def __init__(self, index, classes: np.ndarray, positions: np.ndarray):
        self.index = index
        self.classes = np.asarray(classes, np.int32)
        self.positions = np.asarray(positions, np.int64)

    @classmethod
    def build(cls, embeddings: np.ndarray, classes: np.ndarray, positions: np.ndarray,
              exact_max: int = EXACT_MAX, seed: int = 0) -> EmbeddingIndex:
        import faiss

        x = unit_rows(embeddings)
        n, dim = x.shape
        if n <= exact_max:
            index = faiss.IndexFlatIP(dim)
        else:
            m = next(d for d in (PQ_BYTES, 48, 40, 32, 16, 8, 4, 2, 1) if dim % d == 0)
            nlist = int(4 * np.sqrt(n))
            index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False)
            index.train(x[np.sort(sample)])
            index.nprobe = IVF_PROBES
        index.add(x)
        return cls(index, classes, positions)

    def search(self, queries: np.ndarray, k: int = NEIGHBOURS, exclude: np.ndarray | None = None) -> NeighbourHits:
        """The ``k`` nearest indexed products of each query; ``exclude``: per query the training position
        it must not find (itself; -1 for none)."""
        extra = 1 if exclude is not None else 0
        sims, rows = self.index.search(unit_rows(queries), k + extra)
        found = rows >= 0
        pos = np.where(found, self.positions[np.clip(rows, 0, None)], -1)
        keep = found
        if exclude is not None:
            keep = found & (pos != np.asarray(exclude, np.int64)[:, None])
        # the first k kept hits of each row, in order of similarity
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(keep, order, 1)
        cls = np.where(kept, self.classes[np.clip(np.take_along_axis(rows, order, 1), 0, None)], -1)
        return NeighbourHits(np.where(kept, np.take_along_axis(sims, order, 1), 0).astype(np.float32),
                             cls.astype(np.int32))

    # -- files --------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """``PATH.faiss`` (faiss's own format: data, no code) and ``PATH.npz`` (classes, positions)."""
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path.with_suffix(".faiss"), "wb") as fh:
            fh.write(faiss.serialize_index(self.index).tobytes())
        save_npz_atomic(path.with_suffix(".npz"), classes=self.classes, positions=self.positions,
                        meta=np.array(json.dumps({"n": len(self.classes), "kind": type(self.index).__name__})))

    @classmethod
    def load(cls, path: Path) -> EmbeddingIndex:
        import faiss

        try:
            index = faiss.deserialize_index(np.fromfile(path.with_suffix(".faiss"), dtype=np.uint8))
            with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
                classes, positions = z["classes"], z["positions"]
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise StageOutputError(f"{path}: unreadable neighbour index ({type(exc).__name__}); refit with "
                                   f"`etalage fusion fit --neighbours`") from None
        return cls(index, classes, positions)


def neighbour_candidates(hits: list[NeighbourHits], top: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """(product row, class) pairs of the neighbours' classes."""
    owners, classes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for h in hits:
        c = h.classes[:, :top]
        ok = c >= 0
        owners.append(np.repeat(np.arange(len(c)), c.shape[1])[ok.reshape(-1)])
        classes.append(c[ok].astype(np.int64))
    return np.concatenate(owners), np.concatenate(classes)


def neighbour_features(hits: list[NeighbourHits], owner: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Per candidate (``owner`` row, class): among the product's nearest training products, the best
    cosine of one of the class (-1 when none), the 8th place's vote for it, its share of all votes, and how
    many of them are of the class; averaged over the indexes when there are several (a fold set at test
    time: one index per fold run)."""
    out = {name: np.zeros(len(owner), np.float32) for name in NEIGHBOUR_FEATURE_NAMES}
    query = pack_pairs(owner, classes)
    for h in hits:
        n, k = h.classes.shape
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        cls = h.classes.reshape(-1).astype(np.int64)
        sims = h.sims.reshape(-1)
        ok = cls >= 0
        if not ok.any():
            out["emb_best_cos"] -= 1.0
            continue
        vote = ((1 + sims) / 2) ** VOTE_POWER
        keys, inverse = np.unique(pack_pairs(rows[ok], cls[ok]), return_inverse=True)
        votes = np.bincount(inverse, weights=vote[ok], minlength=len(keys))
        counts = np.bincount(inverse, minlength=len(keys))
        best = np.full(len(keys), -1.0)
        np.maximum.at(best, inverse, sims[ok])
        total = np.bincount(rows[ok], weights=vote[ok], minlength=n)
        at = np.searchsorted(keys, query).clip(0, len(keys) - 1)
        hit = keys[at] == query
        out["emb_best_cos"] += np.where(hit, best[at], -1.0).astype(np.float32)
        out["emb_vote"] += np.where(hit, votes[at], 0.0).astype(np.float32)
        out["emb_vote_share"] += np.where(hit, votes[at] / np.maximum(total[owner], 1e-12), 0.0).astype(np.float32)
        out["emb_count"] += np.where(hit, counts[at], 0).astype(np.float32)
    if len(hits) > 1:
        for name in out:
            out[name] /= len(hits)
    return out


def load_indexes(folder, runs: int) -> list[EmbeddingIndex]:
    """The neighbour index of each of a fusion model's ``runs`` (``FusionDir.neighbour_index``)."""
    return [EmbeddingIndex.load(folder.neighbour_index(i)) for i in range(runs)]


def query_hits(indexes: list[EmbeddingIndex], embeddings: list[np.ndarray], k: int) -> list[NeighbourHits]:
    """Test-time neighbours: each run's embedding of the products against that run's index."""
    return [index.search(emb.astype(np.float32), k) for index, emb in zip(indexes, embeddings, strict=True)]
