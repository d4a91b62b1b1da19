"""``etalage submit``: the Kaggle submission for a test dump, from the full pipeline (a fusion model) or from
the core alone (a run, or the fold runs of one split), whole or in shards, on the engine the job is given."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from etalage.catalog import Catalog
from etalage.chunks import chunk_ranges
from etalage.compute import Compute
from etalage.core.predict import PredictOptions
from etalage.errors import ConfigError
from etalage.pipeline.engine import Engine, LocalEngine
from etalage.pipeline.plan import PredictPlan
from etalage.pipeline.predict import JobSettings, merge_submission, predict_file
from etalage.pipeline.workdir import WorkDir

log = logging.getLogger(__name__)


@dataclass
class SubmitResult:
    submission: Path | None      # None while other shards are still to run
    products: int
    work: WorkDir
    mode: str                    # "fused" or "core"


@dataclass
class SubmitOptions:
    """What a submission takes besides its model: overrides of the fusion model's training dump and
    specialists, the core's test-time augmentation (None: the fusion model's, else none), the classes a
    core-only submission keeps per product, and ``merge`` (only assemble the shards' outputs)."""

    train: Path | None = None
    specialists: Path | None = None
    tta: str | None = None
    topk: int = 20
    merge: bool = False


def shard_command(fusion: str | Path, test: str | Path, out: str | Path, work: WorkDir) -> str:
    return f"etalage submit --fusion {fusion} --data {test} --out {out} --work {work} --shard i/n"


def submit(data: str | Path, out: str | Path, fusion: str | Path | None = None, run=None,
           work: str | Path | None = None, job: JobSettings | None = None, options: SubmitOptions | None = None,
           compute: Compute | None = None, engine: Engine | None = None) -> SubmitResult:
    """With ``fusion``: index -> core -> specialists -> fusion for shard ``job.shard`` into the work folder, then
    (once every shard is done, or with ``options.merge``) the submission. Without: the core alone (``run``: a
    run, or several whose rankings are averaged); its best class per product. ``engine``: where the stages run
    (default: this machine); the same parts and the same submission on every engine.

    >>> submit("test.bson", "submission.csv", fusion="fusion/")
    SubmitResult(submission=PosixPath('submission.csv'), products=1768182, ...)
    """
    job, options, compute = job or JobSettings(), options or SubmitOptions(), compute or Compute()
    engine = engine or LocalEngine(compute.progress)
    work_dir = WorkDir(work) if work else WorkDir.beside(out, data)
    if fusion is None:
        return _submit_core(data, out, run, work, job, options, compute, engine)
    plan = PredictPlan.from_model(fusion, run, options.train, options.specialists)
    plan.check_tta(options.tta)
    command = shard_command(fusion, data, out, work_dir)
    if not options.merge:
        settings = JobSettings(job.shard, job.chunk, job.ocr_cache, command)
        if not predict_file(plan, data, work_dir, settings, compute, engine):
            return SubmitResult(None, 0, work_dir, "fused")
    merged = merge_submission(work_dir, out, plan.taxonomy(), data, command=command)
    return SubmitResult(merged.submission, merged.products, work_dir, "fused")


def _submit_core(data, out, run, work, job: JobSettings, options: SubmitOptions, compute: Compute,
                 engine: Engine) -> SubmitResult:
    """The core alone: the best class of one run, or of the average of several (the fold runs of one split,
    or runs of one fusion's rules), for every product of ``data``."""
    from etalage.catalog.submission import write_submission
    from etalage.core.ensemble import open_models
    from etalage.core.ranking import CoreRanking
    from etalage.pipeline.stages import CoreStage, models_job, single_run

    runs = [run] if isinstance(run, (str, Path)) else list(run or [])
    if not runs:
        raise ConfigError("submit: pass --fusion FUSION (full pipeline) or --run RUN (core only)")
    if options.merge or job.shard != (0, 1):
        raise ConfigError("submit: --shard and --merge need --fusion (core only: `etalage predict --shard`)")
    models = open_models(runs)
    catalog = Catalog.open(data, progress=compute.progress, cache_dir=compute.cache_dir)
    pred_dir = WorkDir(work) if work else WorkDir(Path(out).with_name(Path(out).stem + "_core_pred"))
    core_dir = pred_dir.path if single_run(models) else pred_dir.core
    stage = CoreStage(catalog, models_job(models, core_dir, pred_dir.core_run, PredictOptions(options.topk),
                                          options.tta or "none", job.chunk, f"etalage submit --run ... --data {data}"),
                      compute, f"core predictions -> {core_dir}")
    stage.claim()
    engine.run([stage], chunk_ranges(len(catalog), job.chunk), f"predict {Path(data).name}").save(pred_dir.path)
    ranking = CoreRanking.load(core_dir)
    tax = models[0].runs[0].taxonomy()
    write_submission(out, ranking.product_ids, tax.category_ids[ranking.top1()], expected_ids=catalog.product_ids,
                     taxonomy=tax)
    return SubmitResult(Path(out), len(ranking), pred_dir, "core")
