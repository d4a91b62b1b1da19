"""Predicting a data file through every stage, in resumable chunks and shards, and merging the chunks
into a submission.

Per chunk of products (the core's chunks, so ``--shard i/n`` splits every stage the same way):

1. index + picture MD5s of the file and of the training file (skipped when up to date);
2. core predictions                 -> WORK/core/part-*.npz
3. specialists on gated products    -> WORK/specialists/NAME/part-*.npz (OCR through the cache)
4. fusion                           -> WORK/fused/part-*.npz (top classes and scores per product)

Every part is written atomically and skipped when present, so a killed job picks up where it stopped;
memory holds one chunk's table at a time plus the training signals.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog, Taxonomy
from etalage.chunks import DEFAULT_CHUNK, chunk_ranges, list_parts, load_parts, part_path, shard_chunk_ranges
from etalage.core.ensemble import CoreModel
from etalage.core.ranking import CoreRanking
from etalage.core.rundir import RunDir
from etalage.errors import ConfigError, DataError, StageOutputError
from etalage.files import save_npz_atomic
from etalage.forking import map_forked, mp_child
from etalage.fusion.folder import FusionDir
from etalage.fusion.model import FusionModel, assemble, fused_top1
from etalage.fusion.signals import TrainingSignals
from etalage.fusion.table import CandidateTable
from etalage.ocr.cache import default_cache_path
from etalage.options import FUSED_TOPK
from etalage.pipeline.workdir import WorkDir
from etalage.progress import bar as progress_bar
from etalage.resources import usable_cpus

log = logging.getLogger(__name__)


def fusion_workers() -> int:
    """Processes for the fusion stage: every core this process may use (``ETALAGE_FUSION_WORKERS``
    overrides)."""
    return int(os.environ.get("ETALAGE_FUSION_WORKERS", 0)) or usable_cpus()


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_signals(train: Catalog, taxonomy: Taxonomy, ks: list[int] | None = None) -> TrainingSignals:
    train.require_labels()
    return TrainingSignals.build(train.product_ids, taxonomy.indices_of(train.category_ids), train.md5,
                                 train.n_pictures, taxonomy.n_classes, ks)


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


class SpecialistsStage:
    """The specialists stage, loaded once: the fitted specialists ``names`` under ``specialists_dir``, the OCR
    engine they were fitted with and the OCR cache (opened per call). The local engine scores a shard with
    one call, the Ray engine's specialists actors one chunk per call (``chunk_shard``)."""

    def __init__(self, specialists_dir: Path, names: list[str], ocr_cache: Path | None, data: Path):
        from etalage.specialists.runner import fit_settings, load_fitted

        self.specs = load_fitted(specialists_dir, names)
        self.engine = ocr_engine_of([s for s in fit_settings(specialists_dir) if s is not None])
        self.cache_path = Path(ocr_cache) if ocr_cache else default_cache_path(data)

    def score(self, ranking, catalog: Catalog, positions: np.ndarray, taxonomy: Taxonomy, out_dir: Path,
              shard: tuple[int, int], producer: str, progress: bool = True):
        """``score_catalog`` over shard ``shard`` (guarded: a failing plugin costs its chunks only)."""
        from etalage.ocr.cache import OcrCache
        from etalage.specialists.runner import score_catalog

        cache = OcrCache(self.cache_path) if self.engine is not None else None
        try:
            return score_catalog(self.specs, ranking, catalog, positions, taxonomy, self.engine, cache, out_dir,
                                 shard=shard, producer=producer, progress=progress)
        finally:
            if cache is not None:
                cache.close()


def chunk_shard(rows: tuple[int, int], n_products: int, chunk: int) -> tuple[int, int]:
    """The shard ``i/n`` that is exactly the chunk ``rows`` (n: the number of chunks), so that a stage run
    over shards does one chunk."""
    chunks = chunk_ranges(n_products, chunk)
    shard = (chunks.index(tuple(rows)), len(chunks))
    assert shard_chunk_ranges(n_products, chunk, shard) == [tuple(rows)]
    return shard


def score_specialists(specialists_dir: Path, names: list[str], ranking, catalog: Catalog, positions: np.ndarray,
                      taxonomy: Taxonomy, out_dir: Path, shard: tuple[int, int], producer: str,
                      ocr_cache: Path | None, progress: bool = True):
    """The specialists stage: load the fitted ones, read the gated products, score them (guarded)."""
    stage = SpecialistsStage(specialists_dir, names, ocr_cache, catalog.path)
    summary = stage.score(ranking, catalog, positions, taxonomy, out_dir, shard, producer, progress)
    for line in summary.lines():
        log.info("      %s", line)
    return summary


def specialist_rankings(folder: Path, names: list[str], rows: tuple[int, int] | None = None) -> list:
    from etalage.specialists.runner import SpecialistRanking

    return [SpecialistRanking.load(folder / n, rows) for n in names]


def predict_core_file(run: str | Path, data: str | Path, out: str | Path, topk: int = 20, picture_topk: int = 5,
                      tta: str = "none", shard: tuple[int, int] = (0, 1), embedding: bool = False,
                      batch_size: int = 64, workers: int | None = None, device: str = "auto", compile: bool = False,
                      trust_pickle: bool = False, progress: bool = True, engine: str = "local", ray=None):
    """``etalage predict``: core predictions of shard ``i/n`` of ``data`` into ``out``; once every shard
    is done, also ``out/ranking.parquet``. Returns the ``CoreRanking`` when complete, else None.
    ``engine``: ``local`` (this process) or ``ray`` (``ray``: its ``RaySettings``), the same parts."""
    from etalage.core.ranking import write_ranking_parquet

    if engine == "ray":
        from etalage.pipeline.ray_engine import predict_core_ray

        ranking = predict_core_ray(run, data, out, topk, picture_topk, tta, shard, embedding, batch_size, device,
                                   compile, trust_pickle, progress=progress, ray=ray)
        taxonomy = RunDir(run).taxonomy()
    else:
        from etalage.core.predict import CorePredictor

        catalog = Catalog.open(data, progress=progress)
        predictor = CorePredictor(run, device=device, batch_size=batch_size, workers=workers, tta=tta,
                                  compile=compile, trust_pickle=trust_pickle)
        ranking = predictor.predict_catalog(catalog, out, topk=topk, picture_topk=picture_topk, shard=shard,
                                            embedding=embedding, progress=progress)
        taxonomy = predictor.taxonomy
    if ranking is not None:
        write_ranking_parquet(Path(out) / "ranking.parquet", ranking.product_ids, ranking.topk_class,
                              ranking.topk_prob.astype(np.float32), taxonomy)
    return ranking


# ---------------------------------------------------------------------------------------------
# the plan a fusion model carries


@dataclass
class PredictPlan:
    """What ``predict_file`` runs with: the fusion model's ``FusionPlan``, paths resolved and checked,
    each overridable per call."""

    model: FusionDir
    models: list[CoreModel]   # the core models: one run, fold runs, or several (their averaged ranking leads)
    train: Path
    specialists: Path | None
    specialist_names: list[str]
    topk: int
    ks: list[int]
    tta: str  # the core's test-time augmentation: the model saw its probabilities, test must match
    neighbours: int = 0       # embedding neighbours per product (0: none)

    @classmethod
    def from_model(cls, model_dir: str | Path, run=None, train=None, specialists=None) -> PredictPlan:
        """The plan stored in ``model_dir/fusion.json`` (paths relative to the folder), each path checked.
        ``run``: a path, or a list of them, in place of the stored core models (same number, same order)."""
        folder = FusionDir(model_dir)
        stored = FusionModel.load(folder).plan
        if stored is None:
            raise StageOutputError(f"{folder.meta_file}: no settings to predict with; refit with `etalage fusion fit`")

        def pick(given, key: str, flag: str) -> Path | None:
            return Path(given) if given else folder.resolve(getattr(stored, key), key, flag)

        given = [run] if isinstance(run, (str, Path)) else list(run or [])
        if given and len(given) != len(stored.runs):
            raise ConfigError(f"{folder} was fitted over {len(stored.runs)} core model(s); pass --run that many "
                              f"times (got {len(given)})")
        paths = [Path(g) for g in given] or [folder.resolve(r, "run", "--run") for r in stored.runs]
        if not paths:
            raise StageOutputError(f"{folder.meta_file}: no core run stored; pass --run PATH")
        names = stored.run_names if len(stored.run_names) == len(paths) else [None] * len(paths)
        models = [CoreModel.open(p, n) for p, n in zip(paths, names, strict=True)]
        return cls(folder, models, pick(train, "train", "--train"), pick(specialists, "specialists", "--specialists"),
                   list(stored.specialist_names), stored.topk, list(stored.ks), stored.tta, stored.neighbours)

    @property
    def run(self) -> RunDir:
        """The first core run (its taxonomy is every run's, ``check_compatible`` made sure)."""
        return self.models[0].runs[0]

    def taxonomy(self) -> Taxonomy:
        return self.run.taxonomy()

    def runs_label(self) -> str:
        return " + ".join(str(m.path) for m in self.models)

    def check_tta(self, tta: str | None) -> None:
        if tta is not None and tta != self.tta:
            raise ConfigError(f"{self.model} was fitted on core probabilities with --tta {self.tta}; predict with "
                              f"the same (drop --tta) or refit with `etalage fusion fit --tta {tta}`")


# ---------------------------------------------------------------------------------------------
# the fusion table of a chunk


def fusion_table(ranking, catalog: Catalog, positions: np.ndarray, taxonomy: Taxonomy, signals: TrainingSignals,
                 specialists_dir: Path, specialist_names: list[str], rows: tuple[int, int] | None = None,
                 own_classes: np.ndarray | None = None, models: list = (), neighbours: list = ()) -> CandidateTable:
    """The one way a fusion table is built, when fitting and when predicting: the products at
    ``positions`` of ``catalog``, ``ranking`` their core ranking row for row (with several core models,
    their average, and ``models`` each one's ``(name, ranking)``); their pictures' MD5s; the specialists
    ``specialist_names`` scored under ``specialists_dir`` (``rows``: the products' rows there, a chunk
    ``(a, b)``; None: all); ``neighbours``: their ``NeighbourHits`` (one per index). ``own_classes``: the
    products' labels when they are the fit's training queries (each product's own hash and id
    contribution removed)."""
    pic_rows, pic_owner = catalog.picture_rows(positions)
    return assemble(ranking, taxonomy, signals, catalog.md5[pic_rows], pic_owner,
                    specialist_rankings(specialists_dir, list(specialist_names), rows),
                    training_queries=own_classes is not None, own_classes=own_classes, models=models,
                    neighbours=neighbours)


def chunk_table(plan: PredictPlan, work: WorkDir, catalog: Catalog, taxonomy: Taxonomy, signals: TrainingSignals,
                indexes: list, rows: tuple[int, int]) -> tuple[CoreRanking, CandidateTable]:
    """The fusion table of the chunk ``rows`` of a work folder (fusion and explain build the same one):
    its core ranking (and each core model's), specialists, and embedding neighbours."""
    from etalage.pipeline.cores import chunk_rankings, query_hits, run_embeddings

    a, b = rows
    part = CoreRanking.load(work.core, rows)
    models = chunk_rankings(plan.models, work.core_run, rows)[1] if len(plan.models) > 1 else []
    hits = query_hits(indexes, run_embeddings(plan.models, work.core_run, work.core, rows), plan.neighbours) \
        if plan.neighbours else []
    return part, fusion_table(part, catalog, np.arange(a, b), taxonomy, signals, work.specialists,
                              plan.specialist_names, rows, models=models, neighbours=hits)


# ---------------------------------------------------------------------------------------------
# predict (shards) and merge


def open_prediction_job(plan: PredictPlan, data: str | Path, work: WorkDir, shard: tuple[int, int], chunk: int,
                        progress: bool) -> tuple[Path, Taxonomy, str, Catalog, Catalog]:
    """Stage 1 of every engine: the work folder claimed for this job, the test and training dumps indexed
    with their picture hashes. Returns (data, taxonomy, shard label for log lines, test, train). A model
    whose specialists are not at hand is refused first, before any of that."""
    if plan.specialist_names and plan.specialists is None:
        raise ConfigError(f"{plan.model}: the model uses specialists {', '.join(plan.specialist_names)}; "
                          f"pass --specialists DIR")
    data = Path(data)
    work.claim(data, str(plan.model), plan.runs_label(), chunk)
    taxonomy = plan.taxonomy()
    label = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    log.info("[1/4] index + picture hashes: %s, %s", data.name, plan.train.name)
    catalog = Catalog.open(data, md5=True, progress=progress)
    train = Catalog.open(plan.train, taxonomy, md5=True, progress=progress)
    return data, taxonomy, label, catalog, train


def predict_file(plan: PredictPlan, data: str | Path, work: WorkDir, shard: tuple[int, int] = (0, 1),
                 command: str = "etalage submit", ocr_cache: str | Path | None = None, device: str = "auto",
                 batch_size: int = 64, workers: int | None = None, chunk: int = DEFAULT_CHUNK,
                 trust_pickle: bool = False, progress: bool = True) -> bool:
    """Stages 1-4 for shard ``i/n`` of ``data`` into ``work``. True when every chunk of every shard
    is fused (the merge can run)."""
    from etalage.pipeline.cores import predict_models

    data, taxonomy, label, catalog, train = open_prediction_job(plan, data, work, shard, chunk, progress)
    log.debug("peak RSS so far %.0f MB", peak_rss_mb())
    log.info("[2/4] core predictions%s -> %s", label, work.core)
    kw = dict(device=device, batch_size=batch_size, workers=workers, trust_pickle=trust_pickle)
    predict_models(plan.models, catalog, work.core, work.core_run, shard, chunk, plan.topk, plan.tta,
                   bool(plan.neighbours), kw, command, progress)
    chunks = shard_chunk_ranges(len(catalog), chunk, shard)
    redo: set[tuple[int, int]] = set()
    if plan.specialist_names:
        if plan.specialists is None:
            raise ConfigError(f"{plan.model}: the model uses specialists {', '.join(plan.specialist_names)}; "
                              f"pass --specialists DIR")
        log.debug("peak RSS so far %.0f MB", peak_rss_mb())
        log.info("[3/4] specialists %s%s -> %s", ", ".join(plan.specialist_names), label, work.specialists)
        summary = score_specialists(plan.specialists, plan.specialist_names, work.core, catalog,
                                    np.arange(len(catalog)), taxonomy, work.specialists, shard, command,
                                    Path(ocr_cache) if ocr_cache else None, progress)
        redo = set(summary.recovered_chunks)  # fused without a specialist that has now scored them
    else:
        log.info("[3/4] specialists: none in this fusion model")
    log.debug("peak RSS so far %.0f MB", peak_rss_mb())
    log.info("[4/4] fusion%s -> %s", label, work.fused)
    fuse_chunks(plan, work, catalog, train, taxonomy, chunks, redo, progress)
    log.debug("peak RSS so far %.0f MB", peak_rss_mb())
    done = set(list_parts(work.fused))
    return all(c in done for c in chunk_ranges(len(catalog), chunk))


def fuse_chunks(plan: PredictPlan, work: WorkDir, catalog: Catalog, train: Catalog, taxonomy: Taxonomy,
                chunks: list[tuple[int, int]], redo: set[tuple[int, int]], progress: bool) -> None:
    """Stage 4 over ``chunks`` (those not fused yet, and ``redo``), in forked workers."""
    done = list_parts(work.fused)
    todo = [c for c in chunks if c not in done or c in redo]
    workers = min(fusion_workers(), len(todo))
    state = fusion_state(plan, work, catalog, train, taxonomy)
    state["model"].threads = 1 if workers > 1 else 0
    state["faiss_threads"] = 0  # forked workers: one thread each, else every core
    _FUSE.update(state)
    try:
        with progress_bar(total=sum(b - a for a, b in todo), unit="product", desc="fusion", enabled=progress) as bar:
            for a, b in map_forked(_fuse_chunk, todo, workers):
                bar.update(b - a)
    finally:
        _FUSE.clear()


def fusion_state(plan: PredictPlan, work: WorkDir, catalog: Catalog, train: Catalog, taxonomy: Taxonomy,
                 signals: TrainingSignals | None = None, load: bool = True) -> dict:
    """What fusing a chunk needs: the work folder, the catalogue, the taxonomy, the training signals, the
    fusion model and the embedding-neighbour indexes (``fuse_chunk``'s ``st``). ``load=False``: without the
    model and the indexes (``load_fusion_models`` adds them where the fusing happens)."""
    signals = signals if signals is not None else training_signals(train, taxonomy, plan.ks)
    st = dict(work=work, catalog=catalog, taxonomy=taxonomy, signals=signals, plan=plan)
    return load_fusion_models(st) if load else st


def load_fusion_models(st: dict) -> dict:
    """``st`` with the fusion model and the embedding-neighbour indexes of its plan, loaded from the fusion
    folder."""
    from etalage.pipeline.cores import load_indexes

    plan = st["plan"]
    st["model"] = FusionModel.load(plan.model)
    st["indexes"] = load_indexes(plan.model, len(plan.models[0].runs)) if plan.neighbours else []
    return st


_FUSE: dict = {}  # what the fusion workers inherit (set by fuse_chunks before forking)


def _fuse_chunk(chunk: tuple[int, int]) -> tuple[int, int]:
    return fuse_chunk(_FUSE, chunk)


def fuse_chunk(st: dict, chunk: tuple[int, int]) -> tuple[int, int]:
    """Fuse products a..b: their table from every signal, ranked; one part file (the one per-chunk step of
    every engine). ``st``: ``fusion_state``'s, with ``faiss_threads`` (0: one in a forked worker, else every
    core)."""
    a, b = chunk
    work: WorkDir = st["work"]
    if st["indexes"]:
        import faiss

        faiss.omp_set_num_threads(st.get("faiss_threads") or (1 if mp_child() else usable_cpus()))
    part, table = chunk_table(st["plan"], work, st["catalog"], st["taxonomy"], st["signals"], st["indexes"], (a, b))
    classes, scores = st["model"].rank(table, b - a, FUSED_TOPK)
    save_npz_atomic(part_path(work.fused, a, b), product_ids=part.product_ids, topk_class=classes,
                    topk_score=scores, core_top1=part.top1())
    return a, b


def load_fused(work: WorkDir, n_products: int | None = None, command: str = "etalage submit --shard i/n"
               ) -> dict[str, np.ndarray]:
    """Every fused part of ``work`` in product order; a missing chunk names the command to run."""
    job = work.job(command)
    data = Path(job["data"])
    if n_products is None:
        n_products = len(Catalog.open(data))
    expected = chunk_ranges(n_products, job["chunk"])
    done = list_parts(work.fused)
    missing = [c for c in expected if c not in done]
    if missing:
        a, b = missing[0]
        raise StageOutputError(f"{work.fused}: products {a}-{b} of {data} are not fused yet ({len(missing)} of "
                               f"{len(expected)} chunks missing); run `{command}` for every shard first")
    return load_parts(work.fused, expected)


def merge_submission(work: WorkDir, out: str | Path, taxonomy: Taxonomy, data: str | Path,
                     command: str = "etalage submit --shard i/n") -> dict:
    """Write the submission from the fused parts of every shard (validated, atomic)."""
    from etalage.catalog.submission import write_submission

    catalog = Catalog.open(data)
    fused = load_fused(work, len(catalog), command)
    if not np.array_equal(fused["product_ids"], catalog.product_ids):
        raise DataError(f"{work}: fused products do not match {data} (another file?)")
    best = fused_top1(fused["topk_class"], fused["core_top1"])
    write_submission(out, fused["product_ids"], taxonomy.category_ids[best], expected_ids=catalog.product_ids,
                     taxonomy=taxonomy)
    from etalage.core.ranking import write_ranking_parquet

    write_ranking_parquet(work.fused_parquet, fused["product_ids"], fused["topk_class"], fused["topk_score"], taxonomy,
                          score_name="score")
    return {"submission": str(out), "products": len(best), "ranking": str(work.fused_parquet)}
