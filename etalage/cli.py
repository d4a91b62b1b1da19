"""The ``etalage`` command: parse, call one library function, report.

Heavy imports (torch, timm) happen inside the commands that need them, so ``index``, ``info``,
``score`` and ``synth`` start in a fraction of a second. Library errors (``EtalageError``) become
one line on stderr and exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from etalage.errors import EtalageError

log = logging.getLogger("etalage")


def _taxonomy_for(data_path: Path, explicit: str | None):
    """The taxonomy given by flag, else ``category_names.csv`` beside the data file, else None."""
    from etalage.catalog.taxonomy import Taxonomy

    if explicit:
        return Taxonomy.load(explicit)
    beside = Path(data_path).parent / "category_names.csv"
    return Taxonomy.load(beside) if beside.exists() else None


# ---------------------------------------------------------------------------------------------
# data commands (no torch)


def cmd_synth(args: argparse.Namespace) -> int:
    from etalage.catalog.synth import SynthConfig, write_synthetic_catalogue
    from etalage.catalog.taxonomy import Taxonomy

    cfg = SynthConfig(products=args.products, seed=args.seed, test_fraction=args.test_fraction, noise=args.noise,
                      text_strength=args.text_strength, id_run_length=args.id_run_length,
                      duplicate_rate=args.duplicate_rate, placeholder_rate=args.placeholder_rate, tail=args.tail,
                      classes=args.classes, jpeg_quality=args.jpeg_quality, workers=args.workers)
    try:
        cfg.check()
    except ValueError as exc:
        raise EtalageError(f"synth: {exc}") from None
    tax = Taxonomy.load(args.taxonomy) if args.taxonomy else None
    t0 = time.perf_counter()
    summary = write_synthetic_catalogue(args.out, cfg, tax, progress=not args.quiet)
    print(f"wrote {summary['train']} training and {summary['test']} test products "
          f"({summary['pictures']} pictures, {summary['classes_used']} classes) to {args.out} "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    import numpy as np

    from etalage.catalog.bsonindex import build_index, hash_pictures, index_path_for

    for path in args.files:
        t0 = time.perf_counter()
        tax = _taxonomy_for(Path(path), args.taxonomy) if args.check_categories or args.taxonomy else None
        idx = build_index(path, progress=not args.quiet,
                          known_category_ids=None if tax is None else tax.category_ids)
        dt = time.perf_counter() - t0
        print(f"{index_path_for(path)}: {len(idx.products)} products, {len(idx.pictures)} pictures "
              f"in {dt:.2f}s")
        if args.md5:
            t0 = time.perf_counter()
            digests = hash_pictures(path, workers=args.workers, progress=not args.quiet, index=idx)
            n_unique = len(np.unique(digests.view("V16")))
            print(f"{path}.md5.npy: {len(digests)} picture MD5s ({n_unique} distinct) in "
                  f"{time.perf_counter() - t0:.2f}s")
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    args.md5 = True
    args.check_categories = False
    return cmd_index(args)


def cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    from etalage.catalog.bsonindex import NO_CATEGORY, BsonIndex

    idx = BsonIndex.open(args.file, progress=not args.quiet)
    prods = idx.products
    n_pics = prods["n_pictures"]
    print(f"{args.file}")
    print(f"  products   {len(prods):>12,}")
    print(f"  pictures   {int(n_pics.sum()):>12,}  ({n_pics.mean():.2f} per product)")
    print("  pictures per product:")
    for k, c in zip(*np.unique(n_pics, return_counts=True), strict=True):
        print(f"    {int(k)}: {int(c):>10,}  {100 * c / len(prods):5.1f}%")
    labelled = prods["category_id"] != NO_CATEGORY
    if not labelled.any():
        print("  no category_id (a test file)")
        return 0
    cats = prods["category_id"][labelled]
    print(f"  categories used {len(np.unique(cats)):,}")
    tax = _taxonomy_for(Path(args.file), args.taxonomy)
    if tax is None:
        print("  (level-1 distribution needs --taxonomy or category_names.csv beside the file)")
        return 0
    l1 = tax.level1_of[tax.indices_of(cats)]
    counts = np.bincount(l1, minlength=tax.n_level1)
    print("  level-1 distribution:")
    for g in np.argsort(-counts, kind="stable"):
        if counts[g]:
            print(f"    {tax.level1_names[g]:<40} {int(counts[g]):>10,}  {100 * counts[g] / len(cats):5.1f}%")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from etalage.catalog.submission import score_submission

    tax = _taxonomy_for(Path(args.labels), args.taxonomy)
    score = score_submission(args.submission, args.labels, tax)
    print(f"product top-1 accuracy {score.accuracy:.4f} over {score.n} products")
    for name, (acc, n) in sorted(score.per_level1.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<40} {acc:.4f}  ({n})")
    return 0


# ---------------------------------------------------------------------------------------------
# model commands (torch imported inside)


def cmd_train(args: argparse.Namespace) -> int:
    from etalage.core.train import TrainConfig, train

    cfg = TrainConfig(train=args.train, out=args.out, taxonomy=args.taxonomy, backbone=args.backbone,
                      weights=args.weights, fusion=args.fusion, picture_size=args.picture_size, crop=args.crop,
                      batch_size=args.batch_size, epochs=args.epochs, max_minutes=args.max_minutes, lr=args.lr,
                      weight_decay=args.weight_decay, schedule=args.schedule, level1_weight=args.level1_weight,
                      level2_weight=args.level2_weight, val_fraction=args.val_fraction, seed=args.seed,
                      workers=args.workers, device=args.device, compile=args.compile,
                      channels_last=args.channels_last,
                      checkpoint_minutes=args.checkpoint_minutes, stop_after_steps=args.stop_after_steps)
    res = train(cfg, resume=args.resume, progress=not args.quiet)
    result = res.metrics
    if res.status == "paused":
        print("paused; continue with the same command and --resume")
    elif result:
        print(f"{args.out}: epoch {result.get('epoch')} validation top-1 {result.get('val_top1', float('nan')):.4f} "
              f"(level-1 {result.get('val_level1_top1', float('nan')):.4f}); model in {Path(args.out) / 'model.pt'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from etalage.catalog import Catalog
    from etalage.catalog.catalog import parse_shard
    from etalage.core.predict import CorePredictor

    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        raise EtalageError(str(exc)) from None
    catalog = Catalog.open(args.data, progress=not args.quiet)
    predictor = CorePredictor(args.run, device=args.device, batch_size=args.batch_size, workers=args.workers,
                              tta=args.tta, compile=args.compile)
    t0 = time.perf_counter()
    ranking = predictor.predict_catalog(catalog, args.out, topk=args.topk, picture_topk=args.picture_topk,
                                        shard=shard, embedding=args.embedding, progress=not args.quiet)
    dt = time.perf_counter() - t0
    if ranking is None:
        print(f"{args.out}: shard {args.shard} done in {dt:.1f}s; other shards still to run")
    else:
        print(f"{args.out}: {len(ranking)} products ranked (top-{ranking.topk_class.shape[1]}) in {dt:.1f}s")
    return 0


def _pipeline_arguments(sp: argparse.ArgumentParser, data_flag: str) -> None:
    sp.add_argument(data_flag, dest="data", required=True, metavar="FILE.bson", help="the dump to predict")
    sp.add_argument("--fusion", metavar="FUSION", help="fusion model (`etalage fusion fit`); it names the run, "
                                                       "training file and specialists it was fitted with")
    sp.add_argument("--run", help="core run (unset: the fusion model's; required without --fusion)")
    sp.add_argument("--train", metavar="FILE.bson", help="training dump for the hash and id signals "
                                                        "(unset: the fusion model's)")
    sp.add_argument("--specialists", metavar="SPECS", help="fitted specialists (unset: the fusion model's)")
    sp.add_argument("--work", metavar="WORK", help="stage outputs (unset: OUT_work beside --out, or DATA.work)")
    sp.add_argument("--shard", default="0/1", help="i/n: run slice i of n only")
    sp.add_argument("--chunk", type=int, default=4096,
                    help="products per resumable part (a killed job redoes at most one; shards are whole parts)")
    sp.add_argument("--ocr-cache", help="SQLite OCR cache (unset: ocr-cache.sqlite beside the data)")
    sp.add_argument("--topk", type=int, default=20, help="core top-K (core-only submissions)")
    sp.add_argument("--tta", choices=("none", "flip"),
                    help="core test-time augmentation (unset: the fusion model's, else none)")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--workers", type=int)
    sp.add_argument("--device", default="auto")


def _work_dir(args: argparse.Namespace) -> Path:
    if args.work:
        return Path(args.work)
    out = getattr(args, "out", None)
    return Path(out).with_name(Path(out).stem + "_work") if out else Path(str(args.data) + ".work")


def _run_pipeline(args: argparse.Namespace, command: str) -> bool:
    from etalage.catalog.catalog import parse_shard
    from etalage.fusion.stages import PredictPlan, predict_file

    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        raise EtalageError(str(exc)) from None
    plan = PredictPlan.from_model(args.fusion, args.run, args.train, args.specialists)
    if args.tta is not None and args.tta != plan.tta:
        raise EtalageError(f"{args.fusion} was fitted on core probabilities with --tta {plan.tta}; predict with the "
                           f"same (drop --tta) or refit with `etalage fusion fit --tta {args.tta}`")
    return predict_file(plan, args.data, _work_dir(args), shard=shard, command=command, ocr_cache=args.ocr_cache,
                        device=args.device, batch_size=args.batch_size, workers=args.workers,
                        chunk=args.chunk, progress=not args.quiet, report=print)


def cmd_submit(args: argparse.Namespace) -> int:
    from etalage.pipeline import submit_core

    if args.fusion is None:
        if args.run is None:
            raise EtalageError("submit: pass --fusion FUSION (full pipeline) or --run RUN (core only)")
        if args.merge or args.shard != "0/1":
            raise EtalageError("submit: --shard and --merge need --fusion (core only: `etalage predict --shard`)")
        res = submit_core(args.run, args.data, args.out, pred_dir=args.work, topk=args.topk, tta=args.tta or "none",
                          batch_size=args.batch_size, device=args.device, workers=args.workers,
                          progress=not args.quiet)
        print(f"{res['submission']}: {res['products']} products (core predictions in {res['predictions']})")
        return 0
    from etalage.catalog import Taxonomy
    from etalage.fusion.stages import PredictPlan, merge_submission

    work = _work_dir(args)
    shard_cmd = (f"etalage submit --fusion {args.fusion} --test {args.data} --out {args.out} --work {work} "
                 f"--shard i/n")
    if not args.merge:
        t0 = time.perf_counter()
        complete = _run_pipeline(args, shard_cmd)
        print(f"{work}: shard {args.shard} done in {time.perf_counter() - t0:.1f}s")
        if not complete:
            print("other shards still to run; then `etalage submit ... --merge`")
            return 0
    plan = PredictPlan.from_model(args.fusion, args.run, args.train, args.specialists)
    res = merge_submission(work, args.out, Taxonomy.load(Path(plan.run) / "category_names.csv"), args.data,
                           command=shard_cmd)
    print(f"{res['submission']}: {res['products']} products (fused; stage outputs in {work})")
    return 0


def cmd_specialists_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from etalage.catalog import Taxonomy
    from etalage.catalog.bsonindex import load_md5
    from etalage.fusion.stages import ensure_indexed
    from etalage.ocr import load_engine
    from etalage.ocr.cache import OcrCache
    from etalage.specialists.runner import fit_specialists

    if args.taxonomy:
        tax = Taxonomy.load(args.taxonomy)
    elif args.run:
        tax = Taxonomy.load(Path(args.run) / "category_names.csv")
    else:
        tax = _taxonomy_for(Path(args.train), None)
    if tax is None:
        raise EtalageError(f"{args.train}: pass --taxonomy category_names.csv (none beside the file)")
    train = ensure_indexed(args.train, tax, progress=not args.quiet)
    train.require_labels()
    exclude = None
    if args.run:
        val = Path(args.run) / "val_positions.npy"
        if not val.exists():
            raise EtalageError(f"{val}: not found; is {args.run} a run of `etalage train`?")
        exclude = np.load(val)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    cache = args.ocr_cache or str(Path(args.train).parent / "ocr-cache.sqlite")
    with OcrCache(cache) as c:
        rows = fit_specialists(train, tax, names, args.out, load_engine(args.ocr_engine), c, load_md5(args.train),
                               exclude=exclude, max_train=args.max_train, seed=args.seed, progress=not args.quiet)
    for r in rows:
        print(f"{Path(args.out) / r['specialist']}: fitted on {r['train_products']} products of {'+'.join(r['groups'])}")
    return 0


def cmd_fusion_fit(args: argparse.Namespace) -> int:
    from etalage.fusion.stages import fit_fusion

    fit = fit_fusion(args.run, args.train, args.out, specialists=args.specialists, kind=args.kind, topk=args.topk,
                     tta=args.tta, ocr_cache=args.ocr_cache, seed=args.seed, device=args.device, batch_size=args.batch_size,
                     workers=args.workers, progress=not args.quiet)
    kinds = ", ".join(f"{k} {v:.4f}" for k, v in fit["valid_top1_by_kind"].items())
    print(f"{args.out}: {fit['kind']} over {fit['products']} products ({fit['rows']:,} rows, {fit['features']} "
          f"features); candidate coverage {fit['candidate_coverage']:.4f}; core top-1 {fit['core_top1']:.4f}; "
          f"held-out top-1 by kind: {kinds}")
    return 0


def cmd_fusion_predict(args: argparse.Namespace) -> int:
    if args.fusion is None:
        raise EtalageError("fusion predict: pass --fusion FUSION (from `etalage fusion fit`)")
    work = _work_dir(args)
    complete = _run_pipeline(args, f"etalage fusion predict --fusion {args.fusion} --data {args.data} "
                                   f"--work {work} --shard i/n")
    state = "all shards done" if complete else "other shards still to run"
    print(f"{work / 'fused'}: shard {args.shard} done ({state})")
    return 0


def cmd_fusion_report(args: argparse.Namespace) -> int:
    from etalage.fusion.stages import write_report

    rep = write_report(args.model, args.out, folds=args.folds, progress=not args.quiet)
    print(f"{'signals':<28}{'features':>9}{'top-1':>9}")
    for r in rep["ablation"]:
        print(f"{r['signals']:<28}{r['features']:>9}{r['top1']:>9.4f}")
    print(f"report {rep['markdown']}, chart {rep['png']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from etalage.pipeline import run_demo

    specialists = tuple(s for s in args.specialists.split(",") if s.strip()) if args.specialists != "none" else ()
    run_demo(args.out, products=args.products, minutes=args.minutes, seed=args.seed, backbone=args.backbone,
             weights=args.weights, picture_size=args.picture_size, crop=args.crop, specialists=specialists,
             ocr_engine=args.ocr_engine, specialist_train=args.specialist_train, progress=not args.quiet)
    return 0


def cmd_ocr(args: argparse.Namespace) -> int:
    from etalage.ocr.runner import run_ocr

    tax = _taxonomy_for(Path(args.data), args.taxonomy)
    if tax is None:
        raise EtalageError(f"{args.data}: pass --taxonomy category_names.csv (none beside the file)")
    options = {}
    if args.scale is not None:
        options["scale"] = args.scale
    if args.lang and args.engine == "tesseract":
        options["lang"] = args.lang
    cache = args.cache or str(Path(args.data).parent / "ocr-cache.sqlite")
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    t0 = time.perf_counter()
    s = run_ocr(args.data, args.engine, groups, cache, tax, predictions=args.predictions, threshold=args.threshold,
                workers=args.workers, batch=args.batch, engine_options=options, progress=not args.quiet)
    dt = time.perf_counter() - t0
    print(f"{s.products} products of {', '.join(groups)}: {s.pictures} distinct pictures, {s.already_cached} "
          f"already cached, {s.read} read in {dt:.1f}s, {s.unreadable} unreadable -> {cache} ({s.engine})")
    if s.unreadable_examples:
        print("  unreadable (product#picture): " + ", ".join(f"{p}#{k}" for p, k in s.unreadable_examples[:10]))
    return 0


def cmd_specialists_list(args: argparse.Namespace) -> int:
    import warnings

    from etalage.specialists import discover

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are listed below, with their reason
        entries = discover()
    print(f"{'name':<16}{'origin':<32}{'groups':<24}status")
    for name, e in sorted(entries.items()):
        status = "ok" if e.error is None else f"failed: {e.error}"
        print(f"{name:<16}{e.origin:<32}{','.join(e.groups) or '-':<24}{status}")
    return 0


def cmd_bench_bookcover(args: argparse.Namespace) -> int:
    import json

    from etalage.catalog.io import atomic_write
    from etalage.specialists.bookcover import PUBLISHED, confusion_png, read_listing, run_bookcover

    if (args.images is None) == (not args.render):
        raise EtalageError("bench bookcover: give exactly one of --images DIR or --render")
    train, test = read_listing(args.train_listing), read_listing(args.test_listing)
    work = Path(args.out).with_suffix("")
    report = run_bookcover(train, test, args.images, work, ocr_engine=args.ocr_engine, seed=args.seed,
                           progress=not args.quiet)
    pred, truth, tax = report.pop("_confusion")
    png = Path(args.out).with_suffix(".confusion.png")
    confusion_png(pred, truth, tax, png, f"BookCover30, fused, top-1 {report['fused']['top1']:.3f}")
    with atomic_write(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"BookCover30: {report['train_books']} training and {report['test_books']} test books; covers: "
          f"{report['covers']}")
    print(f"  {'method':<34}{'top-1':>8}{'top-3':>8}")
    for key in ("title", "ocr", "image", "fused"):
        print(f"  etalage {key:<26}{report[key]['top1']:>8.3f}{report[key]['top3']:>8.3f}")
    for name, top1 in PUBLISHED.items():
        print(f"  {name:<34}{top1:>8.3f}{'':>8}  (published, 51,300 training books)")
    print(f"report {args.out}, confusion matrix {png}")
    return 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etalage",
        description="Sort e-commerce products into a catalogue's fine categories from their pictures "
                    "(Cdiscount BSON dumps, category_names.csv, Kaggle submissions).",
        epilog="Start with `etalage demo` (synthetic catalogue end to end); `etalage COMMAND --help` for details.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func, help_: str, description: str | None = None, parent=sub) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help_, description=description or help_,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sp.set_defaults(func=func)
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return sp

    sp = add("synth", cmd_synth, "write a synthetic Cdiscount-shaped catalogue (tests, demo, benchmarks)",
             "Write DIR/train.bson, DIR/test.bson (no category_id), DIR/category_names.csv, "
             "DIR/sample_submission.csv and DIR/test_labels.csv (the answer key). Pictures are 180x180 JPEGs: "
             "shapes and textures for generic classes, book and CD covers whose printed words decide the class. "
             "Deterministic per seed.")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--products", type=int, default=2000, help="products in train and test together")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--taxonomy", help="a real category_names.csv to draw classes from "
                                       "(default: a small built-in tree with LIBRAIRIE and MUSIQUE)")
    sp.add_argument("--classes", type=int, help="use only this many classes of the taxonomy")
    sp.add_argument("--test-fraction", type=float, default=0.2)
    sp.add_argument("--noise", type=float, default=0.5, help="picture noise for generic classes, 0-1")
    sp.add_argument("--text-strength", type=float, default=0.8,
                    help="share of cover words from the class's own vocabulary, 0-1")
    sp.add_argument("--id-run-length", type=float, default=8.0,
                    help="mean run of consecutive product ids sharing a class (1 = no id leak)")
    sp.add_argument("--duplicate-rate", type=float, default=0.15,
                    help="share of pictures that are exact copies of a class's stock pictures")
    sp.add_argument("--placeholder-rate", type=float, default=0.02,
                    help="share of pictures replaced by placeholders shared across classes")
    sp.add_argument("--tail", type=float, default=0.9, help="Zipf exponent of class sizes (0 = balanced)")
    sp.add_argument("--jpeg-quality", type=int, default=90)
    sp.add_argument("--workers", type=int, help="drawing processes (default: all cores)")

    for name, func, help_ in (
        ("index", cmd_index, "write the offset index FILE.bson.idx.npz (and with --md5 the picture hashes)"),
        ("hash", cmd_hash, "write FILE.bson.md5.npy: the MD5 of every picture (indexes first if needed)"),
    ):
        sp = add(name, func, help_)
        sp.add_argument("files", nargs="+", metavar="FILE.bson", help="Cdiscount BSON dump(s)")
        sp.add_argument("--taxonomy", help="category_names.csv: a category_id outside it is an error")
        sp.add_argument("--workers", type=int, help="hashing processes (default: all cores)")
        if name == "index":
            sp.add_argument("--md5", action="store_true", help="also hash every picture (a second pass)")
            sp.add_argument("--check-categories", action="store_true",
                            help="check category ids against category_names.csv beside the file")

    sp = add("info", cmd_info, "products, pictures per product and level-1 distribution of a BSON dump")
    sp.add_argument("file", metavar="FILE.bson")
    sp.add_argument("--taxonomy", help="category_names.csv (default: the one beside the file)")

    sp = add("score", cmd_score, "product top-1 accuracy of a submission against an answer key")
    sp.add_argument("--submission", required=True, help="_id,category_id CSV to score")
    sp.add_argument("--labels", required=True, help="_id,category_id answer key (e.g. test_labels.csv)")
    sp.add_argument("--taxonomy", help="category_names.csv for per-level-1 figures "
                                       "(default: the one beside the labels)")


    sp = add("train", cmd_train, "train the multi-picture CNN on a labelled BSON dump (one process or torchrun)",
             "Train the core: a timm backbone on every picture, fusion over each product's 1-4 pictures, a class "
             "head over the taxonomy plus level-1/level-2 heads. Writes RUN/config.json, RUN/metrics.jsonl "
             "(validation product top-1 per epoch), RUN/checkpoint.pt and, when done, RUN/model.pt. "
             "Several GPUs or machines: torchrun --nproc_per_node N -m etalage.cli train ... (DDP).")
    sp.add_argument("--train", required=True, metavar="FILE.bson", help="labelled training dump")
    sp.add_argument("--taxonomy", help="category_names.csv (default: the one beside the training file)")
    sp.add_argument("--out", required=True, metavar="RUN", help="run directory")
    sp.add_argument("--backbone", default="efficientnet_lite0", help="any timm model name")
    sp.add_argument("--weights", default="imagenet",
                    help="'imagenet' (offline package weights), 'none' (random init) or a state-dict file")
    sp.add_argument("--fusion", default="gate", choices=("gate", "attention", "mean", "max", "prob-mean"),
                    help="how a product's pictures are combined (prob-mean: average per-picture probabilities)")
    sp.add_argument("--picture-size", type=int, default=180, help="pictures are resized to this side")
    sp.add_argument("--crop", type=int, default=160, help="random training crop; evaluation uses the whole picture")
    sp.add_argument("--batch-size", type=int, default=64, help="products per batch and process")
    sp.add_argument("--epochs", type=float, default=3.0)
    sp.add_argument("--max-minutes", type=float, help="wall-clock budget; the schedule is fitted into it")
    sp.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    sp.add_argument("--weight-decay", type=float, default=0.02)
    sp.add_argument("--schedule", default="cosine", choices=("cosine", "grow-batch"),
                    help="cosine decay, or keep the rate and grow the batch (1x, 2x, 4x by accumulation)")
    sp.add_argument("--level1-weight", type=float, default=0.2, help="weight of the level-1 head's loss (0: off)")
    sp.add_argument("--level2-weight", type=float, default=0.2, help="weight of the level-2 head's loss (0: off)")
    sp.add_argument("--val-fraction", type=float, default=0.05, help="held-out products, stratified by class")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--workers", type=int, help="DataLoader worker processes (default: none on CPU, most cores on CUDA)")
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda")
    sp.add_argument("--compile", action="store_true", help="torch.compile the model")
    sp.add_argument("--channels-last", action="store_true",
                    help="NHWC layout on CUDA (off by default: slower with varying pictures per batch)")
    sp.add_argument("--checkpoint-minutes", type=float, default=10.0, help="checkpoint at least this often")
    sp.add_argument("--stop-after-steps", type=int,
                    help="checkpoint and stop after this many steps of this call (run again with --resume to go on: "
                         "a long job in slices)")
    sp.add_argument("--resume", action="store_true", help="continue RUN exactly where it stopped")

    sp = add("predict", cmd_predict, "rank every class for each product of a BSON dump (resumable shards)",
             "Write PRED/part-*.npz: per product the top-K class indices (int32) and probabilities (float16), "
             "per picture its own top-K, level-1 probabilities and optionally the fused embedding. Finished "
             "chunks are not redone after a kill; --shard i/n runs one slice (one machine each, same --out).")
    sp.add_argument("--run", required=True, help="trained run directory (RUN/model.pt)")
    sp.add_argument("--data", required=True, metavar="FILE.bson")
    sp.add_argument("--out", required=True, metavar="PRED", help="prediction directory")
    sp.add_argument("--topk", type=int, default=20)
    sp.add_argument("--picture-topk", type=int, default=5, help="top-K kept for each picture")
    sp.add_argument("--tta", default="none", choices=("none", "flip"), help="test-time augmentation")
    sp.add_argument("--shard", default="0/1", help="i/n: predict only slice i of n")
    sp.add_argument("--embedding", action="store_true", help="also store the fused embedding (float16)")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--workers", type=int, help="decoding processes")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--compile", action="store_true", help="torch.compile the model")

    sp = add("submit", cmd_submit, "write a Kaggle submission (_id,category_id) for test.bson",
             "With --fusion: the full pipeline, index -> core predictions -> specialists on gated products -> "
             "fusion -> submission.csv, every stage resumable in WORK. --shard i/n runs one slice (one machine "
             "each, same WORK on shared storage) and --merge writes the submission once every slice is done. "
             "Without --fusion: core only (--run). The submission is checked (every test product once, in file "
             "order, categories of the taxonomy) and written atomically.")
    _pipeline_arguments(sp, data_flag="--test")
    sp.add_argument("--out", required=True, metavar="submission.csv")
    sp.add_argument("--merge", action="store_true", help="only assemble the slices' outputs into --out")

    sp = add("ocr", cmd_ocr, "read the text on the pictures of some level-1 groups into the OCR cache",
             "Run an OCR engine over every distinct picture of the products of --groups: by label in a training "
             "file, by core prediction (--predictions) in a test file. Results go to an SQLite cache keyed by "
             "picture MD5 and engine; cached pictures are skipped, so a killed run resumes.")
    sp.add_argument("--data", required=True, metavar="FILE.bson")
    sp.add_argument("--engine", default="easyocr", choices=("easyocr", "tesseract"))
    sp.add_argument("--groups", default="LIBRAIRIE,MUSIQUE", help="comma-separated level-1 names")
    sp.add_argument("--taxonomy", help="category_names.csv (default: the one beside the data file)")
    sp.add_argument("--predictions", metavar="PRED", help="core predictions choosing the products of an unlabelled file")
    sp.add_argument("--threshold", type=float, default=0.3,
                    help="with --predictions: minimum level-1 probability on the groups")
    sp.add_argument("--cache", help="SQLite cache file (default: ocr-cache.sqlite beside the data file)")
    sp.add_argument("--workers", type=int, default=1, help="reading processes")
    sp.add_argument("--batch", type=int, default=32, help="pictures per engine call")
    sp.add_argument("--scale", type=float,
                    help="easyocr: read in one pass, crops cut from the picture upscaled this much (unset: the "
                         "engine's two passes); tesseract: upscaling before reading")
    sp.add_argument("--lang", help="tesseract languages (default fra+eng)")

    specialists = sub.add_parser("specialists", help="specialist plugins: list them, fit them",
                                 description="Specialists read cover text (OCR) and score the classes of their "
                                             "groups. They are found through the entry-point group "
                                             "etalage.specialists; ETALAGE_DISABLE_PLUGIN_AUTOLOAD=1 keeps only the "
                                             "built-ins. See docs/plugins.md.")
    spec_sub = specialists.add_subparsers(dest="action", metavar="ACTION", required=True)
    add("list", cmd_specialists_list, "list the specialist plugins (built-in and installed) and their status",
        parent=spec_sub)
    sp = add("fit", cmd_specialists_fit, "fit specialists on the training products of their groups",
             "Read the covers of (up to --max-train) training products of each specialist's groups through the "
             "OCR cache and fit it; saved as OUT/NAME. With --run, the core run's validation products are left "
             "out: fusion trains on them, and a specialist that had seen them would look better there than on "
             "test. A rerun only fits what is missing.", parent=spec_sub)
    sp.add_argument("--train", required=True, metavar="FILE.bson", help="labelled training dump")
    sp.add_argument("--out", required=True, metavar="SPECS", help="folder of fitted specialists")
    sp.add_argument("--run", help="core run whose validation products are left out (recommended)")
    sp.add_argument("--taxonomy", help="category_names.csv (default: the run's, else the one beside --train)")
    sp.add_argument("--names", default="books,music", help="comma-separated specialist names")
    sp.add_argument("--max-train", type=int, default=2000, help="training products per specialist (OCR cost)")
    sp.add_argument("--ocr-engine", default="easyocr", choices=("easyocr", "tesseract"))
    sp.add_argument("--ocr-cache", help="SQLite OCR cache (default: ocr-cache.sqlite beside --train)")
    sp.add_argument("--seed", type=int, default=0)

    fusion = sub.add_parser("fusion", help="the second level: fit, predict, report",
                            description="A LightGBM ranker over candidate classes (core top-K, picture-hash "
                                        "matches, specialists' top-k) with core, picture-hash, product-id-neighbour "
                                        "and specialist/OCR features.")
    fusion_sub = fusion.add_subparsers(dest="action", metavar="ACTION", required=True)
    sp = add("fit", cmd_fusion_fit, "fit the fusion model on the core run's validation products",
             "Predict the core on the run's validation products of --train (RUN/val_positions.npy: the core never "
             "trained on them), score them with the fitted specialists, build the table (hash and id signals "
             "leave each product itself out) and fit LightGBM (lambdarank and binary; the better on held-out "
             "products is kept). Writes OUT/fusion.lgb.txt, OUT/fusion.json, OUT/table.npz, OUT/fit_report.json.",
             parent=fusion_sub)
    sp.add_argument("--run", required=True, help="trained core run")
    sp.add_argument("--train", required=True, metavar="FILE.bson", help="the run's training dump")
    sp.add_argument("--out", required=True, metavar="FUSION", help="fusion model folder")
    sp.add_argument("--specialists", metavar="SPECS", help="fitted specialists (`etalage specialists fit`)")
    sp.add_argument("--kind", default="auto", choices=("auto", "ranker", "binary"))
    sp.add_argument("--topk", type=int, default=20, help="core candidates per product")
    sp.add_argument("--tta", default="none", choices=("none", "flip"),
                    help="core test-time augmentation; submit then uses the same")
    sp.add_argument("--ocr-cache", help="SQLite OCR cache (default: ocr-cache.sqlite beside --train)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--workers", type=int)
    sp.add_argument("--device", default="auto")
    sp = add("predict", cmd_fusion_predict, "fused top-5 classes for every product of a BSON dump (resumable)",
             "Run index -> core predictions -> specialists -> fusion for --data into WORK, chunk by chunk "
             "(WORK/fused/part-*.npz: product ids, top-5 classes and scores). --shard i/n runs one slice "
             "(one machine each, same WORK on shared storage).", parent=fusion_sub)
    _pipeline_arguments(sp, data_flag="--data")
    sp = add("report", cmd_fusion_report, "feature importance and the ablation table (markdown + PNG)",
             "Cross-validate the reranker over the fitted model's products with each group of signals (core, "
             "+ hash, + id neighbours, + specialists, all) and list the features by gain.", parent=fusion_sub)
    sp.add_argument("--model", required=True, metavar="FUSION")
    sp.add_argument("--out", required=True, metavar="REPORT.md", help="markdown report (the chart goes beside, .png)")
    sp.add_argument("--folds", type=int, default=3)

    bench = sub.add_parser("bench", help="benchmarks on public data sets",
                           description="Benchmarks on public data sets (see also the scripts in bench/).")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    sp = bench_sub.add_parser("bookcover", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              help="BookCover30: genre from title, cover OCR, cover CNN and their fusion",
                              description="Train the books specialist on one BookCover30 listing and score another "
                                          "(quoted CSV without header: ASIN, filename, image URL, title, author, "
                                          "class id, class name). Reports top-1/top-3 for title, ocr, image and fused "
                                          "beside the published figures, and writes a confusion-matrix PNG.")
    sp.set_defaults(func=cmd_bench_bookcover)
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sp.add_argument("--train-listing", required=True)
    sp.add_argument("--test-listing", required=True)
    sp.add_argument("--images", help="folder of the real cover pictures (the listing's filename column)")
    sp.add_argument("--render", action="store_true", help="draw 180x180 covers from title and author instead")
    sp.add_argument("--out", required=True, metavar="REPORT.json")
    sp.add_argument("--ocr-engine", default="easyocr", choices=("easyocr", "tesseract"))
    sp.add_argument("--seed", type=int, default=0)

    sp = add("demo", cmd_demo, "the whole job on a synthetic catalogue: synth, index, train, predict, submit, score",
             "Runs end to end on a synthetic Cdiscount-shaped catalogue and prints product top-1 overall and per "
             "level-1 group. Leaves submission.csv, test_labels.csv, category_names.csv and report.json under --out. "
             "With the defaults it finishes within 10 minutes on 2 CPU cores; run again to reuse finished stages.")
    sp.add_argument("--out", default="demo", help="output folder")
    sp.add_argument("--products", type=int, default=3000, help="synthetic products (train + test)")
    sp.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    sp.add_argument("--specialists", default="books,music", help="specialists to fit and compare ('none': skip)")
    sp.add_argument("--ocr-engine", default="easyocr", choices=("easyocr", "tesseract"))
    sp.add_argument("--specialist-train", type=int, default=150,
                    help="training products per specialist (OCR on CPU reads ~5 pictures/s)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--backbone", default="efficientnet_lite0")
    sp.add_argument("--weights", default="imagenet")
    sp.add_argument("--picture-size", type=int, default=112, help="pictures are resized to this side (CPU speed)")
    sp.add_argument("--crop", type=int, default=96, help="training crop")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EtalageError as exc:
        print(f"etalage {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"etalage {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
