"""Where the Ray engine's fixed cost goes: `etalage submit --engine ray` against `--engine local` on a finished
demo (its fusion model with the cover specialists, its test dump), each engine in a fresh work folder, from the
same OCR cache, outputs checked byte-identical; the engines take turns, ``--rounds`` times, and each one's best run
is kept. From each run's ``engine_stats.json``: Ray's start and stop, the
models each stage loads (summed over its actors: ``open_s``), the stages' busy seconds, the wall time.

    etalage demo --out /tmp/demo            # once (the demo's own model and data)
    python benchmarks/bench_ray_cost.py --demo /tmp/demo

Writes ``benchmarks/results/ray_cost.json``. Run it alone on the machine (it times whole commands).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def submit(demo: Path, work: Path, engine: str) -> dict:
    """One timed `etalage submit` in a child process; its engine statistics."""
    shutil.rmtree(work, ignore_errors=True)
    out = work.with_suffix(".csv")
    cmd = [sys.executable, "-m", "etalage.cli", "submit", "--fusion", str(demo / "fusion"), "--data",
           str(demo / "test.bson"), "--out", str(out), "--work", str(work), "--engine", engine, "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    stats = json.loads((work / "engine_stats.json").read_text())
    return {"wall_s": wall, "stats": stats, "submission": out.read_bytes()}


def breakdown(run: dict) -> dict:
    st = run["stats"]
    return {"wall_s": run["wall_s"], "start_s": st["timings"].get("start_s", 0.0),
            "stages_s": st["timings"].get("pipeline_s", 0.0), "stop_s": st["timings"].get("stop_s", 0.0),
            **{f"{name}_open_s": s["open_s"] for name, s in st["stages"].items()},
            **{f"{name}_busy_s": s["busy_s"] for name, s in st["stages"].items()},
            "products": max(s["products"] for s in st["stages"].values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="a finished `etalage demo` folder")
    ap.add_argument("--work", default="/tmp/etalage-ray-cost")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each engine, interleaved (each engine's best)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_cost.json"))
    args = ap.parse_args()
    demo, work = Path(args.demo), Path(args.work)
    rounds = {"local": [], "ray": []}
    for _ in range(args.rounds):  # interleaved: whatever else loads the machine falls on both
        for engine in rounds:
            rounds[engine].append(submit(demo, work / engine, engine))
    local, ray = (min(rounds[e], key=lambda r: r["wall_s"]) for e in ("local", "ray"))  # each engine's best
    result = {"data": f"the demo's synthetic test dump ({demo / 'test.bson'}), its fusion model with the cover "
                      f"specialists, the OCR cache filled by the demo",
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
              "command": f"python benchmarks/bench_ray_cost.py --demo {demo}",
              "identical_submissions": all(r["submission"] == local["submission"] for e in rounds for r in rounds[e]),
              "wall_s_by_round": {e: [r["wall_s"] for r in rounds[e]] for e in rounds},
              "local": breakdown(local), "ray": breakdown(ray),
              "ray_over_local_wall": ray["wall_s"] / local["wall_s"]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
