"""Data-layer benchmark: indexing, picture hashing and decoding, as ratios against baselines
measured in the same run on the same file.

- index: the whole `etalage index FILE` command (a new process: start-up included) against a
  `bson.decode_file_iter` scan of the same file (in-process, so the baseline pays no start-up).
- md5: `hash_pictures` (all cores, and one) against hashlib's own MD5 over the same picture
  bytes already in memory on one core.
- decode: decode + random 160px crop of the 180px JPEGs on one core (goal >= 1,500 pictures/s).

Usage: python benchmarks/bench_data.py [--gb 1.0] [--work DIR] [--out benchmarks/results/data.json]
The ~1 GB file is made by repeating the documents of a synthetic catalogue with new ids.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_big_file(work: Path, gb: float) -> Path:
    import bson

    from etalage.synth import SynthConfig, write_synthetic_catalogue

    seed_dir = work / "seed"
    if not (seed_dir / "train.bson").exists():
        write_synthetic_catalogue(seed_dir, SynthConfig(products=4000, seed=7, test_fraction=0.0), progress=True)
    big = work / f"big_{gb:g}gb.bson"
    if big.exists():
        return big
    docs = list(bson.decode_file_iter(open(seed_dir / "train.bson", "rb")))
    target = int(gb * 1e9)
    written, next_id = 0, 1
    tmp = big.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        while written < target:
            for d in docs:
                d = dict(d, _id=next_id)
                next_id += 1
                data = bson.encode(d)
                fh.write(data)
                written += len(data)
                if written >= target:
                    break
    os.replace(tmp, big)
    return big


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def bench_index(path: Path, repeat: int) -> dict:
    import bson

    size = path.stat().st_size
    base = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = 0
        with open(path, "rb") as fh:
            for _doc in bson.decode_file_iter(fh):
                n += 1
        base.append(time.perf_counter() - t0)
    ours = []
    exe = [sys.executable, "-m", "etalage.cli", "index", str(path), "-q"]
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(exe, check=True, stdout=subprocess.DEVNULL)
        ours.append(time.perf_counter() - t0)
    b, o = min(base), min(ours)
    return {"bytes": size, "products": n, "baseline_decode_file_iter_s": b, "baseline_GBps": size / b / 1e9,
            "etalage_index_command_s": o, "etalage_GBps": size / o / 1e9, "ratio": b / o, "goal": 0.5}


def bench_md5(path: Path) -> dict:
    from etalage.catalog.bsonindex import BsonIndex, hash_pictures

    idx = BsonIndex.load(path)
    with open(path, "rb") as fh:
        data = fh.read()
    pics = [data[o:o + n] for o, n in zip(idx.pictures["offset"].tolist(), idx.pictures["length"].tolist(),
                                          strict=True)]
    nbytes = sum(len(p) for p in pics)
    t0 = time.perf_counter()
    base = [hashlib.md5(p).digest() for p in pics]
    t_base = time.perf_counter() - t0
    del data, pics
    t0 = time.perf_counter()
    one = hash_pictures(path, workers=1, index=idx)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    hash_pictures(path, index=idx)
    t_all = time.perf_counter() - t0
    assert bytes(one[0]) == base[0] and bytes(one[-1]) == base[-1]
    return {"pictures": len(base), "picture_bytes": nbytes, "baseline_hashlib_1core_s": t_base,
            "baseline_GBps": nbytes / t_base / 1e9, "etalage_1_worker_s": t_one, "ratio_1_worker": t_base / t_one,
            "etalage_all_cores_s": t_all, "ratio_all_cores": t_base / t_all, "cores": os.cpu_count()}


def bench_decode(path: Path, n: int = 4000) -> dict:
    from etalage.catalog import Catalog, random_crop
    from etalage.catalog.pictures import decode_picture

    cat = Catalog.open(path)
    pics = []
    for i in range(len(cat)):
        pics.extend(cat.picture_bytes(i))
        if len(pics) >= n:
            break
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for p in pics:
        np.ascontiguousarray(random_crop(decode_picture(p), 160, rng))
    dt = time.perf_counter() - t0
    return {"pictures": len(pics), "seconds": dt, "pictures_per_s_1core": len(pics) / dt, "goal": 1500}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--work", default="/tmp/etalage-bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = make_big_file(work, args.gb)
    warm(path)
    os.environ["OMP_NUM_THREADS"] = "1"
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "file": str(path), "index": bench_index(path, args.repeat), "md5": bench_md5(path),
           "decode": bench_decode(path)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
