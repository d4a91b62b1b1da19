"""Where the embedding-neighbour index stops being exact: one 4,096-product query chunk (k = 10) against
an exact ``IndexFlatIP`` and the compressed ``IndexIVFPQ`` (64 bytes a product) that ``EmbeddingIndex``
builds above ``EXACT_MAX``, for growing numbers of training products; the share of the 10 hits in the
query's own class (what the neighbours' vote sees) for both, build seconds and memory. Timings are ratios against the exact index at the smallest
size, measured in the same run.

Vectors: synthetic, 1280-d (EfficientNet-Lite0's pooled features), drawn around 2,000 centres (products of
a class lie near each other, as the core's embeddings do), L2-normalised. Threads: every usable core.

    python benchmarks/bench_neighbours.py --sizes 50000 100000 200000 400000

Writes ``benchmarks/results/neighbours.json``. Run nothing else heavy beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM, CENTRES, QUERIES, K = 1280, 2000, 4096, 10
NOISE = 1.0  # a vector's distance to its centre, against 1.4 between two centres


def vectors(n: int, rng: np.random.Generator, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors and their centres (their "class")."""
    c = rng.integers(0, len(centres), n)
    x = centres[c] + NOISE * rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), c.astype(np.int32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000, 400_000])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "neighbours.json"))
    args = ap.parse_args(argv)
    from etalage.fusion.neighbours import EXACT_MAX, EmbeddingIndex
    from etalage.resources import usable_cpus

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    queries, query_class = vectors(QUERIES, rng, centres)
    rows = []
    base = None
    for n in args.sizes:
        emb, classes = vectors(n, rng, centres)
        positions = np.arange(n, dtype=np.int64)
        row = {"products": n}
        for kind, exact_max in (("exact", n), ("ivfpq", 0)):
            t0 = time.perf_counter()
            index = EmbeddingIndex.build(emb, classes, positions, exact_max=exact_max)
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            hits = index.search(queries, K)
            query = time.perf_counter() - t0
            row[kind] = {"build_s": build, "query_s": query, "hits": hits}
        for kind in ("exact", "ivfpq"):  # what the vote sees: hits of the query's own class
            row[kind]["same_class_share"] = float((row[kind].pop("hits").classes == query_class[:, None]).mean())
        row["exact"]["memory_mb"] = n * DIM * 4 / 1e6
        row["ivfpq"]["memory_mb"] = n * (64 + 8) / 1e6
        base = base or row["exact"]["query_s"]
        for kind in ("exact", "ivfpq"):
            row[kind]["query_over_exact_at_smallest"] = row[kind]["query_s"] / base
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"machine": f"{platform.machine()}, {usable_cpus()} cores",
              "data": "synthetic 1280-d vectors around 2,000 centres", "queries": QUERIES, "k": K,
              "exact_max_in_code": EXACT_MAX, "sizes": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
