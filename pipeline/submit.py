"""``etalage submit``: the Kaggle submission for a test dump, from the full pipeline (a fusion model)
or from the core alone (a run), whole or in shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from etalage.catalog import Catalog
from etalage.chunks import DEFAULT_CHUNK
from etalage.errors import ConfigError
from etalage.options import RUN_ENGINES, check_choice
from etalage.pipeline.stages import PredictPlan, merge_submission, predict_file
from etalage.pipeline.workdir import WorkDir


@dataclass
class SubmitResult:
    submission: Path | None      # None while other shards are still to run
    products: int
    work: WorkDir
    mode: str                    # "fused" or "core"


def shard_command(fusion: str | Path, test: str | Path, out: str | Path, work: WorkDir) -> str:
    return f"etalage submit --fusion {fusion} --data {test} --out {out} --work {work} --shard i/n"


def submit(test: str | Path, out: str | Path, fusion: str | Path | None = None, run: str | Path | None = None,
           train: str | Path | None = None, specialists: str | Path | None = None, work: str | Path | None = None,
           shard: tuple[int, int] = (0, 1), merge: bool = False, tta: str | None = None, topk: int = 20,
           ocr_cache: str | Path | None = None, chunk: int = DEFAULT_CHUNK, device: str = "auto", batch_size: int = 64,
           workers: int | None = None, trust_pickle: bool = False, progress: bool = True, engine: str = "local",
           ray=None) -> SubmitResult:
    """With ``fusion``: index -> core -> specialists -> fusion for shard ``i/n`` into the work folder,
    then (once every shard is done, or with ``merge``) the submission. Without: the core alone
    (``run``; its top class per product). ``engine``: ``local`` (this machine, stage after stage) or
    ``ray`` (a Ray Data pipeline on a cluster; ``ray``: its ``RaySettings``): the same parts, the same
    submission."""
    work_dir = WorkDir(work) if work else WorkDir.beside(out, test)
    check_choice(engine, RUN_ENGINES, "--engine")
    if fusion is None:
        return _submit_core(test, out, run, work, tta or "none", topk, device, batch_size, workers, shard, merge,
                            trust_pickle, progress, engine, ray)
    plan = PredictPlan.from_model(fusion, run, train, specialists)
    plan.check_tta(tta)
    command = shard_command(fusion, test, out, work_dir)
    if not merge:
        if engine == "ray":
            from etalage.pipeline.ray_engine import predict_file_ray as predict
        else:
            predict = predict_file
        complete = predict(plan, test, work_dir, shard=shard, command=command, ocr_cache=ocr_cache,
                           device=device, batch_size=batch_size, workers=workers, chunk=chunk,
                           trust_pickle=trust_pickle, progress=progress, **({"ray": ray} if engine == "ray" else {}))
        if not complete:
            return SubmitResult(None, 0, work_dir, "fused")
    res = merge_submission(work_dir, out, plan.taxonomy(), test, command=command)
    return SubmitResult(Path(res["submission"]), res["products"], work_dir, "fused")


def _submit_core(test, out, run, work, tta, topk, device, batch_size, workers, shard, merge, trust_pickle,
                 progress, engine="local", ray=None) -> SubmitResult:
    """The core alone: the best class of one run, or of the average of several (the fold runs of one
    split, or runs of one fusion's rules), for every product of ``test``."""
    from etalage.catalog.submission import write_submission
    from etalage.chunks import DEFAULT_CHUNK
    from etalage.core.ensemble import open_models
    from etalage.core.ranking import CoreRanking
    from etalage.pipeline.cores import predict_models, single_run

    runs = [run] if isinstance(run, (str, Path)) else list(run or [])
    if not runs:
        raise ConfigError("submit: pass --fusion FUSION (full pipeline) or --run RUN (core only)")
    if merge or shard != (0, 1):
        raise ConfigError("submit: --shard and --merge need --fusion (core only: `etalage predict --shard`)")
    models = open_models(runs)
    catalog = Catalog.open(test, progress=progress)
    pred_dir = WorkDir(work) if work else WorkDir(Path(out).with_name(Path(out).stem + "_core_pred"))
    core_dir = pred_dir.path if single_run(models) else pred_dir.core
    kw = dict(device=device, batch_size=batch_size, workers=workers, trust_pickle=trust_pickle)
    producer = f"etalage submit --run ... --data {test}"
    if engine == "ray":
        from etalage.pipeline.ray_engine import predict_models_ray

        predict_models_ray(models, catalog, core_dir, pred_dir.core_run, DEFAULT_CHUNK, topk, tta, False, kw, producer,
                           progress, ray)
    else:
        predict_models(models, catalog, core_dir, pred_dir.core_run, (0, 1), DEFAULT_CHUNK, topk, tta, False, kw,
                       producer, progress)
    ranking = CoreRanking.load(core_dir)
    tax = models[0].runs[0].taxonomy()
    write_submission(out, ranking.product_ids, tax.category_ids[ranking.top1()], expected_ids=catalog.product_ids,
                     taxonomy=tax)
    return SubmitResult(Path(out), len(ranking), pred_dir, "core")
