"""The Tesseract engine's pictures/s before and after it stopped writing ``OMP_THREAD_LIMIT=1`` into the process
environment (it now gives the binary an environment of its own), through the OCR pool as ``etalage ocr
--workers N`` runs it, in one run, rounds interleaved.

- before: pytesseract's ``image_to_data`` (what the engine called), the variable set in the reading process's
  ``os.environ`` (what the engine did), in forked workers;
- after: ``load_engine("tesseract")`` (the binary run with its own environment), in forked workers.

Pictures: rendered book covers (``etalage.synth.covers``), 180x180, as the cover specialists read them.
Writes ``benchmarks/results/tesseract_env.json``.

    python benchmarks/bench_tesseract_env.py --pictures 96 --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def covers(n: int) -> list[np.ndarray]:
    from etalage.synth.covers import draw_cover
    from etalage.synth.words import ENGLISH, FRENCH, LAST_NAMES

    rng = np.random.default_rng(0)
    words = list(ENGLISH) + list(FRENCH)
    return [np.asarray(draw_cover(" ".join(rng.choice(words, 4)), str(rng.choice(LAST_NAMES)), rng,
                                  kind="book").convert("RGB")) for _ in range(n)]


def _old_reader():
    """What the engine did before: pytesseract, its binary inheriting this process's environment, which the
    engine had set OMP_THREAD_LIMIT=1 in (here the measuring process is started with it)."""
    import pytesseract
    from PIL import Image

    def read(pic):
        img = Image.fromarray(pic).convert("L").resize((540, 540), Image.BICUBIC)
        d = pytesseract.image_to_data(img, lang="fra+eng", config="--psm 11", output_type=pytesseract.Output.DICT)
        return [t for t in d["text"] if t.strip()]

    return read


def _new_reader():
    from etalage.ocr import load_engine

    engine = load_engine("tesseract")
    return lambda pic: [b.text for b in engine.read([pic])[0]]


def measure(mode: str, n: int, workers: int) -> dict:
    """In this process: the pool's pictures/s with one way of reading (``before`` or ``after``)."""
    from etalage.forking import map_forked

    pics = covers(n)
    t0 = time.perf_counter()
    words = list(map_forked(_old_reader if mode == "before" else _new_reader, pics, workers))
    return {"rate": n / (time.perf_counter() - t0), "words": words}


def run_measure(mode: str, n: int, workers: int) -> dict:
    """``measure`` in a fresh interpreter, ``before`` with OMP_THREAD_LIMIT=1 in its environment from the start."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_THREAD_LIMIT": "1"} if mode == "before" else dict(os.environ)
    res = subprocess.run([sys.executable, __file__, "--measure", mode, "--pictures", str(n), "--workers",
                          str(workers)], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pictures", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tesseract_env.json"))
    ap.add_argument("--measure", choices=("before", "after"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.pictures, args.workers)))
        return
    rates: dict[str, list[float]] = {"before": [], "after": []}
    same = True
    for _ in range(args.rounds):  # interleaved, so that load on the machine falls on both alike
        before = run_measure("before", args.pictures, args.workers)
        after = run_measure("after", args.pictures, args.workers)
        rates["before"].append(before["rate"])
        rates["after"].append(after["rate"])
        same &= before["words"] == after["words"]
    result = {"data": f"rendered book covers (etalage.synth.covers), {args.pictures} of 180x180",
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "workers": args.workers,
              "rounds": args.rounds, "pictures_per_s": rates,
              "median_after_over_before": float(np.median(np.array(rates["after"]) / np.array(rates["before"]))),
              "same_words": bool(same), "date": time.strftime("%Y-%m-%d"),
              "command": f"python benchmarks/bench_tesseract_env.py --pictures {args.pictures} --workers "
                         f"{args.workers} --rounds {args.rounds}"}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
