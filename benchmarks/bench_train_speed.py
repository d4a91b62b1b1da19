"""Training speed of the core per path, and what each path learns per epoch.

``speed``: in ONE process, one trainer per variant (the defaults of ``etalage train`` with each variant's
settings changed) on the same dump and split; their steps run in interleaved windows of ``--window`` steps
(pixel path, then the kept maps, then the pixel path again, ...) epoch by epoch in lockstep, so load from
other jobs falls on every variant alike. Each window times the trainer's own steps with their data
loading (decoding, augmentation, or reading and filling the kept maps), not validation. Reports
training pictures/s per variant and epoch, their ratio to the first variant, and the epochs each would
fit in ``--budget-minutes`` on the full training part (its per-picture times by epoch, the last one's
onwards: the maps' share read from the cache depends on the epoch, not on how many products there are).

``accuracy``: train each variant for ``--epochs`` on a dev split from the same seed (validation every
epoch), then score it on the split's test part (``etalage.bench.core.run_core_bench``, no anchors); the
runs are resumable and a finished one is not run again.

Dumps: fashion-dev split 80/20 by product, stratified, seed 0 (``etalage.bench.core.dev_split``, the
held-out parts are never read), packed letterboxed to 180 px as in the README; ``--products N`` packs a
stratified subset of N training products (the same test part). Or any labelled dump with ``--data``,
e.g. the synthetic catalogue (1-4 pictures per product): ``etalage synth --out /tmp/synth --products 3000``.

    # on a quiet machine, nothing else running (22,753: fashion-dev's training photos less validation)
    python benchmarks/bench_train_speed.py speed --products 4096 --full-pictures 22753 --epochs 5 \
        pixel maps pixel-freeze4 maps-freeze4
    etalage synth --out /tmp/synth --products 3000
    python benchmarks/bench_train_speed.py speed --data /tmp/synth/train.bson --epochs 5 pixel maps
    python benchmarks/bench_train_speed.py accuracy --epochs 2 pixel maps maps-freeze4

With ``OMP_NUM_THREADS=1`` on a shared machine, read the CPU-time ratios. The budget's epochs take the last
measured epoch's speed for the epochs after it, which undercounts the maps' (more of them read each epoch).

Variants: ``pixel`` (the defaults: pictures), ``maps`` (the kept maps, ``map_cache_gb`` 8), ``*-bf16``
(bf16 autocast on the CPU, which ``etalage train`` does on CUDA only), ``maps-compile`` (``torch.compile``;
its compilation is timed apart), ``*-freeze4`` (a recipe change: one more stage frozen), or
``NAME:KEY=VALUE,...``.
Results go to ``benchmarks/results/train_speed_*.json``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "real-products"
RESULTS = ROOT / "benchmarks" / "results"

# Each variant: the TrainConfig settings it changes, and "bf16": bf16 autocast on the CPU.
MAPS = {"map_cache_gb": 8.0}
VARIANTS: dict[str, dict] = {
    "pixel": {"map_cache_gb": 0.0},
    "maps": MAPS,
    "pixel-bf16": {"map_cache_gb": 0.0, "bf16": True},
    "maps-bf16": {**MAPS, "bf16": True},
    "maps-compile": {**MAPS, "compile": True},
    "pixel-freeze4": {"map_cache_gb": 0.0, "freeze": 4},
    "maps-freeze4": {**MAPS, "freeze": 4},
}


def variant(spec: str, common: dict) -> tuple[str, dict]:
    """A variant's name and settings: ``common`` (``--set``), then its own."""
    from etalage.options import parse_key_values

    name, _, settings = spec.partition(":")
    if name not in VARIANTS and not settings:
        raise SystemExit(f"unknown variant {name!r} (known: {', '.join(VARIANTS)}, or NAME:KEY=VALUE,...)")
    overrides = {**common, **VARIANTS.get(name, {})}
    overrides.update(parse_key_values(settings.split(",") if settings else [], "variant"))
    return name, overrides


def prepare(args) -> dict:
    """The dump to train on (and, for a dev split, its test part)."""
    if args.data:
        return {"train": Path(args.data), "test": None, "labels": None}
    from etalage.bench.core import dev_split

    suffix = f"-{args.products}" if args.products else ""
    work = Path(tempfile.gettempdir()) / f"etalage-{args.dev_set}-dev{suffix}"
    return dev_split(SHARED / f"{args.dev_set}-dev", work, test_fraction=0.2, seed=0, max_train=args.products,
                     progress=False)


def _trainer(train_file: Path, out: Path, overrides: dict, epochs: float):
    """A trainer of ``etalage train``'s own (its steps, loader and schedule) for one variant."""
    from etalage.core.config import TrainConfig
    from etalage.core.train import _Trainer

    settings = {k: v for k, v in overrides.items() if k != "bf16"}
    cfg = TrainConfig(train=str(train_file), out=str(out), epochs=epochs, **settings)
    trainer = _Trainer(cfg, resume=False, progress=False)
    trainer.pictures_seen = 0  # what an epoch of train() sets first
    trainer.amp = bool(overrides.get("bf16")) or trainer.amp
    return trainer


def _window(trainer, it, steps: int) -> tuple[float, float, int, bool]:
    """``steps`` steps of ``trainer`` from iterator ``it``: (seconds, CPU seconds of this process, pictures,
    epoch over). The CPU seconds are the steadier figure on a shared machine with one thread
    (``OMP_NUM_THREADS=1``); with more, they count the threads' waiting for each other too."""
    t, cpu, pictures = time.perf_counter(), time.process_time(), 0
    for _ in range(steps):
        batch = next(it, None)
        if batch is None:
            return time.perf_counter() - t, time.process_time() - cpu, pictures, True
        trainer._step(batch)
        pictures += len(batch.picture_product)
    return time.perf_counter() - t, time.process_time() - cpu, pictures, False


def measure_speed(train_file: Path, variants: dict[str, dict], epochs: int, window: int, work: Path) -> dict:
    """Interleaved windows of every variant's steps, epoch by epoch: seconds and pictures per epoch."""
    trainers, compile_s = {}, {}
    for name, overrides in variants.items():
        trainers[name] = _trainer(train_file, work / name, overrides, epochs)
        logging.info("%s: %s", name, "kept maps" if trainers[name].map_cache is not None else "pictures")
    per_epoch = {name: [] for name in variants}
    for epoch in range(epochs):
        iters = {}
        for name, tr in trainers.items():
            tr.sampler.set_epoch(epoch)
            tr.state["epoch"], tr.state["batch_in_epoch"] = epoch, 0
            iters[name] = iter(tr.loader)
            per_epoch[name].append({"seconds": 0.0, "cpu_seconds": 0.0, "pictures": 0})
        running = set(trainers)
        while running:
            for name in list(running):
                if variants[name].get("compile") and name not in compile_s:  # its first step compiles
                    compile_s[name], _, pictures, _ = _window(trainers[name], iters[name], 1)
                    per_epoch[name][-1]["pictures"] += pictures
                    continue
                seconds, cpu, pictures, over = _window(trainers[name], iters[name], window)
                per_epoch[name][-1]["seconds"] += seconds
                per_epoch[name][-1]["cpu_seconds"] += cpu
                per_epoch[name][-1]["pictures"] += pictures
                if over:
                    running.discard(name)
        for name, tr in trainers.items():
            e = per_epoch[name][-1]
            e["pictures_per_s"] = e["pictures"] / max(1e-9, e["seconds"])
            e["pictures_per_cpu_s"] = e["pictures"] / max(1e-9, e["cpu_seconds"])
            if tr.map_cache is not None:
                e["maps_read"] = tr.map_cache.hits / max(1, tr.map_cache.hits + tr.map_cache.misses)
                tr.map_cache.hits = tr.map_cache.misses = 0
            logging.info("epoch %d %s: %.1f pictures/s", epoch + 1, name, e["pictures_per_s"])
    return {"variants": variants, "epochs": per_epoch, "compile_seconds": compile_s,
            "training_pictures": {name: len(tr.train_pos) for name, tr in trainers.items()}}


def epochs_within(per_epoch: list[dict], pictures: int, minutes: float) -> float:
    """Epochs over ``pictures`` training pictures that fit in ``minutes`` at the measured seconds per
    picture of each epoch (the last measured one's onwards)."""
    left, done = minutes * 60, 0.0
    for k in range(1000):
        e = per_epoch[min(k, len(per_epoch) - 1)]
        cost = pictures * e["seconds"] / max(1, e["pictures"])
        if cost >= left:
            return done + left / cost
        left, done = left - cost, done + 1
    return done


def speed(args) -> dict:
    from etalage.catalog import Catalog

    files = prepare(args)
    with tempfile.TemporaryDirectory(prefix="bench-train-speed-") as tmp:
        variants = dict(variant(s, args.common) for s in args.variants or ["pixel", "maps"])
        result = measure_speed(files["train"], variants, args.epochs, args.window, Path(tmp))
    base = next(iter(result["epochs"]))
    full = args.full_pictures or int(Catalog.open(files["train"]).n_pictures.sum() * 0.95)  # less validation
    report = {"data": str(files["train"]), "machine": f"{platform.machine()}, {_cpus()} cores", "date":
              time.strftime("%Y-%m-%d"), "window_steps": args.window, **result, "ratio_to": base,
              "ratios": _ratios(result["epochs"], base, "pictures_per_s"),
              "cpu_ratios": _ratios(result["epochs"], base, "pictures_per_cpu_s"),
              "budget_minutes": args.budget_minutes, "budget_pictures": full,
              "epochs_in_budget": {name: epochs_within(epochs, full, args.budget_minutes)
                                   for name, epochs in result["epochs"].items()}}
    for name, ratios in report["ratios"].items():
        rates = ", ".join(f"{e['pictures_per_s']:.1f}" for e in result["epochs"][name])
        print(f"{name:>14}: pictures/s by epoch {rates}; x{' x'.join(f'{r:.2f}' for r in ratios)} of {base} "
              f"(CPU time: x{' x'.join(f'{r:.2f}' for r in report['cpu_ratios'][name])}); "
              f"{report['epochs_in_budget'][name]:.1f} epochs of {full} pictures in {args.budget_minutes:g} min")
    return report


def _ratios(epochs: dict[str, list[dict]], base: str, key: str) -> dict[str, list[float]]:
    return {name: [e[key] / max(1e-9, b[key]) for e, b in zip(rows, epochs[base], strict=True)]
            for name, rows in epochs.items()}


def _cpus() -> int:
    from etalage.resources import usable_cpus

    return usable_cpus()


def accuracy(args) -> dict:
    from etalage.bench.core import run_core_bench

    files = prepare(args)
    work = Path(args.work) / f"train-speed-accuracy-{args.dev_set}{'-' + str(args.products) if args.products else ''}"
    report = {"data": str(files["train"]), "test": str(files["test"]), "epochs": args.epochs, "variants": {}}
    for spec in args.variants or ["pixel", "maps"]:
        name, overrides = variant(spec, args.common)
        if overrides.pop("bf16", False):
            raise SystemExit(f"{name}: bf16 on the CPU is a speed variant only (etalage train has no setting for it)")
        rep = run_core_bench(files["train"], files["test"], work / f"{name}.json", labels=files["labels"],
                             minutes=10_000.0, overrides={**overrides, "epochs": float(args.epochs), "eval_every": 1.0},
                             anchors=False, seed=args.seed, progress=not args.quiet)
        report["variants"][name] = {"settings": overrides, "test": rep["core"], "train_seconds": rep["train_seconds"],
                                    "val_top1_by_epoch": [c["val_top1"] for c in rep["curve"]]}
        print(f"{name:>14}: test leaf top-1 {rep['core']['leaf']:.4f} (level 2 {rep['core']['level2']:.4f}); "
              f"validation by epoch {', '.join(f'{c:.4f}' for c in report['variants'][name]['val_top1_by_epoch'])}; "
              f"{rep['train_seconds']:.0f} s of training", flush=True)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("speed", "accuracy"))
    ap.add_argument("variants", nargs="*", help=f"variant names ({', '.join(VARIANTS)}) or NAME:KEY=VALUE,...; the "
                                                "first is the one the others are compared with (default: pixel maps)")
    ap.add_argument("--dev-set", default="fashion", choices=("fashion", "grocery"), help="dev split to train on")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a training setting for every variant (repeatable)")
    ap.add_argument("--data", help="any labelled dump instead (category_names.csv beside it); speed only")
    ap.add_argument("--products", type=int, help="a stratified subset of this many training products")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--window", type=int, default=8, help="steps per timed window (speed)")
    ap.add_argument("--budget-minutes", type=float, default=20.0, help="the budget the epochs are counted in")
    ap.add_argument("--full-pictures", type=int, help="pictures of the full training part the budget is counted on "
                                                      "(default: the dump's, less 5%% validation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--work", default=str(ROOT.parent / "exp"), help="where the accuracy runs and their "
                                                                      "predictions go (kept: a rerun resumes)")
    ap.add_argument("--out", help="result file (default: benchmarks/results/train_speed_MODE_DATA.json)")
    args = ap.parse_intermixed_args(argv)
    from etalage.options import parse_key_values

    args.common = parse_key_values(args.set, "--set")
    if args.data and args.mode == "accuracy":
        ap.error("accuracy trains on a dev split (--dev-set), which has a test part")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    report = speed(args) if args.mode == "speed" else accuracy(args)
    tag = Path(args.data).parent.name if args.data else f"{args.dev_set}{'-' + str(args.products) if args.products else ''}"
    out = Path(args.out) if args.out else RESULTS / f"train_speed_{args.mode}_{tag}.json"
    from etalage.files import write_json_atomic

    write_json_atomic(out, report)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
