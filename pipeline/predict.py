"""Predicting a dump: the core alone (``etalage predict``) or every stage of a fusion model (``etalage submit``,
``etalage fusion predict``), in resumable chunks and shards on the engine the job is given, and the merge of the
fused chunks into a submission.

1. index + picture MD5s of the dump and of the training dump (skipped when up to date), in this process;
2.-4. the stages (``pipeline/stages.py``: core, specialists, fusion) over the shard's chunks, on the engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog, Taxonomy
from etalage.chunks import DEFAULT_CHUNK, chunk_ranges, list_parts, load_parts, shard_chunk_ranges
from etalage.compute import Compute
from etalage.core.predict import PredictOptions
from etalage.core.ranking import CoreRanking
from etalage.core.rundir import RunDir
from etalage.errors import ConfigError, DataError, StageOutputError
from etalage.fusion.model import fused_top1
from etalage.ocr.cache import default_cache_path
from etalage.options import check_choice
from etalage.pipeline.engine import Engine
from etalage.pipeline.plan import PredictPlan
from etalage.pipeline.stages import (
    CoreJob,
    CoreStage,
    CoreTarget,
    FusionInputs,
    FusionStage,
    SpecialistsJob,
    SpecialistsStage,
    models_job,
    specialist_lines,
    training_signals,
)
from etalage.pipeline.workdir import WorkDir
from etalage.resources import peak_rss_mb

log = logging.getLogger(__name__)


@dataclass
class JobSettings:
    """How a prediction job over a dump runs: the ``shard`` ``(i, n)`` it does, the products per resumable
    part (``chunk``; shards are whole parts), the OCR cache (None: the default beside the dump), and the command
    that runs it (quoted when a shard is still missing)."""

    shard: tuple[int, int] = (0, 1)
    chunk: int = DEFAULT_CHUNK
    ocr_cache: Path | None = None
    command: str = "etalage submit"
    id_prior: str = "auto"  # the product-id prior: auto (where the test ids interleave), with, without (--with id)


def predict_core(run: str | Path, data: str | Path, out: str | Path, options: PredictOptions, tta: str = "none",
                 shard: tuple[int, int] = (0, 1), compute: Compute | None = None, engine: Engine | None = None
                 ) -> CoreRanking | None:
    """``etalage predict``: core predictions of shard ``i/n`` of ``data`` into ``out`` (``out/part-*.npz``); once
    every shard is done, also ``out/ranking.parquet``. Returns the ``CoreRanking`` when complete, else None."""
    from etalage.core.ranking import write_ranking_parquet
    from etalage.pipeline.engine import LocalEngine

    compute = compute or Compute()
    engine = engine or LocalEngine(compute.progress)
    catalog = Catalog.open(data, progress=compute.progress, cache_dir=compute.cache_dir)
    run = RunDir(run)
    stage = CoreStage(catalog, CoreJob([CoreTarget(run, Path(out), options.embedding)], options, tta), compute)
    stage.claim()
    engine.run([stage], shard_chunk_ranges(len(catalog), DEFAULT_CHUNK, shard), f"predict {Path(data).name}"
               ).save(out)
    try:
        ranking = CoreRanking.load(out)
    except StageOutputError:
        return None
    write_ranking_parquet(Path(out) / "ranking.parquet", ranking.product_ids, ranking.topk_class,
                          ranking.topk_prob.astype(np.float32), run.taxonomy())
    return ranking


@dataclass
class PredictionJob:
    """Stage 1 done: the dump and the training dump indexed with their picture hashes, the work folder claimed."""

    data: Path
    taxonomy: Taxonomy
    catalog: Catalog
    train: Catalog
    shard_label: str  # " (shard i/n)" for log lines, or ""


def open_prediction_job(plan: PredictPlan, data: str | Path, work: WorkDir, settings: JobSettings,
                        compute: Compute) -> PredictionJob:
    """Stage 1 of every engine: the work folder claimed for this job, the test and training dumps indexed with
    their picture hashes. A model whose specialists are not at hand is refused first, before any of that."""
    plan.check_specialists()
    data = Path(data)
    work.claim(data, str(plan.model), plan.runs_label(), settings.chunk)
    taxonomy = plan.taxonomy()
    i, n = settings.shard
    log.info("[1/4] index + picture hashes: %s, %s", data.name, plan.train.name)
    catalog = Catalog.open(data, md5=True, progress=compute.progress, cache_dir=compute.cache_dir)
    train = Catalog.open(plan.train, taxonomy, md5=True, progress=compute.progress, cache_dir=compute.cache_dir)
    return PredictionJob(data, taxonomy, catalog, train, f" (shard {i}/{n})" if n > 1 else "")


def prediction_stages(plan: PredictPlan, job: PredictionJob, work: WorkDir, settings: JobSettings,
                      compute: Compute) -> list:
    """The core, specialists (when the model has some) and fusion stages of a fused prediction job, claimed."""
    options = PredictOptions(plan.topk, 5, bool(plan.neighbours))
    core = CoreStage(job.catalog, models_job(plan.models, work.core, work.core_run, options, plan.tta,
                                             settings.chunk, settings.command), compute,
                     f"[2/4] core predictions{job.shard_label} -> {work.core}")
    core.claim()
    stages = [core]
    if plan.specialist_names:
        cache = settings.ocr_cache or default_cache_path(job.data, compute.cache_dir)
        spec = SpecialistsStage(job.catalog, SpecialistsJob(plan.specialists, plan.specialist_names, Path(cache),
                                                            work.core, work.specialists, None, settings.chunk,
                                                            settings.command), job.taxonomy,
                                f"[3/4] specialists {', '.join(plan.specialist_names)}{job.shard_label} -> "
                                f"{work.specialists}")
        spec.claim()
        stages.append(spec)
    else:
        log.info("[3/4] specialists: none in this fusion model")
    signals = training_signals(job.train, job.taxonomy, plan.ks)
    model_dir = id_prior_choice(plan, job.catalog.product_ids, job.train.product_ids, settings.id_prior, work)
    stages.append(FusionStage(FusionInputs(plan, work, job.catalog, job.taxonomy, signals, model_dir),
                              f"[4/4] fusion{job.shard_label} -> {work.fused}"))
    return stages


def id_prior_choice(plan: PredictPlan, test_ids: np.ndarray, train_ids: np.ndarray, asked: str = "auto",
                    work: WorkDir | None = None) -> Path:
    """Which reranker fuses these products: the plan's, with its id features, where the test ids interleave with the
    training ids as fusion's own products' did (at least half as often), else the one fitted without them (there
    when the training ids looked numbered category by category). ``asked``: ``with`` / ``without`` force it. Said on
    the terminal and in ``WORK/id_prior.json``."""
    from etalage.files import write_json_atomic
    from etalage.fusion.signals import id_interleave_share

    check_choice(asked, ("auto", "with", "without"), "the id prior (--with id / --without id)")
    alternative = plan.model.without_id
    if not alternative.exists:
        if asked == "without":
            raise ConfigError(f"{plan.model} has no model without id features (its training ids did not look "
                              f"ordered); refit with `etalage fusion fit --without id`")
        return plan.model.path
    share = id_interleave_share(test_ids, train_ids)
    fit_share = plan.id_interleave if plan.id_interleave is not None else 1.0
    use_id = asked == "with" or (asked == "auto" and share >= 0.5 * fit_share)
    why = "as asked" if asked != "auto" else (f"{100 * share:.0f}% of the test ids interleave with the training ids, "
                                              f"{100 * fit_share:.0f}% of fusion's own products' did")
    log.log(logging.INFO if work is not None else logging.DEBUG, "      fusion %s the product-id prior (%s)%s",
            "uses" if use_id else "does not use", why,
            "" if use_id else f": the model fitted without id features, {alternative}")
    if work is not None:
        write_json_atomic(work.path / "id_prior.json", {"uses_id": use_id, "asked": asked, "test_interleave": share,
                                                        "fit_interleave": fit_share, "model": str(
                                                            plan.model.path if use_id else alternative.path)})
    return plan.model.path if use_id else alternative.path


def predict_file(plan: PredictPlan, data: str | Path, work: WorkDir, settings: JobSettings | None = None,
                 compute: Compute | None = None, engine: Engine | None = None) -> bool:
    """Stages 1-4 for shard ``settings.shard`` of ``data`` into ``work``, on ``engine`` (default: this machine).
    True when every chunk of every shard is fused (the merge can run)."""
    from etalage.fusion.model import FusionModel
    from etalage.pipeline.engine import LocalEngine

    settings, compute = settings or JobSettings(), compute or Compute()
    engine = engine or LocalEngine(compute.progress)
    job = open_prediction_job(plan, data, work, settings, compute)
    FusionModel.load(plan.model)  # a damaged model is an error here, before any stage runs
    stages = prediction_stages(plan, job, work, settings, compute)
    log.debug("peak RSS so far %.0f MB", peak_rss_mb())
    chunks = shard_chunk_ranges(len(job.catalog), settings.chunk, settings.shard)
    scored: dict[str, int] = {}
    failed: dict[str, int] = {}

    def count(stage, rows, report) -> None:
        for name, n in report.get("scored", {}).items():
            scored[name] = scored.get(name, 0) + n
        for name in report.get("failed", ()):
            failed[name] = failed.get(name, 0) + 1

    stats = engine.run(stages, chunks, f"submit ({engine.name})", count)
    for line in specialist_lines(scored, failed):
        log.info("      %s", line)
    stats.save(work.path)
    log.debug("peak RSS so far %.0f MB", peak_rss_mb())
    done = set(list_parts(work.fused))
    return all(c in done for c in chunk_ranges(len(job.catalog), settings.chunk))


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


@dataclass
class Merged:
    submission: Path
    products: int
    ranking: Path


def merge_submission(work: WorkDir, out: str | Path, taxonomy: Taxonomy, data: str | Path,
                     command: str = "etalage submit --shard i/n") -> Merged:
    """Write the submission from the fused parts of every shard (validated, atomic), and the fused ranking as
    Parquet (``WORK/fused.parquet``)."""
    from etalage.catalog.submission import write_submission
    from etalage.core.ranking import write_ranking_parquet

    catalog = Catalog.open(data)
    fused = load_fused(work, len(catalog), command)
    if not np.array_equal(fused["product_ids"], catalog.product_ids):
        raise DataError(f"{work}: fused products do not match {data} (another file?)")
    best = fused_top1(fused["topk_class"], fused["core_top1"])
    write_submission(out, fused["product_ids"], taxonomy.category_ids[best], expected_ids=catalog.product_ids,
                     taxonomy=taxonomy)
    write_ranking_parquet(work.fused_parquet, fused["product_ids"], fused["topk_class"], fused["topk_score"], taxonomy,
                          score_name="score")
    return Merged(Path(out), len(best), work.fused_parquet)
