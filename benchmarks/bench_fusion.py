"""Fusion benchmark: feature building + LightGBM ranking throughput, and the whole submission
pipeline's peak memory on a 100k-product synthetic test set.

- throughput (in-process, real taxonomy shape): a training side of --train-products products (ids in
  class runs, 1.7 pictures each, shared stock pictures and placeholders) and --test-products test
  products with core rankings of the real shape (top-20, 4 pictures x top-5, 49 level-1
  probabilities); the table is built and ranked chunk by chunk (4,096 products) as `etalage submit`
  does. Baseline in the same run: the id-neighbour share computed with a per-product Python loop over
  the sorted training ids (the obvious implementation), on a sample, per product.
- pipeline (--pipeline, subprocesses): `etalage synth` (100k test products), a tiny core, `etalage
  fusion fit`, then `etalage submit --fusion` on the 100k products; peak RSS of each command
  (getrusage of the child) and wall time per stage.

Usage: python benchmarks/bench_fusion.py [--pipeline] [--work DIR] [--out benchmarks/results/fusion.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "category_names.csv"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_training(tax, n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training ids in class runs (mean 8), Zipf class sizes, pictures with stock duplicates."""
    weights = 1.0 / np.arange(1, tax.n_classes + 1) ** 0.9
    runs = rng.choice(tax.n_classes, size=n // 8 + 1, p=weights / weights.sum())
    lengths = rng.geometric(1 / 8, size=len(runs))
    classes = np.repeat(runs, lengths)[:n]
    ids = np.sort(rng.choice(np.arange(10, n * 4, dtype=np.int64), n, replace=False))
    n_pics = rng.choice([1, 2, 3, 4], size=n, p=[0.55, 0.25, 0.12, 0.08]).astype(np.int8)
    md5 = rng.integers(0, 256, size=(int(n_pics.sum()), 16), dtype=np.uint8)
    stock = rng.integers(0, 256, size=(tax.n_classes * 3, 16), dtype=np.uint8)
    pic_class = np.repeat(classes, n_pics.astype(np.int64))
    dup = rng.random(len(md5)) < 0.3
    md5[dup] = stock[pic_class[dup] * 3 + rng.integers(0, 3, dup.sum())]
    md5[rng.random(len(md5)) < 0.01] = 7  # a placeholder shared by every class
    return ids, classes, n_pics, md5


def make_ranking(tax, n: int, ids: np.ndarray, truth: np.ndarray, rng):
    """A CoreRanking of the real shape where the truth is the top-1 about 70% of the time."""
    from etalage.core.ranking import CoreRanking

    k, kp = 20, 5
    top = rng.integers(0, tax.n_classes, size=(n, k)).astype(np.int32)
    pos = np.where(rng.random(n) < 0.7, 0, rng.integers(1, k, n))
    top[np.arange(n), pos] = truth
    prob = np.sort(rng.dirichlet(np.full(k, 0.3), size=n).astype(np.float16), axis=1)[:, ::-1]
    n_pics = rng.choice([1, 2, 3, 4], size=n, p=[0.55, 0.25, 0.12, 0.08]).astype(np.int8)
    pic_c = np.repeat(top[:, None, :kp], 4, axis=1).copy()
    pic_c[np.arange(4)[None, :] >= n_pics[:, None]] = -1
    pic_p = np.repeat(prob[:, None, :kp], 4, axis=1)
    l1 = rng.dirichlet(np.full(tax.n_level1, 0.2), size=n).astype(np.float16)
    return CoreRanking(ids, top, prob.copy(), n_pics, pic_c, pic_p, l1, None, {"chunk": 4096}), n_pics


_STATE: dict = {}


def _fuse(chunk: tuple[int, int]) -> tuple[float, float, int, int]:
    """One chunk as `etalage submit` fuses it: table, then ranking (seconds of each, rows, correct)."""
    a, b = chunk
    t = time.perf_counter()
    tab = _STATE["chunk_table"](a, b)
    t1 = time.perf_counter()
    best = _STATE["model"].predict(tab, b - a)
    t2 = time.perf_counter()
    return t1 - t, t2 - t1, len(tab.owner), int((best == _STATE["truth"][a:b]).sum())


def throughput(args) -> dict:
    from etalage.catalog import Taxonomy
    from etalage.forking import map_forked
    from etalage.fusion.model import Evidence, FusionModel, assemble
    from etalage.fusion.signals import TrainingSignals

    rng = np.random.default_rng(0)
    tax = Taxonomy.load(SHARED)
    t0 = time.perf_counter()
    ids, classes, n_pics, md5 = make_training(tax, args.train_products, rng)
    signals = TrainingSignals.build(ids, classes, md5, n_pics, tax.n_classes)
    build_s = time.perf_counter() - t0
    # Queries: ids inside the training range (the test set interleaves), truth from the runs.
    test_pos = np.sort(rng.choice(len(ids), args.test_products + args.fit_products, replace=False))
    q_ids = ids[test_pos] + 1
    q_truth = classes[test_pos]
    rank, q_pics = make_ranking(tax, len(q_ids), q_ids, q_truth, rng)
    q_md5 = rng.integers(0, 256, size=(int(q_pics.sum()), 16), dtype=np.uint8)
    shared = rng.random(len(q_md5)) < 0.4
    q_md5[shared] = md5[rng.integers(0, len(md5), shared.sum())]
    q_owner = np.repeat(np.arange(len(q_ids)), q_pics.astype(np.int64))
    pic_start = np.concatenate([[0], np.cumsum(q_pics.astype(np.int64))])

    def chunk_table(a, b):
        part = rank.take(np.arange(a, b))
        sl = slice(pic_start[a], pic_start[b])
        return assemble(part, tax, signals, Evidence(q_md5[sl], q_owner[sl] - a))

    fit_n = args.fit_products
    table = chunk_table(0, fit_n)
    model = FusionModel.fit(table, q_truth[:fit_n], tuple(table.features), args.kind)
    trees = model.booster.num_trees()
    start, end = fit_n, fit_n + args.test_products
    chunks = [(a, min(a + 4096, end)) for a in range(start, end, 4096)]
    _STATE.update(chunk_table=chunk_table, model=model, truth=q_truth)

    t = time.perf_counter()
    single = [_fuse(c) for c in chunks[:6]]
    single_s = (time.perf_counter() - t) / sum(b - a for a, b in chunks[:6])
    feat_s = sum(r[0] for r in single) / sum(b - a for a, b in chunks[:6])
    rank_s = sum(r[1] for r in single) / sum(b - a for a, b in chunks[:6])
    model.threads = 1
    t = time.perf_counter()
    results = list(map_forked(lambda: _fuse, chunks, args.workers))
    parallel_s = time.perf_counter() - t
    rows = sum(r[2] for r in results)
    correct = sum(r[3] for r in results)
    n = end - start
    # Baseline: the id share for one window, one product at a time over the sorted training ids.
    k = signals.ks[1]
    sample = min(2000, n)
    cand = rank.topk_class[start:start + sample]
    t = time.perf_counter()
    for i in range(sample):
        p = int(np.searchsorted(ids, q_ids[start + i]))
        lo = max(0, min(p - k // 2, len(ids) - k))
        window = classes[lo:lo + k].tolist()
        _ = [window.count(int(c)) / k for c in cand[i]]
    loop_s = (time.perf_counter() - t) / sample * n
    t = time.perf_counter()
    signals.id_prior.features(np.repeat(q_ids[start:end], 20), rank.topk_class[start:end].reshape(-1), [k])
    vec_s = time.perf_counter() - t
    return {"train_products": args.train_products, "test_products": n, "classes": tax.n_classes,
            "signals_build_s": build_s, "rows": rows, "rows_per_product": rows / n, "features": len(model.feature_names),
            "trees": trees, "workers": args.workers, "products_per_s": n / parallel_s,
            "one_process_products_per_s": 1 / single_s, "one_process_features_products_per_s": 1 / feat_s,
            "one_process_ranking_products_per_s": 1 / rank_s, "goal_products_per_s": 100_000,
            "id_share_python_loop_s": loop_s, "id_share_vectorised_s": vec_s, "id_share_ratio": loop_s / vec_s,
            "fused_top1_on_synthetic_rankings": correct / n, "peak_rss_mb": rss_mb()}


def run(cmd: list[str], log: list) -> dict:
    """Run one etalage command in a child; its wall time and peak RSS (the child's own)."""
    t = time.perf_counter()
    code = (
        "import resource, subprocess, sys, json\n"
        "rc = subprocess.call(sys.argv[1:])\n"
        "print(json.dumps({'rc': rc, 'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    if last["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    row = {"command": " ".join(cmd[1:4]), "wall_s": time.perf_counter() - t, "peak_rss_mb": last["rss_mb"]}
    log.append(row)
    print(f"  {row['command']:<40} {row['wall_s']:8.1f} s {row['peak_rss_mb']:8.0f} MB", flush=True)
    return row


def pipeline(args) -> dict:
    etalage = str(Path(sys.executable).with_name("etalage"))
    work = Path(args.work)
    cat = work / "cat100k"
    test_products = args.pipeline_products
    log: list = []
    if not (cat / "test.bson").exists():
        run([etalage, "synth", "--out", str(cat), "--products", str(int(test_products / 0.8)), "--test-fraction",
             "0.8", "--seed", "5", "-q"], log)
    run([etalage, "index", str(cat / "train.bson"), str(cat / "test.bson"), "--md5", "-q"], log)
    runs = work / "run_tiny"
    if not (runs / "model.pt").exists():
        run([etalage, "train", "--train", str(cat / "train.bson"), "--out", str(runs), "--backbone",
             "test_efficientnet", "--weights", "none", "--picture-size", "64", "--crop", "56", "--epochs", "1",
             "--max-minutes", "3", "--val-fraction", "0.05", "--batch-size", "64", "-q"], log)
    fusion = work / "fusion_tiny"
    run([etalage, "fusion", "fit", "--run", str(runs), "--train", str(cat / "train.bson"), "--out", str(fusion),
         "-q"], log)
    sub = work / "submission.csv"
    for p in (work / "submission_work",):
        if p.exists():
            import shutil

            shutil.rmtree(p)
    row = run([etalage, "submit", "--fusion", str(fusion), "--test", str(cat / "test.bson"), "--out", str(sub),
               "-q"], log)
    return {"test_products": test_products, "commands": log, "submit_peak_rss_mb": row["peak_rss_mb"],
            "submit_wall_s": row["wall_s"], "goal_peak_rss_mb": 4096}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-products", type=int, default=1_000_000)
    ap.add_argument("--test-products", type=int, default=100_000)
    ap.add_argument("--fit-products", type=int, default=20_000)
    ap.add_argument("--kind", default="binary", choices=("ranker", "binary"),
                    help="fusion model kind (binary grows more trees here: the slower case)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="fusion processes (submit's default)")
    ap.add_argument("--pipeline", action="store_true", help="also run the 100k-product submission pipeline")
    ap.add_argument("--pipeline-products", type=int, default=100_000)
    ap.add_argument("--work", default="/tmp/etalage_bench_fusion")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fusion.json"))
    args = ap.parse_args()
    if not SHARED.exists():
        raise SystemExit(f"{SHARED}: the real category_names.csv is needed (see ../shared/data/README.md)")
    result = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "python": platform.python_version()}
    result["throughput"] = tp = throughput(args)
    print(f"features + ranking: {tp['products_per_s']:,.0f} products/s with {tp['workers']} processes "
          f"({tp['rows_per_product']:.1f} rows, {tp['features']} features, {tp['trees']} trees); one process "
          f"{tp['one_process_products_per_s']:,.0f}/s (features {tp['one_process_features_products_per_s']:,.0f}/s, "
          f"ranking {tp['one_process_ranking_products_per_s']:,.0f}/s); id share vectorised "
          f"{tp['id_share_ratio']:.0f}x the Python loop; peak RSS {tp['peak_rss_mb']:.0f} MB")
    if args.pipeline:
        result["pipeline"] = pl = pipeline(args)
        print(f"submit on {pl['test_products']:,} products: peak RSS {pl['submit_peak_rss_mb']:.0f} MB, "
              f"{pl['submit_wall_s']:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
