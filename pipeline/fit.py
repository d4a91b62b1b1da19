"""Fitting the second level as jobs: the specialists on training products, then the fusion model on the
training products the core models never trained on (a run's validation products, or all of them out of
fold with fold runs)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog
from etalage.catalog.bsonindex import file_stamp
from etalage.catalog.taxonomy import taxonomy_beside
from etalage.core.rundir import RunDir
from etalage.errors import ConfigError
from etalage.files import write_json_atomic
from etalage.fusion.folder import FusionDir, FusionPlan
from etalage.fusion.model import FusionModel, feature_groups
from etalage.fusion.report import coverage, ensemble_baselines, save_table
from etalage.ocr.cache import default_cache_path
from etalage.options import RERANKER_KINDS
from etalage.pipeline.stages import fusion_table, score_specialists, training_signals

log = logging.getLogger(__name__)


def fit_specialists_job(train: str | Path, out: str | Path, names: list[str], run: str | Path | None = None,
                        taxonomy: str | Path | None = None, max_train: int | None = 2000, ocr_engine: str | None = None,
                        ocr_cache: str | Path | None = None, options: dict[str, dict] | None = None, seed: int = 0,
                        progress: bool = True) -> list[dict]:
    """``etalage specialists fit``: index the training file, read the covers of (up to ``max_train``; None: all)
    products of each specialist's groups through the OCR cache, fit, save under ``out/NAME``. With
    ``run``, the core run's validation products are left out (fusion trains on them)."""
    from etalage.ocr import load_engine
    from etalage.ocr.cache import OcrCache
    from etalage.specialists.plugins import create_specialist
    from etalage.specialists.runner import fit_specialists

    run_dir = RunDir(run) if run else None
    if run_dir is not None and not taxonomy:
        tax = run_dir.taxonomy()  # the given taxonomy first, then the run's, then the one beside ``train``
    else:
        tax = taxonomy_beside(train, taxonomy, required=True)
    catalog = Catalog.open(train, tax, md5=True, progress=progress)
    catalog.require_labels()
    exclude = run_dir.val_positions() if run_dir else None
    options = options or {}
    reads = any("text" in create_specialist(n, **options.get(n, {})).needs for n in names)
    engine = load_engine(ocr_engine) if reads else None
    cache = OcrCache(ocr_cache or default_cache_path(train)) if reads else None
    try:
        return fit_specialists(catalog, tax, names, out, engine, cache, exclude=exclude, max_train=max_train,
                               seed=seed, options=options, progress=progress)
    finally:
        if cache is not None:
            cache.close()


def fit_fusion(runs, train: str | Path, out: str | Path, specialists: str | Path | None = None,
               names: list[str] | None = None, kind: str = "auto", topk: int = 20, tta: str = "none",
               neighbours: int = 0, ocr_cache: str | Path | None = None, seed: int = 0, device: str = "auto",
               batch_size: int = 64, workers: int | None = None, lgb_params: dict | None = None,
               without: tuple[str, ...] = (), trust_pickle: bool = False, progress: bool = True) -> dict:
    """Fit the fusion model on the training products of ``train`` that the core models ``runs`` (a run or
    a folder of fold runs, or a list of them: ``check_compatible`` rules) predict honestly: a run's
    validation products, or every product with fold runs, less those the specialists were fitted on.
    ``neighbours``: k embedding neighbours per product from the first model's embeddings (0: off).
    Writes the fusion folder (``FusionDir``): model, plan (paths relative to the folder), table, fit
    report with the second-level baselines. ``names``: only these of the fitted specialists. ``without``:
    signal groups (``LEAVABLE_SIGNALS``) the reranker is not given, e.g. ``id`` where product ids were
    numbered class by class (a listing sorted by category), so that neighbouring ids would leak the label
    of training products and mean nothing for test ones."""
    from etalage.core.ensemble import mean_ranking, open_models
    from etalage.pipeline.cores import build_neighbour_indexes, holdout_hits, holdout_rankings
    from etalage.specialists.runner import fitted_names, trained_positions

    without = check_without(without)
    models = open_models([runs] if isinstance(runs, (str, Path)) else list(runs))
    train, folder = Path(train), FusionDir(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    taxonomy = models[0].runs[0].taxonomy()
    catalog = Catalog.open(train, taxonomy, md5=True, progress=progress)
    catalog.require_labels()
    labels = taxonomy.indices_of(catalog.category_ids)
    command = f"etalage fusion fit {' '.join(f'--run {m.path}' for m in models)} --train {train} --out {folder}"
    id_runs, id_chance = id_order_share(catalog.product_ids, labels), chance_share(labels)
    if id_runs > max(ID_ORDER_WARN, 3 * id_chance) and "id" not in without:
        log.warning("%s: %.0f%% of the products sit next to a product of their own category in id order (%.0f%% by "
                    "chance; Cdiscount's sample: 7%%): the ids look numbered category by category, so the product-id "
                    "prior would learn the labels of training products and mislead on test ones; refit with "
                    "--without id unless the test products' ids interleave with these", train, 100 * id_runs,
                    100 * id_chance)
    kw = dict(device=device, batch_size=batch_size, workers=workers, trust_pickle=trust_pickle)
    t0 = time.perf_counter()
    positions, _ = models[0].holdout()
    spec_names = (list(names) if names else fitted_names(specialists)) if specialists is not None else []
    if spec_names:
        fitted_on = trained_positions(specialists, train)
        left = np.setdiff1d(positions, fitted_on)
        if len(left) < len(positions):
            log.info("      %d of the %d held-out products trained the specialists: left out", len(positions) - len(left),
                     len(positions))
        positions = left
    held = "validation products" if not models[0].is_folds else "training products (out of fold)"
    log.info("[1/4] core predictions on the %d %s of %s (%s)", len(positions), held, train.name,
             ", ".join(f"{m.name}: {len(m.runs)} run{'s' * (len(m.runs) > 1)}" for m in models))
    held_pos, per_model = holdout_rankings(models, catalog, folder.core_val, topk, tta, kw, command, progress)
    rows = np.searchsorted(held_pos, positions)
    per_model = [r.take(rows) for r in per_model]
    ranking = mean_ranking(per_model)
    hits = []
    if neighbours:
        log.info("      embedding neighbours: the training products' embeddings by %s's %d run(s), one index each",
                 models[0].name, len(models[0].runs))
        embeddings = build_neighbour_indexes(models[0], catalog, labels, folder, tta, kw, command, progress)
        hits = [holdout_hits(models[0], embeddings, folder, positions, neighbours)]
    if spec_names:
        log.info("[2/4] specialists %s on the products their gates let through", ", ".join(spec_names))
        score_specialists(Path(specialists), spec_names, ranking, catalog, positions, taxonomy, folder.specialists_val,
                          (0, 1), command, Path(ocr_cache) if ocr_cache else None, progress)
    else:
        log.info("[2/4] specialists: none (pass --specialists DIR from `etalage specialists fit`)")
    log.info("[3/4] table: candidates and features (hash, id and neighbour signals exclude each product itself)")
    signals = training_signals(catalog, taxonomy)
    named = list(zip([m.name for m in models], per_model, strict=True)) if len(models) > 1 else []
    table = fusion_table(ranking, catalog, positions, taxonomy, signals, folder.specialists_val, spec_names,
                         own_classes=labels[positions], models=named, neighbours=hits)
    truth = labels[positions]
    left_out = {n for g in without for n in feature_groups(tuple(table.features), spec_names).get(g, [])}
    feature_names = tuple(n for n in table.features if n not in left_out)
    save_table(folder.table_file, table, truth, ranking.top1())
    log.info("[4/4] LightGBM (%s) over %s rows x %d features",
             "ranker and binary, chosen by cross-validation" if kind == "auto" else kind, f"{len(table.owner):,}",
             len(feature_names))
    kinds = RERANKER_KINDS if kind == "auto" else (kind,)
    model, chosen = FusionModel.fit_best(table, truth, feature_names, kinds=kinds, seed=seed, lgb_params=lgb_params)
    model.plan = FusionPlan.build(folder, [m.path for m in models], train, specialists, specialist_names=spec_names,
                                  topk=topk, tta=tta, ks=list(signals.ks), train_stamp=file_stamp(train),
                                  lgb_params=lgb_params or {}, lgb_chosen=chosen.get("params", {}),
                                  run_names=[m.name for m in models], neighbours=neighbours)
    model.save(folder)
    fit = {"products": len(positions), "held_out": held, "training_products": len(catalog),
           "share_of_training_products": len(positions) / max(1, len(catalog)), "rows": len(table.owner),
           "features": len(feature_names), "signals_left_out": list(without), "id_order_share": id_runs,
           "kind": model.kind, "valid_top1_by_kind": chosen["valid_top1_by_kind"],
           "selection": {k: v for k, v in chosen.items() if k != "valid_top1_by_kind"},
           "core_top1": float((ranking.top1() == truth).mean()),
           "core_top1_by_model": {m.name: float((r.top1() == truth).mean()) for m, r in zip(models, per_model,
                                                                                             strict=True)},
           "baselines": ensemble_baselines(table, truth, seed=seed), "candidate_coverage": coverage(table, truth),
           "seconds": time.perf_counter() - t0, "importance": model.importance()}
    write_json_atomic(folder.fit_report_file, fit)
    return fit


LEAVABLE_SIGNALS = ("ensemble", "neighbours", "hash", "id", "specialists")
ID_ORDER_WARN = 0.5  # share of products whose id-order neighbour has their category (and 3x chance) above
                     # which fit warns


def check_without(without) -> tuple[str, ...]:
    """The signal groups of ``--without`` (a list, or one comma-separated string), checked."""
    if isinstance(without, str):
        without = without.split(",")
    out = tuple(dict.fromkeys(w.strip() for w in without if w.strip()))
    bad = [w for w in out if w not in LEAVABLE_SIGNALS]
    if bad:
        raise ConfigError(f"--without {','.join(bad)}: unknown signal (one of {', '.join(LEAVABLE_SIGNALS)}; the "
                          f"core's own features always stay)")
    return out


def id_order_share(product_ids: np.ndarray, labels: np.ndarray) -> float:
    """Share of products whose next product in id order has the same category: about the share of the
    largest categories where ids carry no order (Cdiscount's sample: 7%), near 1 where ids were numbered
    category by category."""
    if len(product_ids) < 2:
        return 0.0
    order = np.argsort(product_ids, kind="stable")
    same = labels[order][1:] == labels[order][:-1]
    return float(same.mean())


def chance_share(labels: np.ndarray) -> float:
    """What ``id_order_share`` gives when ids carry no order: the chance that two products share a
    category (the sum of the squared category shares)."""
    p = np.bincount(np.asarray(labels, np.int64)) / max(1, len(labels))
    return float((p ** 2).sum())
