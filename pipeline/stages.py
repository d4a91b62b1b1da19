"""The stages of the prediction jobs: the core, the specialists and fusion, each a per-chunk step
(``engine.Stage``) that knows nothing of where it runs.

Per chunk of products (the core's chunks, so ``--shard i/n`` splits every stage the same way):

- ``CoreStage``: each core run's predictions (and, with several runs, their average) -> ``WORK/core/``;
- ``SpecialistsStage``: the fitted specialists on the products their gates let through (OCR through the
  cache) -> ``WORK/specialists/NAME/``;
- ``FusionStage``: the fusion table of every signal, ranked by the fusion model -> ``WORK/fused/``.

Every part is written atomically and skipped when present, so a killed job picks up where it stopped; memory
holds one chunk's table at a time plus the training signals. The fusion table of a chunk is built by one
function (``fusion_table``) when fitting, predicting and explaining alike.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog, Taxonomy
from etalage.chunks import DEFAULT_CHUNK, part_done, part_path
from etalage.compute import Compute
from etalage.core.ensemble import CoreModel, mean_ranking
from etalage.core.predict import PredictOptions
from etalage.core.ranking import CoreRanking
from etalage.core.rundir import RunDir
from etalage.errors import ConfigError
from etalage.files import claim_folder, save_npz_atomic
from etalage.fusion.model import Evidence, FusionModel, assemble
from etalage.fusion.neighbours import load_indexes, query_hits
from etalage.fusion.signals import TrainingSignals
from etalage.fusion.table import CandidateTable
from etalage.options import FUSED_TOPK
from etalage.pipeline.engine import Rows, Stage
from etalage.pipeline.plan import PredictPlan
from etalage.pipeline.workdir import WorkDir

log = logging.getLogger(__name__)

RANKING_ARRAYS = ("product_ids", "topk_class", "topk_prob", "n_pictures", "picture_topk_class",
                  "picture_topk_prob", "level1_prob")


# ---------------------------------------------------------------------------------------------
# the core


@dataclass
class CoreTarget:
    """One run's predictions and where they go (``embedding``: with the pooled embedding)."""

    run: RunDir
    out: Path
    embedding: bool = False


@dataclass
class Combination:
    """Several runs' predictions averaged chunk by chunk into ``core_dir`` (per model, then over the models):
    ``run_dir(model, i)`` is where run i of a model writes (``WorkDir.core_run``)."""

    models: list[CoreModel]
    core_dir: Path
    run_dir: object

    def claim(self, catalog: Catalog, chunk: int, options: PredictOptions, tta: str, producer: str | None) -> None:
        """Stamp ``core_dir`` as the combination of the models' runs (or check it is)."""
        self.core_dir.mkdir(parents=True, exist_ok=True)
        claim_folder(self.core_dir / "meta.json", {"n_products": len(catalog), "chunk": chunk, "producer": producer,
                                                   "combined": [f"{m.name}:{len(m.runs)}" for m in self.models],
                                                   "topk": options.topk, "tta": tta}, ignore=("producer",))

    def combine(self, rows: Rows) -> None:
        combined, _ = chunk_rankings(self.models, self.run_dir, rows)
        save_npz_atomic(part_path(self.core_dir, *rows), **{k: getattr(combined, k) for k in RANKING_ARRAYS})


@dataclass
class CoreJob:
    """What the core stage predicts: each target run into its folder, over ``positions`` of the catalogue
    (None: every product, in file order), with ``options`` and the test-time augmentation ``tta``; with a
    ``combination``, the targets' chunks averaged too. ``producer``: the command that fills the folders,
    quoted by errors."""

    targets: list[CoreTarget]
    options: PredictOptions = field(default_factory=PredictOptions)
    tta: str = "none"
    chunk: int = DEFAULT_CHUNK
    producer: str | None = None
    positions: np.ndarray | None = None
    combination: Combination | None = None
    compile: bool = False


def single_run(models: list[CoreModel]) -> bool:
    """One model of one run: its predictions are the work folder's core stage itself."""
    return len(models) == 1 and not models[0].is_folds


def models_job(models: list[CoreModel], core_dir: Path, run_dir, options: PredictOptions, tta: str = "none",
               chunk: int = DEFAULT_CHUNK, producer: str | None = None) -> CoreJob:
    """The core job of a dump over ``models``: a single run straight into ``core_dir``; otherwise run i of a
    model into ``run_dir(model, i)`` (the first model's with the embedding, when ``options`` asks for it) and
    their average into ``core_dir``, the folder later stages read."""
    if single_run(models):
        return CoreJob([CoreTarget(models[0].runs[0], Path(core_dir), options.embedding)], options, tta, chunk,
                       producer)
    targets = [CoreTarget(run, Path(run_dir(m.name, i)), options.embedding and j == 0)
               for j, m in enumerate(models) for i, run in enumerate(m.runs)]
    return CoreJob(targets, options, tta, chunk, producer, combination=Combination(models, Path(core_dir), run_dir))


class CoreStage(Stage):
    """The core's predictions, chunk by chunk (``CorePredictor.predict_part``), for every target of ``job``."""

    name = "core"

    def __init__(self, catalog: Catalog, job: CoreJob, compute: Compute, label: str = ""):
        self.source, self.job, self.compute, self.label = catalog, job, compute, label
        self.reads_pictures = job.positions is None  # a chunk's pictures lie together in the dump
        self.predictors: list | None = None

    @property
    def read_ahead(self) -> Catalog | None:
        return self.source if self.reads_pictures else None

    def positions(self) -> np.ndarray:
        return np.arange(len(self.source)) if self.job.positions is None else np.asarray(self.job.positions, np.int64)

    def claim(self) -> None:
        """Stamp every folder the job writes (or check each holds this job's predictions): on the driver, once."""
        from etalage.core.predict import claim_predictions, model_spec

        job = self.job
        specs = [p.spec for p in self.predictors] if self.predictors is not None else \
            [model_spec(t.run, self.compute.trust_pickle) for t in job.targets]  # loaded already (a server): reused
        for t, spec in zip(job.targets, specs, strict=True):
            claim_predictions(t.run, spec, job.tta, self.source, t.out, replace(job.options, embedding=t.embedding),
                              job.chunk, job.positions, job.producer)
        if job.combination is not None:
            job.combination.claim(self.source, job.chunk, job.options, job.tta, job.producer)

    def todo(self, rows: Rows, upstream: dict) -> bool:
        combined = self.job.combination
        return not all(part_done(t.out, rows) for t in self.job.targets) or \
            (combined is not None and not part_done(combined.core_dir, rows))

    def open(self, threads: int | None = None) -> None:
        if self.predictors is None:
            from etalage.core.predict import CorePredictor

            # in a worker of the engine's own, decoding stays in that worker (no DataLoader processes)
            compute = self.compute if threads is None else self.compute.but(workers=0)
            self.predictors = [CorePredictor.of(t.run, compute, self.job.tta, self.job.compile)
                               for t in self.job.targets]

    def run(self, rows: Rows, chunk=None) -> dict:
        catalog = self.source.with_chunk(chunk) if chunk is not None else self.source
        positions, o = self.positions(), self.job.options
        pictures = 0
        for t, p in zip(self.job.targets, self.predictors, strict=True):
            if not part_done(t.out, rows):
                pictures += p.predict_part(catalog, t.out, positions, rows, o.topk, o.picture_topk, t.embedding)
        combined = self.job.combination
        if combined is not None and not part_done(combined.core_dir, rows):
            combined.combine(rows)
        return {"pictures": pictures}

    def close(self) -> None:
        self.predictors = None

    def adopt(self, opened: CoreStage) -> None:
        self.predictors = opened.predictors


def chunk_rankings(models: list[CoreModel], run_dir, rows: Rows) -> tuple[CoreRanking, list[tuple[str, CoreRanking]]]:
    """The chunk ``rows`` of every model (its fold runs averaged) and their average."""
    per_model = []
    for m in models:
        runs = [CoreRanking.load(run_dir(m.name, i), rows) for i in range(len(m.runs))]
        per_model.append((m.name, mean_ranking(runs)))
    return mean_ranking([r for _, r in per_model]), per_model


def run_embeddings(models: list[CoreModel], run_dir, core_dir: Path, rows: Rows) -> list[np.ndarray]:
    """The first model's embeddings of the chunk ``rows``, one array per run (each run's own space)."""
    if single_run(models):
        return [CoreRanking.load(core_dir, rows).embedding]
    return [CoreRanking.load(run_dir(models[0].name, i), rows).embedding for i in range(len(models[0].runs))]


# ---------------------------------------------------------------------------------------------
# the specialists


def ocr_engine_of(specialist_settings: list[dict]):
    """The OCR engine the specialists were fitted with (test covers are read the same way), or None when
    none of them reads."""
    from etalage.ocr import load_engine

    engines = {(s["engine"], json.dumps(s.get("engine_options", {}), sort_keys=True))
               for s in specialist_settings if "engine" in s}
    if len(engines) > 1:
        raise ConfigError("specialists fitted with different OCR engines or settings; refit them with one "
                          "`etalage specialists fit --ocr-engine ...`")
    if not engines:
        return None
    name, options = engines.pop()
    engine = load_engine(name, **json.loads(options))
    fitted = {s["engine_key"] for s in specialist_settings if s.get("engine_key")}
    if fitted and engine.cache_key not in fitted:  # same name and options, another library or model
        warnings.warn(f"the specialists were fitted on covers read by {', '.join(sorted(fitted))}; this installation "
                      f"reads with {engine.cache_key}: refit them (`etalage specialists fit`) to score what it reads",
                      UserWarning, stacklevel=2)
    return engine


@dataclass
class SpecialistsJob:
    """What the specialists stage scores: the fitted specialists ``names`` under ``folder``, their OCR cache,
    the core ranking to gate on (its folder, read a chunk at a time, or a ``CoreRanking`` in memory: ranking
    row r is the product at ``positions[r]``; None: every product), the output folder."""

    folder: Path
    names: list[str]
    ocr_cache: Path
    ranking: Path | CoreRanking
    out_dir: Path
    positions: np.ndarray | None = None
    chunk: int = DEFAULT_CHUNK
    producer: str | None = None


class SpecialistsStage(Stage):
    """The fitted specialists on the products their gates let through (``SpecialistScorer``), a chunk at a
    time; a failing plugin costs its chunks only, and its warnings travel in the report."""

    name = "specialists"

    def __init__(self, catalog: Catalog, job: SpecialistsJob, taxonomy: Taxonomy, label: str = ""):
        self.source, self.job, self.taxonomy, self.label = catalog, job, taxonomy, label
        self.scorer = None
        self.cache = None
        self.owns_cache = False  # an adopted cache is closed by the stage that opened it

    def _positions(self) -> np.ndarray:
        job = self.job
        return np.arange(len(self.source)) if job.positions is None else np.asarray(job.positions, np.int64)

    def open(self, threads: int | None = None) -> None:
        if self.scorer is None:
            from etalage.ocr.cache import OcrCache
            from etalage.specialists.runner import SpecialistScorer, fit_settings, load_fitted

            specs = load_fitted(self.job.folder, self.job.names)
            engine = ocr_engine_of([s for s in fit_settings(self.job.folder) if s is not None])
            self.cache = OcrCache(self.job.ocr_cache) if engine is not None else None
            self.owns_cache = True
            self.scorer = SpecialistScorer(specs, self.taxonomy, self.job.out_dir, engine, self.cache)

    def claim(self) -> None:
        """Each specialist's output folder stamped (on the driver, once). A stage opened here to do it is closed
        again: it travels to an engine's workers as a description, not with a database connection."""
        opened_here = self.scorer is None
        self.open(None)
        self.scorer.claim(len(self._positions()), self.job.chunk, self.job.producer)
        if opened_here:
            self.close()

    def todo(self, rows: Rows, upstream: dict) -> bool:
        return not all(part_done(self.job.out_dir / n, rows) for n in self.job.names)

    def run(self, rows: Rows, chunk=None) -> dict:
        ranking = self.job.ranking
        part = ranking.take(np.arange(*rows)) if isinstance(ranking, CoreRanking) else CoreRanking.load(ranking, rows)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            done = self.scorer.score(part, self.source, self._positions(), rows)
        return {"scored": done.scored, "failed": done.failed, "recovered": done.recovered,
                "warnings": list(dict.fromkeys(str(w.message) for w in caught))}

    def close(self) -> None:
        if self.cache is not None and self.owns_cache:
            self.cache.close()
        self.scorer = self.cache = None
        self.owns_cache = False

    def adopt(self, opened: SpecialistsStage) -> None:
        from etalage.specialists.runner import SpecialistScorer

        o = opened.scorer
        self.cache, self.owns_cache = opened.cache, False
        self.scorer = SpecialistScorer(o.specialists, self.taxonomy, self.job.out_dir, o.engine, opened.cache)


def specialist_rankings(folder: Path, names: list[str], rows: Rows | None = None) -> list:
    from etalage.specialists.runner import SpecialistRanking

    return [SpecialistRanking.load(folder / n, rows) for n in names]


def specialist_lines(scored: dict[str, int], failed: dict[str, int]) -> list[str]:
    """What the job says of its specialists stage: products scored, chunks failed (retried by the next run)."""
    return [f"{name}: {n} products scored" + (f", failed on {failed[name]} chunk(s) (retried by the next run)"
                                              if failed.get(name) else "") for name, n in scored.items()]


# ---------------------------------------------------------------------------------------------
# fusion


def training_signals(train: Catalog, taxonomy: Taxonomy, ks: list[int] | None = None) -> TrainingSignals:
    train.require_labels()
    return TrainingSignals.build(train.product_ids, taxonomy.indices_of(train.category_ids), train.md5,
                                 train.n_pictures, taxonomy.n_classes, ks)


@dataclass
class TableSources:
    """Where a fusion table's other signals are: the specialists ``names``' scores under ``specialists_dir``
    (``rows``: the products' rows there, a chunk ``(a, b)``; None: all), each core model's ``(name, ranking)``
    when there are several, the products' embedding neighbours (``NeighbourHits``, one per index)."""

    specialists_dir: Path
    names: list[str]
    rows: Rows | None = None
    models: list = field(default_factory=list)
    neighbours: list = field(default_factory=list)
    blanked: dict = field(default_factory=dict)  # specialist name -> product rows it is made not to have looked at


def fusion_table(ranking: CoreRanking, catalog: Catalog, positions: np.ndarray, taxonomy: Taxonomy,
                 signals: TrainingSignals, sources: TableSources, own_classes: np.ndarray | None = None
                 ) -> CandidateTable:
    """The one way a fusion table is built, when fitting and when predicting: the products at ``positions``
    of ``catalog``, ``ranking`` their core ranking row for row (with several core models, their average);
    their pictures' MD5s; the ``sources``' signals. ``own_classes``: the products' labels when they are the
    fit's training queries (each product's own hash and id contribution removed)."""
    pic_rows, pic_owner = catalog.picture_rows(positions)
    specialists = [sr.without(sources.blanked[sr.name]) if sr.name in sources.blanked else sr
                   for sr in specialist_rankings(sources.specialists_dir, list(sources.names), sources.rows)]
    evidence = Evidence(catalog.md5[pic_rows], pic_owner, specialists, list(sources.models), list(sources.neighbours))
    return assemble(ranking, taxonomy, signals, evidence, own_classes)


@dataclass
class FusionInputs:
    """What fusing a chunk of a work folder needs besides the fusion model: the plan, the work folder, the test
    catalogue, the taxonomy and the training signals (hash index, id prior, class frequencies)."""

    plan: PredictPlan
    work: WorkDir
    catalog: Catalog
    taxonomy: Taxonomy
    signals: TrainingSignals
    model_dir: Path | None = None  # the reranker to use: the plan's (None), or its model without id features


@dataclass
class FusionModels:
    """The fusion model and the embedding-neighbour indexes of a plan, loaded from its folder."""

    model: FusionModel
    indexes: list

    @classmethod
    def load(cls, plan: PredictPlan, model_dir: Path | None = None) -> FusionModels:
        indexes = load_indexes(plan.model, len(plan.models[0].runs)) if plan.neighbours else []
        return cls(FusionModel.load(model_dir or plan.model), indexes)


def chunk_table(inputs: FusionInputs, indexes: list, rows: Rows) -> tuple[CoreRanking, CandidateTable]:
    """The fusion table of the chunk ``rows`` of a work folder (fusion and explain build the same one): its
    core ranking (and each core model's), specialists, and embedding neighbours."""
    plan, work = inputs.plan, inputs.work
    part = CoreRanking.load(work.core, rows)
    models = chunk_rankings(plan.models, work.core_run, rows)[1] if len(plan.models) > 1 else []
    hits = query_hits(indexes, run_embeddings(plan.models, work.core_run, work.core, rows), plan.neighbours) \
        if plan.neighbours else []
    sources = TableSources(work.specialists, plan.specialist_names, rows, models, hits)
    return part, fusion_table(part, inputs.catalog, np.arange(*rows), inputs.taxonomy, inputs.signals, sources)


class FusionStage(Stage):
    """Fusion, chunk by chunk: the chunk's table from every signal, ranked; one part file (top classes and
    scores per product, and the core's best class). Forked on the local engine (single-threaded numpy and
    LightGBM work per chunk)."""

    name = "fusion"
    forked = True

    def __init__(self, inputs: FusionInputs, label: str = ""):
        self.inputs, self.label = inputs, label
        self.loaded: FusionModels | None = None

    def todo(self, rows: Rows, upstream: dict) -> bool:
        recovered = upstream.get("specialists", {}).get("recovered", False)  # fused before without them
        return recovered or not part_done(self.inputs.work.fused, rows)

    def open(self, threads: int | None = None) -> None:
        if self.loaded is None:
            self.loaded = FusionModels.load(self.inputs.plan, self.inputs.model_dir)
        self.loaded.model.threads = threads or 0  # LightGBM's threads per call: 0 is every core

    def run(self, rows: Rows, chunk=None) -> dict:
        part, table = chunk_table(self.inputs, self.loaded.indexes, rows)
        classes, scores = self.loaded.model.rank(table, rows[1] - rows[0], FUSED_TOPK)
        save_npz_atomic(part_path(self.inputs.work.fused, *rows), product_ids=part.product_ids, topk_class=classes,
                        topk_score=scores, core_top1=part.top1())
        return {"fused": True}

    def close(self) -> None:
        self.loaded = None

    def adopt(self, opened: FusionStage) -> None:
        self.loaded = opened.loaded
