"""Tools: bench (book and album covers, the core on real photos), audit, explain, demo."""

from __future__ import annotations

from pathlib import Path

from etalage.cli.options import (
    compute_of,
    compute_options,
    engine_of,
    engine_options,
    group,
    leaf,
    names_of,
    save_resolved,
    settings_option,
)
from etalage.errors import EtalageError
from etalage.options import OCR_ENGINES, TTA_MODES


def register(sub, handlers: dict) -> None:
    bench = group(sub, "bench", "benchmarks on public data sets",
                  "Benchmarks on public data sets (the measurement scripts are in benchmarks/).", dest="benchmark")
    _add_bench_covers(bench, handlers)
    _add_bench_core(bench, handlers)
    _add_audit(sub, handlers)
    _add_explain(sub, handlers)
    _add_demo(sub, handlers)


def _add_bench_covers(bench, handlers: dict) -> None:
    p = leaf(bench, handlers, ("bench", "covers"), cmd_bench_covers,
             "book or album covers: genre from title, OCR reading, picture and their fusion",
             "Any listing in BookCover30's column order (quoted CSV without header: id, filename, picture URL, "
             "title, author, class id, class name), e.g. ../shared/data/real-covers/books-dev/listing.csv. Scores "
             "the title (when the listing has titles), ocr, image and fused paths (top-1, top-3, n) by --cv K "
             "folds on --listing, or trained on --listing and scored on --test-listing; and the reading's title-word "
             "recall and pictures/s. Writes REPORT.json, REPORT.md and REPORT.png (fused confusion matrix).")
    p.add_argument("--listing", required=True, help="listing to cross-validate on (or to train on, with "
                                                    "--test-listing)")
    p.add_argument("--test-listing", help="listing to score (default: --cv folds of --listing)")
    cover_options(p)
    p.add_argument("--cv", type=int, default=5, help="folds of the cross-validation (without --test-listing)")
    p.add_argument("--size", default="180", help="pictures letterboxed to SIZE x SIZE on white (the Cdiscount "
                                                 "shape), or 'native'")
    p.add_argument("--group", choices=("LIBRAIRIE", "MUSIQUE"),
                   help="level-1 group and its specialist (default: LIBRAIRIE when the listing has titles, else "
                        "MUSIQUE)")
    p = leaf(bench, handlers, ("bench", "bookcover"), cmd_bench_bookcover,
             "BookCover30: train on one listing, score another, beside the published figures",
             "bench covers with --train-listing/--test-listing, the pictures letterboxed to 180x180, and "
             "BookCover30's published figures printed beside.")
    p.add_argument("--train-listing", required=True, help="listing to train on")
    p.add_argument("--test-listing", required=True, help="listing to score")
    cover_options(p)


def _add_bench_core(bench, handlers: dict) -> None:
    p = leaf(bench, handlers, ("bench", "core"), cmd_bench_core,
             "the core on real photos: train within a budget, score a labelled dump, beside probe and 5-NN",
             "Trains the core on --train for --max-minutes (the defaults of `etalage train`, or --set KEY=VALUE of "
             "its settings), predicts --data and reports product top-1 at the leaves, level 2 and level 1, beside a "
             "linear probe and the 2017 8th place's 5 nearest neighbours on the same backbone's ImageNet features "
             "(pictures letterboxed to 180x180), computed in the same run. Writes REPORT.json, REPORT.md and "
             "REPORT.png (learning curve, most confused class pairs); the run and the anchors' features go to "
             "REPORT_work/ and are reused when run again. Dumps come from `etalage pack`.")
    p.add_argument("--train", required=True, metavar="A.bson", help="labelled training dump")
    p.add_argument("--data", required=True, metavar="B.bson", help="the dump to score (labelled, or with --labels)")
    p.add_argument("--labels", metavar="KEY.csv", help="_id,category_id answer key of --data (default: its own "
                                                       "categories)")
    p.add_argument("--taxonomy", metavar="T.csv", help="category_names.csv (default: the one beside --train)")
    p.add_argument("--out", required=True, metavar="REPORT.json", help="the report (.md and .png go beside)")
    p.add_argument("--max-minutes", type=float, default=20.0, help="training time budget")
    settings_option(p, "picture_size=160", "a training setting other than the defaults, as `etalage train` names "
                    "it with _")
    p.add_argument("--tta", default="none", choices=TTA_MODES,
                   help="test-time augmentation of the core; the same network is also scored without it and the "
                        "two compared product by product (sign test)")
    p.add_argument("--no-anchors", action="store_true", help="skip the linear probe and the nearest neighbours")
    p.add_argument("--seed", type=int, default=0, help="random seed of the run and the probe")


def _add_audit(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("audit",), cmd_audit,
             "the labelled products probably filed in the wrong category, most suspicious first",
             "Scores every labelled product of --data with a network that never trained on it (fold runs from "
             "`etalage train --folds K`: each product by the run that held its fold out; a single run: only its "
             "validation products) and flags those confident learning disputes (Northcutt et al.; cleanlab's "
             "find_label_issues, computed from the top-K rankings): the given category under its class's "
             "self-confidence while another clears its own. Writes AUDIT/suspects.parquet and .csv (product id, "
             "given and suggested category, their probabilities, suspicion, rule), most suspicious first; "
             "AUDIT/audit.html (the top suspects as cards with pictures, the core's top-5 and the specialists' "
             "votes); AUDIT/report.json.")
    p.add_argument("--run", required=True, action="append",
                   help="a core run or a folder of fold runs trained on --data; repeat to average several")
    p.add_argument("--data", required=True, metavar="LABELLED.bson", help="the labelled dump the runs trained on")
    p.add_argument("--out", required=True, metavar="AUDIT", help="output folder")
    p.add_argument("--limit", type=int, default=50, help="suspects shown in audit.html")
    p.add_argument("--topk", type=int, default=20, help="classes kept per product (the rest bounded by the K-th)")
    p.add_argument("--tta", default="none", choices=TTA_MODES, help="core test-time augmentation")
    p.add_argument("--specialists", metavar="SPECS", help="fitted specialists whose votes the cards show")
    p.add_argument("--ocr-cache", help="SQLite OCR cache for the specialists (default: beside --data)")
    compute_options(p)
    engine_options(p, "the core's predictions")


def _add_explain(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("explain",), cmd_explain,
             "a web page of where the pipeline goes wrong on a labelled set (one HTML file, pictures inside)",
             "For a finished submit or fusion predict work folder of a labelled file (or one with an answer key): "
             "per product its pictures with the OCR boxes and the text read, the core's top-5, each specialist's "
             "vote, fusion's top-5 with the features that moved its choice, and the truth; filters by level-1 group "
             "and by what fusion did (fixed, broken, ...), and a summary per group. A core-only submit's work folder "
             "(submit --run ... --work WORK) gives the pictures, the core's top-5 and the truth, filtered by whether "
             "the core was right. Open it in any browser.")
    p.add_argument("--work", required=True, metavar="WORK", help="the work folder of `etalage submit` (with "
                                                                "--fusion, or core only) or `etalage fusion predict`")
    p.add_argument("--labels", metavar="ANSWER_KEY.csv", help="_id,category_id answer key (default: the categories "
                                                              "in the data file)")
    p.add_argument("--out", required=True, metavar="PAGE.html", help="the page to write")
    p.add_argument("--limit", type=int, default=400, help="products on the page (fixed and broken ones first)")
    p.add_argument("--ocr-cache", help="SQLite OCR cache (default: ocr-cache.sqlite beside the data)")


def _add_demo(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("demo",), cmd_demo,
             "the whole job on a synthetic catalogue: synth, index, train, specialists, fusion, submit, score",
             "Runs end to end on a synthetic Cdiscount-shaped catalogue and prints product top-1 per stage (core, "
             "core + specialists, fusion), overall and per level-1 group. Leaves submission.csv, test_labels.csv, "
             "category_names.csv, report.json and explain.html under --out. With the defaults it finishes within "
             "about 10 minutes on 2 CPU cores; run again to reuse finished stages.")
    p.add_argument("--out", default="demo", help="output folder")
    p.add_argument("--products", type=int, help="synthetic products, train + test (default: 3000; 8000 with real "
                                                "covers, so that their groups hold ~290 test products)")
    p.add_argument("--val-fraction", type=float, help="share of the training products held out of the core for "
                                                      "fusion to learn from (default: 0.15; 0.25 with real covers)")
    p.add_argument("--max-minutes", type=float, default=5.0, help="training time budget")
    p.add_argument("--names", default="media", help="specialists to fit and compare, comma-separated ('none': "
                                                    "skip; 'books,music' for one per group)")
    p.add_argument("--ocr-engine", choices=OCR_ENGINES, help="OCR engine for the covers (default: the default reading)")
    p.add_argument("--specialist-train", type=int,
                   help="training products per specialist (default: 300; with real covers every training product "
                        "of its groups, as real covers need thousands; OCR on CPU reads ~6 pictures/s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (catalogue, split, training)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="any timm model name")
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a state-dict file")
    p.add_argument("--picture-size", type=int, default=112, help="pictures are resized to this side (CPU speed)")
    p.add_argument("--crop", type=int, default=96, help="training crop")
    p.add_argument("--book-covers", metavar="DIR", help="real book covers as the LIBRAIRIE pictures (DIR/listing.csv "
                                                        "+ DIR/images, e.g. ../shared/data/real-covers/books-dev)")
    p.add_argument("--music-covers", metavar="DIR", help="real album covers as the MUSIQUE pictures (same layout, "
                                                         "e.g. ../shared/data/real-covers/albums-dev)")
    p.add_argument("--folds", type=int, help="K fold runs instead of one run (--max-minutes / K each): fusion learns "
                                              "from every training product out of fold, and the fit report gives the "
                                              "second-level baselines")
    p.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="the embedding-neighbour signal of fusion, with K neighbours (0: off)")


def cover_options(p) -> None:
    p.add_argument("--images", help="folder of the cover pictures (the listing's filename column)")
    p.add_argument("--render", action="store_true", help="draw 180x180 covers from title and author instead")
    p.add_argument("--out", required=True, metavar="REPORT.json", help="the report (.md and .png go beside)")
    p.add_argument("--ocr-engine", choices=OCR_ENGINES, help="OCR engine (default: the default reading)")
    p.add_argument("--seed", type=int, default=0, help="random seed (folds, rendering)")


def _bench(args, train_listing: str, test_listing: str | None, cv: int, size: int | None, group: str | None) -> dict:
    from etalage.bench.covers import CoversSettings, run_covers, write_report
    from etalage.catalog.listings import read_listing

    if (args.images is None) == (not args.render):
        raise EtalageError("give exactly one of --images DIR or --render")
    test = read_listing(test_listing) if test_listing else None
    settings = CoversSettings(args.images, test, cv, size, group, args.ocr_engine, args.seed)
    report = run_covers(read_listing(train_listing), Path(args.out).with_suffix(""), settings, progress=not args.quiet)
    files = write_report(report, args.out, Path(test_listing or train_listing).name)
    print(f"{Path(train_listing).name}: {report['listing_covers']} covers" +
          (f", tested on {report['test_covers']}" if test else f", {report['protocol']}") +
          f"; {report['classes']} classes; {report['covers']}")
    print(f"  {'path':<16}{'top-1':>8}{'sd':>8}{'top-3':>8}{'n':>7}")
    for key in ("title_baseline", "title", "ocr", "image", "fused"):
        if key in report:
            r = report[key]
            print(f"  {key:<16}{r['top1']:>8.3f}{r['top1_sd']:>8.3f}{r['top3']:>8.3f}{r['n']:>7}")
    rd = report["reading"]
    speed = f"{rd['pictures_per_s']:.2f} pictures/s" if rd["pictures_per_s"] else "all cached"
    print(f"  reading: title-word recall {rd['title_word_recall']:.3f}, {speed} ({rd['engine']})")
    print(f"report {files['json']}, {files['markdown']}, {files['png']}")
    return report


def cmd_bench_covers(args) -> int:
    size = None if str(args.size).lower() == "native" else int(args.size)
    _bench(args, args.listing, args.test_listing, args.cv, size, args.group)
    return 0


def cmd_bench_bookcover(args) -> int:
    from etalage.bench.covers import PUBLISHED

    _bench(args, args.train_listing, args.test_listing, 0, 180, "LIBRAIRIE")
    for name, top1 in PUBLISHED.items():
        print(f"  {name:<34}{top1:>8.3f}  (published, BookCover30's test split, 51,300 training books)")
    return 0


def cmd_bench_core(args) -> int:
    from etalage.bench.core import CoreBenchConfig, run_core_bench
    from etalage.options import parse_key_values

    rep = run_core_bench(CoreBenchConfig(Path(args.train), Path(args.data), Path(args.out), args.labels, args.taxonomy,
                                         args.max_minutes, parse_key_values(args.settings, "--set"),
                                         not args.no_anchors, args.tta, args.seed), progress=not args.quiet)
    print(f"{Path(args.data).name}: {rep['test_products']:,} test products, {rep['classes']} classes; core trained "
          f"{rep['train_seconds'] / 60:.1f} min ({rep['epochs_seen'] or 0:.1f} epochs, {rep['picture_size']}px)")
    print(f"  {'model':<26}{'leaf':>8}{'level 2':>9}{'level 1':>9}")
    for key, name in (("core", "core"), ("linear_probe", "linear probe"), ("knn", "5 nearest neighbours"),
                      ("majority", "majority class")):
        if key in rep:
            r = rep[key]
            print(f"  {name:<26}{r['leaf']:>8.4f}{r['level2']:>9.4f}{r['level1']:>9.4f}")
    if "against_no_tta" in rep:
        pair = rep["against_no_tta"]
        print(f"  --tta {args.tta} against none: {pair['only_candidate']} products right only with it, "
              f"{pair['only_reference']} only without (leaf {pair['delta']:+.4f}, sign test p={pair['p']:.2f})")
    print(f"report {args.out}, {Path(args.out).with_suffix('.md')}, {Path(args.out).with_suffix('.png')}")
    return 0


def cmd_audit(args) -> int:
    from etalage.pipeline.audit import AuditOptions, audit

    options = AuditOptions(args.limit, args.topk, args.tta, args.specialists, args.ocr_cache)
    with engine_of(args) as engine:
        rep = audit(args.run, args.data, args.out, options, compute_of(args), engine)
    print(f"{args.out}: {rep['flagged']:,} suspects among {rep['scored']:,} products ({100 * rep['flagged_share']:.1f}%; "
          f"{rep['protocol']})")
    print(f"  {rep['outputs']['suspects.parquet']}, {rep['outputs']['suspects.csv']}, {rep['outputs']['audit.html']}")
    return 0


def cmd_explain(args) -> int:
    from etalage.pipeline.explain import explain

    res = explain(args.work, args.out, labels=args.labels, limit=args.limit, ocr_cache=args.ocr_cache,
                  compute=compute_of(args))
    print(f"{res['page']}: {res['shown']} of {res['products']} products")
    for g in res["groups"]:
        fusion = f"  fusion {g['fused']:.3f}  fixed {g['fixed']}  broken {g['broken']}" if "fused" in g else ""
        print(f"  {g['group']:<30}{g['products']:>6}  core {g['core']:.3f}{fusion}")
    return 0


def cmd_demo(args) -> int:
    from etalage.pipeline.demo import DemoConfig, run_demo

    names = () if args.names.strip() == "none" else tuple(names_of(args.names))
    cfg = DemoConfig(args.products, args.max_minutes, args.seed, args.backbone, args.weights, args.picture_size,
                     args.crop, names=names, ocr_engine=args.ocr_engine, specialist_train=args.specialist_train,
                     val_fraction=args.val_fraction, book_covers=args.book_covers, music_covers=args.music_covers,
                     folds=args.folds, neighbours=args.neighbours)
    result = run_demo(args.out, cfg, compute_of(args))
    save_resolved(args, Path(args.out) / "config.yaml")
    print_stage_table(result)
    print(f"  what each signal adds (fusion report, cross-validated on the {result['fusion_fit']['products']} fusion "
          f"products):")
    for row in result["fusion_ablation"]:
        print(f"    {row['signals']:<30}{row['top1']:>8.4f}")
    print("pictures: " + "; ".join(f"{k} {v}" for k, v in result["pictures"].items()))
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
