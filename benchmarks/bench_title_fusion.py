"""Pictures and titles together on real fashion photos (dev part only): the core, the `title` specialist and
fusion fitted without id features (the titles' own worth), scored on the fashion-dev split's test part with every
title, and with the titles of a random 30% of its products blanked (pictures must cover those).

    python benchmarks/bench_title_fusion.py --run RUN        # a core run trained on the split's train dump
    python benchmarks/bench_title_fusion.py --max-minutes 20 # or train one here (the defaults)

The split: ``etalage.bench.core.dev_split`` of ../shared/data/real-products/fashion-dev (80/20, seed 0; the
held-out part of the set is never read). Writes ``benchmarks/results/title_fusion_fashion_dev.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "real-products"


def etalage(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "etalage.cli", *args, "-q"], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"etalage {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def top1(submission: Path, labels: Path) -> float:
    out = etalage("score", "--submission", str(submission), "--labels", str(labels))
    return float(out.split("accuracy ")[1].split()[0])


def blanked_listing(listing: Path, out: Path, share: float, seed: int = 0) -> int:
    """``listing`` with the titles of a random ``share`` of its products emptied; returns how many."""
    with listing.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    ids = sorted({r["_id"] for r in rows})
    rng = np.random.default_rng(seed)
    blank = set(rng.choice(ids, int(round(share * len(ids))), replace=False).tolist())
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "title": "" if r["_id"] in blank else r["title"]} for r in rows)
    return len(blank)


def main() -> None:
    from etalage.bench.core import dev_split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a core run trained on the split's train dump (default: train one)")
    ap.add_argument("--max-minutes", type=float, default=20.0)
    ap.add_argument("--work", default=str(ROOT.parent / "exp" / "title_fusion"))
    ap.add_argument("--blank", type=float, default=0.3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "title_fusion_fashion_dev.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    files = dev_split(SHARED / "fashion-dev", ROOT.parent / "devdata" / "fashion", test_fraction=0.2, seed=0)
    train, test, labels = Path(files["train"]), Path(files["test"]), Path(files["labels"])
    run = Path(args.run) if args.run else work / "run"
    t0 = time.perf_counter()
    if not args.run and not (run / "model.pt").exists():
        etalage("train", "--train", str(train), "--out", str(run), "--max-minutes", str(args.max_minutes))
    result = {"data": "real: fashion-dev split (dev_split 80/20, seed 0), titles from its listing",
              "machine": f"{platform.machine()}, 2 CPU cores", "date": time.strftime("%Y-%m-%d"),
              "run": str(run), "train_s": time.perf_counter() - t0}
    specs, fusion = work / "specs", work / "fusion"
    etalage("specialists", "fit", "--train", str(train), "--run", str(run), "--out", str(specs), "--names", "title")
    etalage("fusion", "fit", "--run", str(run), "--train", str(train), "--specialists", str(specs), "--out",
            str(fusion), "--without", "id")
    fit = json.loads((fusion / "fit_report.json").read_text())
    result["fit"] = {k: fit[k] for k in ("products", "core_top1", "valid_top1_by_kind", "titles_blanked", "kind")}
    etalage("submit", "--run", str(run), "--data", str(test), "--out", str(work / "core.csv"))
    result["core_alone"] = top1(work / "core.csv", labels)
    etalage("submit", "--fusion", str(fusion), "--data", str(test), "--out", str(work / "fused.csv"))
    result["fused"] = top1(work / "fused.csv", labels)
    blank_listing = work / "test_blanked_listing.csv"
    test_listing = Path(files["test"]).parent / "test_listing.csv"  # what dev_split packed the test dump from
    result["blanked_products"] = blanked_listing(test_listing, blank_listing, args.blank)
    blank_dump = work / "blanked" / "test.bson"
    etalage("pack", "--listing", str(blank_listing), "--images", str(SHARED / "fashion-dev" / "images"), "--out",
            str(blank_dump), "--no-labels", "--taxonomy", str(Path(files["taxonomy"])))
    etalage("submit", "--fusion", str(fusion), "--data", str(blank_dump), "--out", str(work / "fused_blanked.csv"))
    result["fused_with_blanked_titles"] = top1(work / "fused_blanked.csv", labels)
    result["command"] = f"python benchmarks/bench_title_fusion.py {'--run ' + args.run if args.run else ''}".strip()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
