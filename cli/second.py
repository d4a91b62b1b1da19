"""Second-level commands: ocr, specialists (list, fit), fusion (fit, predict, report)."""

from __future__ import annotations

import time
from pathlib import Path

from etalage.cli.options import (
    compute_of,
    compute_options,
    engine_of,
    engine_options,
    group,
    leaf,
    names_of,
    pipeline_options,
    save_resolved,
    settings_option,
)
from etalage.options import OCR_ENGINES, TTA_MODES


def register(sub, handlers: dict) -> None:
    _add_ocr(sub, handlers)
    _add_specialists(sub, handlers)
    fusion = group(sub, "fusion", "the second level: fit, predict, report",
                   "A LightGBM ranker over candidate classes (core top-K, picture-hash matches, specialists' top-k, "
                   "embedding neighbours) with core, picture-hash, product-id-neighbour and specialist/OCR features.")
    _add_fusion_fit(fusion, handlers)
    p = leaf(fusion, handlers, ("fusion", "predict"), cmd_fusion_predict,
             "fused top-5 classes for every product of a BSON dump (resumable)",
             "Run index -> core predictions -> specialists -> fusion for --data into WORK, chunk by chunk "
             "(WORK/fused/part-*.npz: product ids, top-5 classes and scores). --shard i/n runs one slice "
             "(one machine each, same WORK on shared storage).")
    pipeline_options(p)
    p = leaf(fusion, handlers, ("fusion", "report"), cmd_fusion_report,
             "feature importance and the ablation table (markdown + PNG)",
             "Cross-validate the reranker over the fitted model's products with each group of signals (core, + hash, "
             "+ id neighbours, + specialists, + each specialist, all but id, all) and list the features by gain.")
    p.add_argument("--fusion", required=True, metavar="FUSION", help="fusion model folder")
    p.add_argument("--out", required=True, metavar="REPORT.md", help="markdown report (the chart goes beside, .png)")
    p.add_argument("--folds", type=int, default=3, help="cross-validation folds")


def _add_ocr(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("ocr",), cmd_ocr, "read the text on the pictures of some level-1 groups into the OCR cache",
             "Run an OCR engine over every distinct picture of the products of --groups: by label in a training "
             "file, by the core's routing of its predictions (--predictions) in a test file. Results go to an SQLite "
             "cache keyed by picture MD5 and engine (plain tables: SELECT text, confidence FROM boxes); cached "
             "pictures are skipped, so a killed run resumes, and with nothing left to read the engine never loads.")
    p.add_argument("--data", required=True, metavar="FILE.bson", help="the dump whose pictures to read")
    p.add_argument("--ocr-engine", choices=OCR_ENGINES, help="OCR engine (default: the default reading)")
    p.add_argument("--groups", default="LIBRAIRIE,MUSIQUE", help="comma-separated level-1 names")
    p.add_argument("--taxonomy", help="category_names.csv (default: the one beside the data file)")
    p.add_argument("--predictions", metavar="PRED", help="core predictions choosing the products of an unlabelled "
                                                         "file")
    p.add_argument("--threshold", type=float, default=0.3,
                   help="with --predictions: minimum level-1 probability on the groups")
    p.add_argument("--ocr-cache", help="SQLite OCR cache (default: ocr-cache.sqlite beside the data file)")
    p.add_argument("--workers", type=int, default=1,
                   help="reading processes (--engine local) or OCR actors (--engine ray; 1: one per 2 CPUs)")
    p.add_argument("--batch-size", type=int, default=32, help="pictures per engine call")
    p.add_argument("--scale", type=float,
                   help="easyocr: read in one pass, crops cut from the picture upscaled this much (unset: the "
                        "engine's two passes); tesseract: upscaling before reading")
    p.add_argument("--lang", help="tesseract languages (default fra+eng)")
    engine_options(p, "the pictures read")


def _add_specialists(sub, handlers: dict) -> None:
    spec = group(sub, "specialists", "specialist plugins: list them, fit them",
                 "Specialists score the classes of some level-1 groups from the text on covers (OCR) and, if they "
                 "ask, the pictures. They are found through the entry-point group etalage.specialists; "
                 "ETALAGE_DISABLE_PLUGIN_AUTOLOAD=1 keeps only the built-ins. See docs/plugins.md.")
    leaf(spec, handlers, ("specialists", "list"), cmd_specialists_list,
         "list the specialist plugins (built-in and installed), their status, and shadowed ones", config=False)
    p = leaf(spec, handlers, ("specialists", "fit"), cmd_specialists_fit,
             "fit specialists on the training products of their groups",
             "Read the covers of (up to --max-train) training products of each specialist's groups through the OCR "
             "cache and fit it; saved as OUT/NAME (data only: manifest + skops state). Each is checked on a few of "
             "its own training products before anything long runs. With --run, the core run's validation products "
             "are left out: fusion trains on them. A rerun only fits what is missing.")
    p.add_argument("--train", required=True, metavar="FILE.bson", help="labelled training dump")
    p.add_argument("--out", required=True, metavar="SPECS", help="folder of fitted specialists")
    p.add_argument("--run", help="core run whose validation products are left out (recommended)")
    p.add_argument("--taxonomy", help="category_names.csv (default: the run's, else the one beside --train)")
    p.add_argument("--names", default="media", help="comma-separated specialist names (`etalage specialists list`)")
    p.add_argument("--max-train", type=int, default=2000, help="training products per specialist (OCR cost)")
    p.add_argument("--ocr-engine", choices=OCR_ENGINES, help="OCR engine for the covers (default: the default "
                                                             "reading)")
    p.add_argument("--ocr-cache", help="SQLite OCR cache (default: ocr-cache.sqlite beside --train)")
    settings_option(p, "books.C=4", "a specialist's constructor option, NAME.OPTION=VALUE")
    p.add_argument("--seed", type=int, default=0, help="random seed (which training products)")


def _add_fusion_fit(fusion, handlers: dict) -> None:
    p = leaf(fusion, handlers, ("fusion", "fit"), cmd_fusion_fit, "fit the fusion model on the products the core "
             "runs never trained on",
             "Predict the core on the products of --train it never trained on: a run's validation products, or with "
             "fold runs (`etalage train --folds K`) every training product by the run that held its fold out; with "
             "several --run, each model's prediction (their average leads; each model's probability and rank, their "
             "geometric mean, agreement and best rank are features). Score them with the fitted specialists (less "
             "the products those trained on), find their embedding neighbours (--neighbours), build the table "
             "(hash, id and neighbour signals leave each product itself out) and fit LightGBM: each kind "
             "(lambdarank, binary) with each capacity (default or small trees) is scored by 5-fold cross-validation "
             "over those products, tree by tree, and the best (kind, capacity, number of trees) is refitted on all "
             "of them (above 50,000 products: one 20 percent split with early stopping). Writes "
             "OUT/fusion.lgb.txt (with feature names), OUT/fusion.json, OUT/table.npz, OUT/fit_report.json.")
    p.add_argument("--run", required=True, action="append",
                   help="a trained core run, or a folder of fold runs (`train --folds K`); repeat for several models "
                        "(runs sharing their validation products, or fold sets of one split)")
    p.add_argument("--train", required=True, metavar="FILE.bson", help="the runs' training dump")
    p.add_argument("--out", required=True, metavar="FUSION", help="fusion model folder")
    p.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="K nearest training products by the first model's embeddings (faiss): their classes join the "
                        "candidates, with best cosine, the 2017 8th place's vote and count per class (0: off; 10 is "
                        "a good start; costs a pass of that model's runs over the training dump)")
    p.add_argument("--without", default="", metavar="SIGNALS",
                   help="comma-separated signal groups the reranker is not given (ensemble, neighbours, hash, id, "
                        "specialists): e.g. id where product ids were numbered category by category (fit warns "
                        "when they look so), which would leak training labels and mean nothing for test products")
    p.add_argument("--with", dest="with_signals", choices=("id",),
                   help="id: the test products' ids will interleave with these, so fit no model without id "
                        "features (by default one is fitted too where the ids look numbered category by category)")
    p.add_argument("--specialists", metavar="SPECS", help="fitted specialists (`etalage specialists fit`)")
    p.add_argument("--names", help="comma-separated specialists to use (default: every one fitted in SPECS)")
    p.add_argument("--kind", default="auto", choices=("auto", "ranker", "binary"),
                   help="LightGBM objective (auto: both, the better by cross-validation kept)")
    settings_option(p, "num_leaves=63", "a LightGBM setting (defaults: n_estimators=500 learning_rate=0.1 "
                    "num_leaves=31 min_child_samples=10 early_stopping_rounds=30, at least 100 in cross-validation); "
                    "naming num_leaves, learning_rate, max_depth or min_child_samples fixes the capacity instead of "
                    "choosing it")
    p.add_argument("--topk", type=int, default=20, help="core candidates per product")
    p.add_argument("--blank-titles", type=float, default=0.25, metavar="SHARE",
                   help="share of the products whose titles the title-reading specialists are made not to see, so "
                        "that the reranker learns listings without a title (0: none)")
    p.add_argument("--tta", default="none", choices=TTA_MODES,
                   help="core test-time augmentation; submit then uses the same")
    p.add_argument("--ocr-cache", help="SQLite OCR cache (default: ocr-cache.sqlite beside --train)")
    p.add_argument("--seed", type=int, default=0, help="random seed (cross-validation folds or early-stopping split, "
                                                      "LightGBM)")
    compute_options(p)
    engine_options(p, "the core's predictions and the specialists")


def cmd_ocr(args) -> int:
    from etalage.catalog.taxonomy import taxonomy_beside
    from etalage.pipeline.ocr import OcrJob, run_ocr

    tax = taxonomy_beside(args.data, args.taxonomy, required=True)
    options = {}
    if args.scale is not None:
        options["scale"] = args.scale
    if args.lang and args.ocr_engine == "tesseract":
        options["lang"] = args.lang
    job = OcrJob(names_of(args.groups), args.ocr_engine, options, Path(args.ocr_cache) if args.ocr_cache else None,
                 args.predictions, args.threshold, args.batch_size)
    t0 = time.perf_counter()
    layout = {"ocr.actors": args.workers} if args.workers > 1 else {}  # on Ray, 1 (the default): one per 2 CPUs
    with engine_of(args, args.workers, layout) as engine:
        s = run_ocr(args.data, tax, job, compute_of(args), engine)
    print(f"{s.products} products of {args.groups}: {s.pictures} distinct pictures, {s.already_cached} already "
          f"cached, {s.read} read in {time.perf_counter() - t0:.1f}s, {s.unreadable} unreadable -> {s.cache} "
          f"({s.engine})")
    if s.unreadable_examples:
        print("  unreadable (product#picture): " + ", ".join(f"{p}#{k}" for p, k in s.unreadable_examples[:10]))
    return 0


def cmd_specialists_list(args) -> int:
    import warnings

    from etalage.specialists import discover, shadowed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are listed below, with their reason
        entries = list(discover().values()) + shadowed()
    print(f"{'name':<16}{'origin':<32}{'groups':<24}status")
    for e in sorted(entries, key=lambda e: (e.name, e.shadowed_by is not None)):
        print(f"{e.name:<16}{e.origin:<32}{','.join(e.groups) or '-':<24}{e.status}")
    return 0


def cmd_specialists_fit(args) -> int:
    from etalage.pipeline.fit import SpecialistsFitConfig, fit_specialists_job
    from etalage.specialists.plugins import parse_options

    names = names_of(args.names)
    cfg = SpecialistsFitConfig(Path(args.train), Path(args.out), names, args.run, args.taxonomy, args.max_train,
                               args.ocr_engine, args.ocr_cache, parse_options(args.settings, names), args.seed)
    rows = fit_specialists_job(cfg, compute_of(args))
    save_resolved(args, Path(args.out) / "config.yaml")
    for r in rows:
        print(f"{Path(args.out) / r['specialist']}: fitted on {r['train_products']} products of "
              f"{'+'.join(r['groups'])}")
    return 0


def cmd_fusion_fit(args) -> int:
    from etalage.options import parse_key_values
    from etalage.pipeline.fit import FusionFitConfig, fit_fusion

    cfg = FusionFitConfig(list(args.run), Path(args.train), Path(args.out), args.specialists,
                          names_of(args.names) or None, args.kind, args.topk, args.tta, args.neighbours,
                          args.ocr_cache, args.seed, parse_key_values(args.settings, "--set"),
                          tuple(names_of(args.without)), with_id=args.with_signals == "id",
                          blank_titles=args.blank_titles)
    t0 = time.perf_counter()
    with engine_of(args) as engine:
        fit = fit_fusion(cfg, compute_of(args), engine)
    save_resolved(args, Path(args.out) / "config.yaml")
    kinds = ", ".join(f"{k} {v:.4f}" for k, v in fit.valid_top1_by_kind.items())
    print(f"{args.out}: {fit.kind} over {fit.products} products ({fit.rows:,} rows, {fit.features} features) in "
          f"{time.perf_counter() - t0:.0f}s; candidate coverage {fit.candidate_coverage:.4f}; core top-1 "
          f"{fit.core_top1:.4f}; top-1 by kind ({fit.selection}): {kinds}; kept {fit.kind} with {fit.trees} trees")
    base = fit.baselines or {}
    if base:
        runs = ", ".join(f"{k} {v:.4f}" for k, v in base["runs"].items())
        print(f"  second-level baselines on the same products: runs {runs}; plain mean {base['plain_mean']:.4f}; "
              f"weighted mean {base['weighted_mean']:.4f}; weighted geometric mean {base['weighted_geomean']:.4f} "
              f"(weights out of fold)")
    if fit.without_id:
        alt = fit.without_id
        print(f"  the ids look numbered category by category: also fitted without id features ({alt['kind']}, "
              f"{alt['trees']} trees) -> {alt['folder']}; prediction uses it where the test ids do not interleave "
              f"with the training ids (--with id / --without id force the choice)")
    print(f"  report: {Path(args.out) / 'fit_report.json'}")
    return 0


def cmd_fusion_predict(args) -> int:
    from etalage.cli.model import job_settings
    from etalage.errors import ConfigError
    from etalage.pipeline.plan import PredictPlan
    from etalage.pipeline.predict import predict_file
    from etalage.pipeline.workdir import WorkDir

    if args.fusion is None:
        raise ConfigError("fusion predict: pass --fusion FUSION (from `etalage fusion fit`)")
    work = WorkDir(args.work) if args.work else WorkDir.beside(None, args.data)
    plan = PredictPlan.from_model(args.fusion, args.run, args.train, args.specialists)
    plan.check_tta(args.tta)
    settings = job_settings(args)
    settings.command = f"etalage fusion predict --fusion {args.fusion} --data {args.data} --work {work} --shard i/n"
    with engine_of(args) as engine:
        complete = predict_file(plan, args.data, work, settings, compute_of(args), engine)
    save_resolved(args, work.path / "config.yaml")
    print(f"{work.fused}: shard {args.shard} done ({'all shards done' if complete else 'other shards still to run'})")
    return 0


def cmd_fusion_report(args) -> int:
    from etalage.fusion.report import write_report

    rep = write_report(args.fusion, args.out, folds=args.folds, progress=not args.quiet)
    print(f"{'signals':<28}{'features':>9}{'top-1':>9}")
    for r in rep["ablation"]:
        print(f"{r['signals']:<28}{r['features']:>9}{r['top1']:>9.4f}")
    print(f"report {rep['markdown']}, chart {rep['png']}")
    return 0
