"""The second level over several core runs, on real photos (dev parts only; the held-out parts are never
read).

- grocery: K fold runs of the default core (``train --folds K``, each time-boxed) on grocery-dev's official
  train photos; fusion over the fold set with embedding neighbours, fitted out of fold on every training
  product; scored on grocery-dev's official val photos beside each fold run alone and the plain average
  of the K runs (what the 2017 teams' "average of several CNNs" was).
- fashion: two different core runs sharing their validation products (two backbones, one split), fusion
  over both, scored on the fashion dev split's test part beside the better run.

Each result also gives the fusion's own ablation (the embedding neighbours' row) and the neighbour query's
cost against the fusion stage it feeds. Writes ``benchmarks/results/ensemble_SET.json``. Run nothing heavy beside
it (the runs are time-boxed); ``--lock`` is held throughout.

    python benchmarks/bench_ensemble.py --set grocery --minutes 6 --folds 4
    python benchmarks/bench_ensemble.py --set fashion --minutes 12
"""

from __future__ import annotations

import argparse
import fcntl
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT.parent / "exp" / "ensemble"


def _train(train: Path, out: Path, minutes: float, **settings) -> None:
    from etalage.core.config import TrainConfig
    from etalage.core.rundir import RunDir
    from etalage.core.train import train as train_core
    from etalage.core.train import train_folds

    cfg = TrainConfig(train=str(train), out=str(out), max_minutes=minutes, **settings)
    if cfg.folds:
        train_folds(cfg, progress=False)
    elif not RunDir(out).finished:
        train_core(cfg, resume=RunDir(out).checkpoint_file.exists(), progress=False)


def _top1(submission: Path, labels: Path) -> float:
    from etalage.catalog.submission import score_submission

    return score_submission(submission, labels).accuracy


def _core_alone(run, test: Path, labels: Path, out: Path) -> float:
    from etalage.compute import Compute
    from etalage.pipeline.submit import submit

    submit(test, out, run=run, compute=Compute(progress=False))
    return _top1(out, labels)


def _neighbour_cost(fusion: Path, work: Path, test: Path, train: Path) -> dict:
    """Seconds of the neighbour query over the test products' embeddings, against the whole fusion stage
    (table + ranking) of the same chunks with it."""
    from etalage.catalog import Catalog
    from etalage.chunks import chunk_ranges
    from etalage.fusion.neighbours import load_indexes, query_hits
    from etalage.pipeline.plan import PredictPlan
    from etalage.pipeline.stages import FusionInputs, chunk_table, run_embeddings, training_signals
    from etalage.pipeline.workdir import WorkDir

    plan = PredictPlan.from_model(fusion)
    w = WorkDir(work)
    catalog = Catalog.open(test, md5=True)
    tax = plan.taxonomy()
    signals = training_signals(Catalog.open(train, tax, md5=True), tax, plan.ks)
    indexes = load_indexes(plan.model, len(plan.models[0].runs))
    from etalage.fusion.model import FusionModel

    model = FusionModel.load(plan.model)
    t_query = t_fuse = 0.0
    for a, b in chunk_ranges(len(catalog), json.loads(w.stamp_file.read_text())["chunk"]):
        t0 = time.perf_counter()
        query_hits(indexes, run_embeddings(plan.models, w.core_run, w.core, (a, b)), plan.neighbours)
        t1 = time.perf_counter()
        _, table = chunk_table(FusionInputs(plan, w, catalog, tax, signals), indexes, (a, b))
        model.rank(table, b - a, 5)
        t_fuse += time.perf_counter() - t1
        t_query += t1 - t0
    return {"query_s": t_query, "fusion_stage_s": t_fuse, "query_over_fusion": t_query / max(t_fuse, 1e-9),
            "test_products": len(catalog), "index_products": int(len(indexes[0].classes))}


def run_set(name: str, minutes: float, folds: int, neighbours: int, without: tuple[str, ...] = ()) -> dict:
    from bench_core_recipe import prepare

    from etalage.compute import Compute
    from etalage.fusion.report import write_report
    from etalage.pipeline.fit import FusionFitConfig, fit_fusion
    from etalage.pipeline.submit import submit

    files = prepare(name)
    work = WORK / name
    train, test, labels = files["train"], files["test"], files["labels"]
    result: dict = {"set": name, "minutes_per_run": minutes, "neighbours": neighbours}
    t0 = time.perf_counter()
    if name == "grocery":
        runs = [work / "folds"]
        _train(train, runs[0], minutes, folds=folds, fold=0)
        from etalage.core.train import fold_runs

        result["fold_runs"] = {f"fold{i}": _core_alone(r.path, test, labels, work / f"core_fold{i}.csv")
                               for i, r in enumerate(fold_runs(runs[0], folds))}
        result["best_single_run"] = max(result["fold_runs"].values())
        result["plain_average"] = _core_alone(runs[0], test, labels, work / "core_average.csv")
    else:
        runs = [work / "lite0", work / "lite1"]
        _train(train, runs[0], minutes, val_fraction=0.2)
        _train(train, runs[1], minutes, val_fraction=0.2, backbone="efficientnet_lite1")
        result["runs"] = {r.name: _core_alone(r, test, labels, work / f"core_{r.name}.csv") for r in runs}
        result["best_single_run"] = max(result["runs"].values())
        result["plain_average"] = _core_alone(runs, test, labels, work / "core_average.csv")
    result["training_s"] = time.perf_counter() - t0
    fusion = work / "fusion"
    t1 = time.perf_counter()
    if not (fusion / "fit_report.json").exists():
        # the real sets' _ids are listing numbers given category by category: fit warns and, unless told
        # --without id, fits a model without id features too; submit chooses by how the test ids interleave
        fit_fusion(FusionFitConfig(runs, train, fusion, neighbours=neighbours, without=without),
                   Compute(progress=False))
    result["fit"] = {k: v for k, v in json.loads((fusion / "fit_report.json").read_text()).items() if k != "importance"}
    result["fit_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    submit(test, work / "fused.csv", fusion=fusion, work=work / "fused_work", compute=Compute(progress=False))
    result["submit_s"] = time.perf_counter() - t2
    id_prior = work / "fused_work" / "id_prior.json"
    result["id_prior"] = json.loads(id_prior.read_text()) if id_prior.exists() else "no model without id features"
    result["fusion"] = _top1(work / "fused.csv", labels)
    result["over_best_single_run"] = result["fusion"] - result["best_single_run"]
    result["over_plain_average"] = result["fusion"] - result["plain_average"]
    if neighbours:
        result["neighbour_cost"] = _neighbour_cost(fusion, work / "fused_work", test, train)
    rep = write_report(fusion, work / "fusion_report.md", folds=3, progress=False)
    result["ablation"] = rep["ablation"]
    result["baselines_out_of_fold"] = rep.get("baselines")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, choices=("grocery", "fashion"))
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget of each run")
    ap.add_argument("--folds", type=int, default=4, help="grocery: fold runs")
    ap.add_argument("--neighbours", type=int, default=10)
    ap.add_argument("--without", default="", help="signal groups fusion is fitted without (e.g. id); default: none, "
                                                  "fit decides about the id prior")
    ap.add_argument("--lock", default="/tmp/etalage-cpu.lock")
    args = ap.parse_args(argv)
    from etalage.files import write_json_atomic

    with open(args.lock, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = run_set(args.set, args.minutes, args.folds, args.neighbours,
                         tuple(w for w in args.without.split(",") if w))
    write_json_atomic(RESULTS / f"ensemble_{args.set}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("fit", "ablation")}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
