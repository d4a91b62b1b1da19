"""Fitting the second level as jobs: the specialists on training products, then the fusion model on the
training products the core models never trained on (a run's validation products, or all of them out of
fold with fold runs), their core predictions and specialist scores made on the engine the job is given."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog
from etalage.catalog.bsonindex import file_stamp
from etalage.catalog.taxonomy import taxonomy_beside
from etalage.chunks import chunk_ranges
from etalage.compute import Compute
from etalage.core.predict import PredictOptions
from etalage.core.rundir import RunDir
from etalage.files import write_json_atomic
from etalage.fusion.folder import FusionDir, FusionPlan
from etalage.fusion.model import FusionModel, feature_groups
from etalage.fusion.report import coverage, ensemble_baselines, save_table
from etalage.fusion.signals import check_without, id_interleave_share, ids_look_ordered
from etalage.ocr.cache import default_cache_path
from etalage.options import RERANKER_KINDS
from etalage.pipeline.engine import Engine, LocalEngine, RunStats
from etalage.pipeline.stages import (
    SpecialistsJob,
    SpecialistsStage,
    TableSources,
    fusion_table,
    training_signals,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# specialists


@dataclass
class SpecialistsFitConfig:
    """``etalage specialists fit``: the labelled ``train`` dump, the folder of fitted specialists ``out``, the
    specialists' ``names``; ``run``: a core run whose validation products are left out (fusion trains on them);
    the taxonomy (default: the run's, else the one beside ``train``); up to ``max_train`` training products per
    specialist (None: all); the OCR engine (None: the default reading) and cache; constructor ``options`` per
    name; the seed choosing the products."""

    train: Path
    out: Path
    names: list[str]
    run: Path | None = None
    taxonomy: Path | None = None
    max_train: int | None = 2000
    ocr_engine: str | None = None
    ocr_cache: Path | None = None
    options: dict[str, dict] = field(default_factory=dict)
    seed: int = 0


def fit_specialists_job(cfg: SpecialistsFitConfig, compute: Compute | None = None) -> list[dict]:
    """Index the training dump, read the covers of each specialist's training products through the OCR cache,
    fit, save under ``out/NAME``; a row per specialist (its ``fit.json``)."""
    from etalage.ocr import load_engine
    from etalage.ocr.cache import OcrCache
    from etalage.specialists.plugins import create_specialist
    from etalage.specialists.runner import FitSettings, fit_specialists

    compute = compute or Compute()
    run_dir = RunDir(cfg.run) if cfg.run else None
    if run_dir is not None and not cfg.taxonomy:
        tax = run_dir.taxonomy()  # the given taxonomy first, then the run's, then the one beside ``train``
    else:
        tax = taxonomy_beside(cfg.train, cfg.taxonomy, required=True)
    catalog = Catalog.open(cfg.train, tax, md5=True, progress=compute.progress, cache_dir=compute.cache_dir)
    catalog.require_labels()
    exclude = run_dir.val_positions() if run_dir else None
    reads = any("text" in create_specialist(n, **cfg.options.get(n, {})).needs for n in cfg.names)
    engine = load_engine(cfg.ocr_engine) if reads else None
    cache = OcrCache(cfg.ocr_cache or default_cache_path(cfg.train, compute.cache_dir)) if reads else None
    try:
        return fit_specialists(catalog, tax, cfg.names, cfg.out, engine, cache,
                               FitSettings(exclude, cfg.max_train, cfg.seed, cfg.options), compute.progress)
    finally:
        if cache is not None:
            cache.close()


# ---------------------------------------------------------------------------------------------
# fusion


@dataclass
class FusionFitConfig:
    """``etalage fusion fit``: the core models ``runs`` (a run or a folder of fold runs, or a list of them:
    ``check_compatible`` rules), their labelled ``train`` dump, the fusion folder ``out``; the fitted specialists
    (``names``: only these of them); the reranker ``kind`` (auto: ranker and binary, the better by
    cross-validation); the core's top-K candidates and test-time augmentation; ``neighbours``: k embedding
    neighbours per product from the first model's embeddings (0: off); the OCR cache; the seed; LightGBM
    settings; ``without``: signal groups (``fusion.signals.LEAVABLE_SIGNALS``) the reranker is not given."""

    runs: list
    train: Path
    out: Path
    specialists: Path | None = None
    names: list[str] | None = None
    kind: str = "auto"
    topk: int = 20
    tta: str = "none"
    neighbours: int = 0
    ocr_cache: Path | None = None
    seed: int = 0
    lgb_params: dict = field(default_factory=dict)
    without: tuple[str, ...] = ()
    with_id: bool = False  # --with id: the test ids will interleave with these; no model without id features
    blank_titles: float = 0.25  # share of the products whose title the title-reading specialists do not see


@dataclass
class FusionFit:
    """What ``fit_fusion`` did (``FUSION/fit_report.json``): the products it learnt from and how they were held
    out, the table's size, the chosen reranker and how (``selection``, ``trees``, each kind's validation top-1),
    the core's top-1 on the same products (each model's too), the 2017 second-level baselines, the candidate
    coverage, whether the ids looked numbered category by category, the seconds taken, the feature importance."""

    products: int
    held_out: str
    training_products: int
    rows: int
    features: int
    signals_left_out: list[str]
    id_order_share: float
    ids_look_ordered: bool
    kind: str
    selection: str
    trees: int
    valid_top1_by_kind: dict[str, float]
    core_top1: float
    core_top1_by_model: dict[str, float]
    baselines: dict
    candidate_coverage: float
    seconds: float
    importance: dict
    params: dict = field(default_factory=dict)
    candidates: list = field(default_factory=list)  # every (kind, capacity) scored, with its best trees
    without_id: dict = field(default_factory=dict)  # the model fitted without id features too (ids looked ordered)
    id_interleave: float | None = None              # how fusion's products' ids interleave with the training ids
    titles_blanked: dict = field(default_factory=dict)  # title readers made blind to a share of the products

    @property
    def share_of_training_products(self) -> float:
        return self.products / max(1, self.training_products)

    def as_dict(self) -> dict:
        return {**asdict(self), "share_of_training_products": self.share_of_training_products}


@dataclass
class _HeldOut:
    """The fit's training queries: their positions in the dump, the core ranking of them (several models:
    their mean, and each model's), their labels, their embedding neighbours."""

    positions: np.ndarray
    ranking: object
    per_model: list
    truth: np.ndarray
    hits: list
    stats: RunStats


def fit_fusion(cfg: FusionFitConfig, compute: Compute | None = None, engine: Engine | None = None) -> FusionFit:
    """Fit the fusion model on the training products of ``cfg.train`` that the core models predict honestly: a
    run's validation products, or every product with fold runs, less those the specialists were fitted on.
    Writes the fusion folder (``FusionDir``): model, plan (paths relative to the folder), table, fit report with
    the second-level baselines."""
    from etalage.core.ensemble import open_models

    compute = compute or Compute()
    engine = engine or LocalEngine(compute.progress)
    without = check_without(cfg.without)
    models = open_models([cfg.runs] if isinstance(cfg.runs, (str, Path)) else list(cfg.runs))
    folder = FusionDir(cfg.out)
    folder.path.mkdir(parents=True, exist_ok=True)
    taxonomy = models[0].runs[0].taxonomy()
    catalog = Catalog.open(cfg.train, taxonomy, md5=True, progress=compute.progress, cache_dir=compute.cache_dir)
    catalog.require_labels()
    labels = taxonomy.indices_of(catalog.category_ids)
    ordered, id_share, chance = ids_look_ordered(catalog.product_ids, labels)
    if ordered and "id" not in without:
        log.warning("%s: %.0f%% of the products sit next to a product of their own category in id order (%.0f%% by "
                    "chance; Cdiscount's sample: 7%%): the ids look numbered category by category, so the product-id "
                    "prior learns the labels of training products and misleads on test products numbered apart from "
                    "them; %s", cfg.train, 100 * id_share, 100 * chance,
                    "kept as asked (--with id)" if cfg.with_id else "a model without id features is fitted too, and "
                    "prediction uses it where the test ids do not interleave with these")
    t0 = time.perf_counter()
    spec_names = _specialist_names(cfg)
    held = _held_out(cfg, models, catalog, labels, spec_names, folder, compute, engine)
    if spec_names:
        _score_held_out(cfg, spec_names, held, catalog, taxonomy, folder, compute, engine)
    else:
        log.info("[2/4] specialists: none (pass --specialists DIR from `etalage specialists fit`)")
    log.info("[3/4] table: candidates and features (hash, id and neighbour signals exclude each product itself)")
    signals = training_signals(catalog, taxonomy)
    named = list(zip([m.name for m in models], held.per_model, strict=True)) if len(models) > 1 else []
    blanked = _blanked_titles(cfg, spec_names, len(held.positions))
    table = fusion_table(held.ranking, catalog, held.positions, taxonomy, signals,
                         TableSources(folder.specialists_val, spec_names, None, named, held.hits, blanked), held.truth)
    left_out = {n for g in without for n in feature_groups(tuple(table.features), spec_names).get(g, [])}
    feature_names = tuple(n for n in table.features if n not in left_out)
    save_table(folder.table_file, table, held.truth, held.ranking.top1())
    log.info("[4/4] LightGBM (%s) over %s rows x %d features",
             "ranker and binary, chosen by cross-validation" if cfg.kind == "auto" else cfg.kind,
             f"{len(table.owner):,}", len(feature_names))
    kinds = RERANKER_KINDS if cfg.kind == "auto" else (cfg.kind,)
    model, chosen = FusionModel.fit_best(table, held.truth, feature_names, kinds=kinds, seed=cfg.seed,
                                         lgb_params=cfg.lgb_params)
    model.plan = FusionPlan.build(folder, [m.path for m in models], cfg.train, cfg.specialists,
                                  specialist_names=spec_names, topk=cfg.topk, tta=cfg.tta, ks=list(signals.ks),
                                  train_stamp=file_stamp(Path(cfg.train)), lgb_params=cfg.lgb_params,
                                  lgb_chosen=chosen.get("params", {}), run_names=[m.name for m in models],
                                  neighbours=cfg.neighbours)
    alternative = {}
    if ordered and "id" not in without and not cfg.with_id:
        model.plan.id_interleave = id_interleave_share(catalog.product_ids[held.positions], catalog.product_ids, True)
        alternative = _fit_without_id(table, held.truth, feature_names, spec_names, cfg, model, folder)
    model.save(folder)
    held.stats.save(folder.path)
    fit = FusionFit(len(held.positions), _held_out_words(models), len(catalog), len(table.owner), len(feature_names),
                    list(without), id_share, ordered, model.kind, chosen["selection"], int(chosen["trees"]),
                    chosen["valid_top1_by_kind"], float((held.ranking.top1() == held.truth).mean()),
                    {m.name: float((r.top1() == held.truth).mean()) for m, r in zip(models, held.per_model, strict=True)},
                    ensemble_baselines(table, held.truth, seed=cfg.seed), coverage(table, held.truth),
                    time.perf_counter() - t0, model.importance(), chosen.get("params", {}),
                    chosen.get("candidates", []), alternative, model.plan.id_interleave,
                    {n: {"share": cfg.blank_titles, "products": len(r)} for n, r in blanked.items()})
    write_json_atomic(folder.fit_report_file, fit.as_dict())
    return fit


def _fit_without_id(table, truth: np.ndarray, feature_names: tuple[str, ...], spec_names: list[str],
                    cfg: FusionFitConfig, model: FusionModel, folder: FusionDir) -> dict:
    """The same reranker fitted without the id features, into ``FUSION/without_id`` (its plan the main model's):
    what prediction uses where the test ids stand apart from the training ids. Returns its summary."""
    from dataclasses import replace

    id_features = set(feature_groups(tuple(table.features), spec_names).get("id", []))
    names = tuple(n for n in feature_names if n not in id_features)
    log.info("      and without the id features (%d features) -> %s", len(names), folder.without_id)
    kinds = RERANKER_KINDS if cfg.kind == "auto" else (cfg.kind,)
    alt, chosen = FusionModel.fit_best(table, truth, names, kinds=kinds, seed=cfg.seed, lgb_params=cfg.lgb_params)
    alt.plan = replace(model.plan)
    alt.save(folder.without_id)
    return {"folder": str(folder.without_id), "kind": alt.kind, "features": len(names), "trees": int(chosen["trees"]),
            "valid_top1_by_kind": chosen["valid_top1_by_kind"]}


def _blanked_titles(cfg: FusionFitConfig, spec_names: list[str], n: int) -> dict[str, np.ndarray]:
    """For each specialist that reads titles, the rows of a random ``blank_titles`` share of the fit's products
    it is made not to have seen: LightGBM cannot learn what to do with a missing title it never met, and every
    catalogue has listings without one."""
    from etalage.specialists.runner import fit_settings, fitted_names

    if not spec_names or cfg.blank_titles <= 0:
        return {}
    needs = dict(zip(fitted_names(cfg.specialists), fit_settings(cfg.specialists), strict=True))
    readers = [name for name in spec_names if "title" in (needs.get(name) or {}).get("needs", [])]
    rng = np.random.default_rng([cfg.seed, 7])
    rows = np.sort(rng.choice(n, int(round(cfg.blank_titles * n)), replace=False)).astype(np.int64)
    for name in readers:
        log.info("      %s: the titles of %d of the %d products left out (%.0f%%), so fusion learns listings "
                 "without one", name, len(rows), n, 100 * cfg.blank_titles)
    return {name: rows for name in readers}


def _specialist_names(cfg: FusionFitConfig) -> list[str]:
    from etalage.specialists.runner import fitted_names

    if cfg.specialists is None:
        return []
    return list(cfg.names) if cfg.names else fitted_names(cfg.specialists)


def _held_out_words(models) -> str:
    return "validation products" if not models[0].is_folds else "training products (out of fold)"


def _held_out(cfg: FusionFitConfig, models, catalog: Catalog, labels: np.ndarray, spec_names: list[str],
              folder: FusionDir, compute: Compute, engine: Engine) -> _HeldOut:
    """Step 1: the products fusion learns from (held out of the core, less the specialists' training products),
    each model's core ranking of them, and their embedding neighbours."""
    from etalage.core.ensemble import mean_ranking
    from etalage.pipeline.cores import HeldOutJob, build_neighbour_indexes, holdout_hits, holdout_rankings
    from etalage.specialists.runner import trained_positions

    positions, _ = models[0].holdout()
    if spec_names:
        left = np.setdiff1d(positions, trained_positions(cfg.specialists, cfg.train))
        if len(left) < len(positions):
            log.info("      %d of the %d held-out products trained the specialists: left out", len(positions) - len(left),
                     len(positions))
        positions = left
    log.info("[1/4] core predictions on the %d %s of %s (%s)", len(positions), _held_out_words(models),
             Path(cfg.train).name, ", ".join(f"{m.name}: {len(m.runs)} run{'s' * (len(m.runs) > 1)}" for m in models))
    command = f"etalage fusion fit {' '.join(f'--run {m.path}' for m in models)} --train {cfg.train} --out {folder}"
    job = HeldOutJob(catalog, folder.core_val, PredictOptions(cfg.topk), cfg.tta, command)
    held_pos, per_model, stats = holdout_rankings(models, job, compute, engine)
    rows = np.searchsorted(held_pos, positions)
    per_model = [r.take(rows) for r in per_model]
    hits = []
    if cfg.neighbours:
        log.info("      embedding neighbours: the training products' embeddings by %s's %d run(s), one index each",
                 models[0].name, len(models[0].runs))
        embeddings = build_neighbour_indexes(models[0], job, labels, folder, compute, engine)
        hits = [holdout_hits(models[0], embeddings, folder, positions, cfg.neighbours)]
    return _HeldOut(positions, mean_ranking(per_model), per_model, labels[positions], hits, stats)


def _score_held_out(cfg: FusionFitConfig, spec_names: list[str], held: _HeldOut, catalog: Catalog, taxonomy,
                    folder: FusionDir, compute: Compute, engine: Engine) -> None:
    """Step 2: the specialists on the held-out products their gates let through, on the engine."""
    log.info("[2/4] specialists %s on the products their gates let through", ", ".join(spec_names))
    cache = Path(cfg.ocr_cache or default_cache_path(cfg.train, compute.cache_dir))
    job = SpecialistsJob(Path(cfg.specialists), spec_names, cache, held.ranking, folder.specialists_val,
                         held.positions, producer=f"etalage fusion fit --out {folder}")
    stage = SpecialistsStage(catalog, job, taxonomy)
    stage.claim()
    held.stats.merge(engine.run([stage], chunk_ranges(len(held.positions), job.chunk), "specialists"))
