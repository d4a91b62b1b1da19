"""Tools: bench (book and album covers), demo."""

from __future__ import annotations

from pathlib import Path

from etalage.cli.data import leaf
from etalage.cli.options import save_resolved
from etalage.cli.second import group
from etalage.errors import EtalageError
from etalage.options import DEFAULT_OCR_ENGINE, OCR_ENGINES


def register(sub, handlers: dict) -> None:
    bench = group(sub, "bench", "benchmarks on public data sets",
                  "Benchmarks on public data sets (see also the scripts in bench/).", dest="benchmark")
    p = leaf(bench, handlers, ("bench", "bookcover"), cmd_bench_bookcover,
             "BookCover30: genre from title, cover OCR, cover CNN and their fusion",
             "Train the books specialist on one BookCover30 listing and score another (quoted CSV without header: "
             "ASIN, filename, image URL, title, author, class id, class name). Reports top-1/top-3 for title, ocr, "
             "image and fused beside the published figures, and writes a confusion-matrix PNG.")
    p.add_argument("--train-listing", required=True, help="listing to train on")
    p.add_argument("--test-listing", required=True, help="listing to score")
    p.add_argument("--images", help="folder of the real cover pictures (the listing's filename column)")
    p.add_argument("--render", action="store_true", help="draw 180x180 covers from title and author instead")
    p.add_argument("--out", required=True, metavar="REPORT.json", help="the report to write")
    p.add_argument("--ocr-engine", default=DEFAULT_OCR_ENGINE, choices=OCR_ENGINES, help="OCR engine")
    p.add_argument("--seed", type=int, default=0, help="random seed (rendering)")

    p = leaf(sub, handlers, ("demo",), cmd_demo,
             "the whole job on a synthetic catalogue: synth, index, train, specialists, fusion, submit, score",
             "Runs end to end on a synthetic Cdiscount-shaped catalogue and prints product top-1 per stage (core, "
             "core + specialists, fusion), overall and per level-1 group. Leaves submission.csv, test_labels.csv, "
             "category_names.csv and report.json under --out. With the defaults it finishes within 10 minutes on 2 "
             "CPU cores; run again to reuse finished stages.")
    p.add_argument("--out", default="demo", help="output folder")
    p.add_argument("--products", type=int, default=3000, help="synthetic products (train + test)")
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    p.add_argument("--specialists", default="books,music", help="specialists to fit and compare ('none': skip)")
    p.add_argument("--ocr-engine", default=DEFAULT_OCR_ENGINE, choices=OCR_ENGINES, help="OCR engine for the covers")
    p.add_argument("--specialist-train", type=int, default=150,
                   help="training products per specialist (OCR on CPU reads ~5-10 pictures/s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (catalogue, split, training)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="any timm model name")
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a state-dict file")
    p.add_argument("--picture-size", type=int, default=112, help="pictures are resized to this side (CPU speed)")
    p.add_argument("--crop", type=int, default=96, help="training crop")


def cmd_bench_bookcover(args) -> int:
    from etalage.bench.covers import PUBLISHED, confusion_png, read_listing, run_bookcover
    from etalage.files import write_json_atomic

    if (args.images is None) == (not args.render):
        raise EtalageError("bench bookcover: give exactly one of --images DIR or --render")
    train, test = read_listing(args.train_listing), read_listing(args.test_listing)
    work = Path(args.out).with_suffix("")
    report = run_bookcover(train, test, args.images, work, ocr_engine=args.ocr_engine, seed=args.seed,
                           progress=not args.quiet)
    pred, truth, tax = report.pop("_confusion")
    png = Path(args.out).with_suffix(".confusion.png")
    confusion_png(pred, truth, tax, png, f"{Path(args.test_listing).name}, fused, top-1 {report['fused']['top1']:.3f}")
    write_json_atomic(args.out, report)
    print(f"{report['train_books']} training and {report['test_books']} test books; covers: {report['covers']}")
    print(f"  {'method':<34}{'top-1':>8}{'top-3':>8}")
    for key in ("title", "ocr", "image", "fused"):
        print(f"  etalage {key:<26}{report[key]['top1']:>8.3f}{report[key]['top3']:>8.3f}")
    for name, top1 in PUBLISHED.items():
        print(f"  {name:<34}{top1:>8.3f}{'':>8}  (published, 51,300 training books)")
    print(f"report {args.out}, confusion matrix {png}")
    return 0


def cmd_demo(args) -> int:
    from etalage.pipeline.demo import run_demo

    specialists = tuple(s.strip() for s in args.specialists.split(",") if s.strip()) \
        if args.specialists != "none" else ()
    result = run_demo(args.out, products=args.products, minutes=args.minutes, seed=args.seed, backbone=args.backbone,
                      weights=args.weights, picture_size=args.picture_size, crop=args.crop, specialists=specialists,
                      ocr_engine=args.ocr_engine, specialist_train=args.specialist_train, progress=not args.quiet)
    save_resolved(args, Path(args.out) / "config.yaml")
    print_stage_table(result)
    print(f"outputs: {', '.join(result['outputs'].values())}")
    return 0


def print_stage_table(result: dict) -> None:
    stages = [k for k in ("core", "core+specialists", "fusion") if k in result]
    print(f"  {'stage':<22}{'top-1':>8}")
    for k in stages:
        print(f"  {k:<22}{result[k]:>8.4f}")
    print(f"  {'level-1 group':<30}{'products':>9}" + "".join(f"{k:>18}" for k in stages))
    for name, row in sorted(result["per_level1"].items(), key=lambda kv: -kv[1]["products"]):
        print(f"  {name:<30}{row['products']:>9}" + "".join(f"{row[k]:>18.4f}" for k in stages))
