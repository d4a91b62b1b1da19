"""Choosing the core's training recipe on real photos: each named variant of the training settings trained
for the same time budget on a dev split of a real set, scored on the split's test part.

Dev splits (``etalage.bench.core.dev_split``; the held-out parts are never read): fashion-dev split 80/20
by product, stratified by class, seed 0; grocery-dev by its own official parts (train- photos for training,
val- photos for testing). Both packed letterboxed to 180x180, the Cdiscount shape. Each variant is one
``etalage bench core`` run (``--no-anchors``; the anchors are computed once per set with ``--anchors``).

    python benchmarks/bench_core_recipe.py --set fashion --minutes 8 base size96 size160 ...

The run's own probe against none (20 minutes a variant, both sets; the anchors once, with the first):

    python benchmarks/bench_core_recipe.py --set grocery --minutes 20 --anchors base
    python benchmarks/bench_core_recipe.py --set grocery --minutes 20 no-probe no-probe-init
    python benchmarks/bench_core_recipe.py --set fashion --minutes 20 --anchors base
    python benchmarks/bench_core_recipe.py --set fashion --minutes 20 no-probe no-probe-init

Results accumulate in ``benchmarks/results/core_recipe_SET_MINUTES.json`` (a finished variant is not rerun).
Run nothing else heavy beside it: the budget is wall-clock time, so a busy machine trains fewer steps.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "real-products"
RESULTS = ROOT / "benchmarks" / "results"

# Variants: the settings each changes from the defaults of `etalage train` (as TrainConfig names them).
VARIANTS: dict[str, dict] = {
    "base": {},  # the defaults of the time (since the run's own probe: --probe-init, --keep-probe, --val-groups 0.8)
    "ensemble": {},  # the defaults since the mean of the probe and the fine-tune became a candidate (2026-12-04)
    # the run's own linear probe (etalage.core.probe), all off (the defaults before it) or one use at a time off
    "no-probe": {"probe_init": False, "keep_probe": False, "val_groups": 0.0},
    "no-probe-init": {"probe_init": False},
    "no-keep-probe": {"keep_probe": False},
    "random-val": {"val_groups": 0.0},
    "probe128": {"probe_size": 128},
    "old-defaults": {"picture_size": 180, "crop": 160, "resize": "stretch", "batch_size": 64,
                     "channels_last": False},
    "size96": {"picture_size": 96},
    "size112": {"picture_size": 112},
    "size128": {"picture_size": 128},
    "size160": {"picture_size": 160},
    "size180": {"picture_size": 180},
    "stretch": {"resize": "stretch"},
    "batch32": {"batch_size": 32},
    "batch128": {"batch_size": 128},
    "lr3e-3": {"lr": 3e-3},
    "lr3e-4": {"lr": 3e-4},
    "head1": {"head_epochs": 1.0},
    "freeze3": {"freeze": 3},
    "freeze2": {"freeze": 2},
    "layer0.8": {"layer_decay": 0.8},
    "resized-crop": {"augment": "resized-crop"},
    "trivial": {"augment": "trivial"},
    "randaugment": {"augment": "randaugment"},
    "mixup": {"mixup": 0.2},
    "cutmix": {"cutmix": 1.0},
    "ema": {"ema": 0.999},
    "smooth0.1": {"label_smoothing": 0.1},
    "best": {"keep": "best"},
    "lite1": {"backbone": "efficientnet_lite1"},
    "lite2": {"backbone": "efficientnet_lite2"},
}


def prepare(name: str) -> dict:
    from etalage.bench.core import dev_split

    work = ROOT.parent / "devdata" / name
    if name == "grocery":
        return dev_split(SHARED / "grocery-dev", work, test_prefix="val-")
    return dev_split(SHARED / f"{name}-dev", work, test_fraction=0.2, seed=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", help=f"variant names ({', '.join(VARIANTS)}) or NAME:KEY=VALUE,...")
    ap.add_argument("--set", required=True, choices=("fashion", "grocery"))
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--tta", default="none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--anchors", action="store_true", help="also the linear probe and 5-NN (once per set)")
    ap.add_argument("--lock", default="/tmp/etalage-cpu.lock", help="held while a variant trains (others wait)")
    args = ap.parse_args(argv)
    from etalage.bench.core import CoreBenchConfig, run_core_bench
    from etalage.options import parse_key_values

    files = prepare(args.set)
    out = RESULTS / f"core_recipe_{args.set}_{args.minutes:g}min.json"
    results = json.loads(out.read_text()) if out.exists() else {"machine": f"{platform.machine()}, 2 cores",
                                                                "set": args.set, "minutes": args.minutes,
                                                                "variants": {}}
    for spec in args.variants or ["base"]:
        name, _, settings = spec.partition(":")
        overrides = dict(VARIANTS.get(name, {}))
        overrides.update(parse_key_values(settings.split(",") if settings else [], "variant"))
        key = name if args.seed == 0 else f"{name}@seed{args.seed}"
        key += "" if args.tta == "none" else f"+tta-{args.tta}"
        if key in results["variants"]:
            print(f"{key}: done before", file=sys.stderr)
            continue
        report_path = ROOT.parent / "exp" / f"recipe-{args.set}-{args.minutes:g}" / f"{name}-s{args.seed}.json"
        with open(args.lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            rep = run_core_bench(CoreBenchConfig(files["train"], files["test"], report_path, labels=files["labels"],
                                                 max_minutes=args.minutes, overrides=overrides, anchors=args.anchors,
                                                 tta=args.tta, seed=args.seed), progress=False)
        row = {"settings": overrides, "core": rep["core"], "epochs": rep["epochs_seen"], "steps": rep["steps"],
               "picture_size": rep["picture_size"], "train_seconds": rep["train_seconds"],
               "predict_seconds": rep["predict_seconds"], "val_top1": rep["curve"][-1]["val_top1"],
               "kept": rep.get("kept"), "probe_val": rep.get("probe_val"), "ensemble_val": rep.get("ensemble_val"),
               "probe_seconds": rep.get("probe_seconds"), "against_no_tta": rep.get("against_no_tta")}
        for k in ("linear_probe", "knn", "majority"):
            if k in rep:
                results[k] = rep[k]
        results["variants"][key] = row
        from etalage.files import write_json_atomic

        write_json_atomic(out, results)
        print(f"{key}: leaf {rep['core']['leaf']:.4f} (val {row['val_top1']:.4f}, {row['epochs']:.1f} epochs at "
              f"{row['picture_size']}px, kept: {row['kept']})", flush=True)
        if row["against_no_tta"]:
            pair = row["against_no_tta"]
            print(f"  against the same network without TTA: {pair['only_candidate']} products only right with it, "
                  f"{pair['only_reference']} only without (sign test p={pair['p']:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
