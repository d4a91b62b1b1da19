"""End-to-end jobs: the submission pipeline and the demo on the synthetic catalogue.

Each stage writes its outputs atomically and is skipped when they are already there, so a killed
``etalage demo`` or ``etalage submit`` picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.io import atomic_write
from etalage.catalog.submission import write_submission

log = logging.getLogger(__name__)


def submit_core(run: str | Path, test: str | Path, out: str | Path, pred_dir: str | Path | None = None,
                topk: int = 20, tta: str = "none", batch_size: int = 64, device: str = "auto",
                workers: int | None = None, progress: bool = True) -> dict:
    """Core-only submission: predict every test product, take its top class, validate, write."""
    from etalage.core.predict import CorePredictor

    catalog = Catalog.open(test, progress=progress)
    pred_dir = Path(pred_dir) if pred_dir else Path(out).with_name(Path(out).stem + "_core_pred")
    predictor = CorePredictor(run, device=device, batch_size=batch_size, workers=workers, tta=tta)
    ranking = predictor.predict_catalog(catalog, pred_dir, topk=topk, progress=progress)
    tax = predictor.taxonomy
    categories = tax.category_ids[ranking.top1()]
    write_submission(out, ranking.product_ids, categories, expected_ids=catalog.product_ids, taxonomy=tax)
    return {"submission": str(out), "products": len(ranking), "predictions": str(pred_dir)}


def stage_top1(work: Path, taxonomy: Taxonomy, specialist_names: list[str]) -> dict[str, np.ndarray]:
    """Product top-1 (class index) of each stage, from a finished ``submit`` work folder: the core alone,
    the core with its specialists (where the core places the product in a specialist's level-1 group,
    the specialist's best class wins) and fusion."""
    from etalage.fusion.stages import load_fused
    from etalage.specialists.runner import SpecialistRanking

    fused = load_fused(work)
    core = fused["core_top1"].astype(np.int32)
    with_specs = core.copy()
    for name in specialist_names:
        spec = SpecialistRanking.load(work / "specialists" / name)
        best = spec.topk_class[:, 0]
        agree = taxonomy.level1_of[best] == taxonomy.level1_of[core[spec.rows]]
        with_specs[spec.rows[agree]] = best[agree]
    return {"core": core, "core+specialists": with_specs, "fusion": fused["topk_class"][:, 0].astype(np.int32)}


def run_demo(out: str | Path, products: int = 3000, minutes: float = 5.0, seed: int = 0,
             backbone: str = "efficientnet_lite0", weights: str | None = "imagenet", picture_size: int = 112,
             crop: int = 96, batch_size: int = 32, specialists: tuple[str, ...] = ("books", "music"),
             ocr_engine: str = "easyocr", specialist_train: int = 150, val_fraction: float = 0.15,
             progress: bool = True, report=print) -> dict:
    """synth -> index -> train (time-boxed) -> specialists -> fusion fit -> full submission -> score,
    under ``out``. Every stage is skipped when its outputs are there (a rerun resumes)."""
    from etalage.catalog.bsonindex import load_md5
    from etalage.catalog.submission import read_id_category_csv
    from etalage.catalog.synth import SynthConfig, write_synthetic_catalogue
    from etalage.core.train import TrainConfig, train
    from etalage.fusion.stages import PredictPlan, ensure_indexed, fit_fusion, merge_submission, predict_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    steps = 7

    def step(i: int, text: str) -> None:
        report(f"[{i}/{steps}] {text}")

    t0 = time.perf_counter()
    cfg = SynthConfig(products=products, seed=seed)
    stamp = out / "synth.json"
    if not (stamp.exists() and json.loads(stamp.read_text()).get("config") == asdict(cfg)):
        step(1, f"synth: {products} products -> {out}")
        summary = write_synthetic_catalogue(out, cfg, progress=progress)
        with atomic_write(stamp, "w") as fh:
            json.dump(summary, fh, indent=2)
    else:
        step(1, f"synth: reusing {out}")
    timings["synth_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tax = Taxonomy.load(out / "category_names.csv")
    for name in ("train.bson", "test.bson"):
        ensure_indexed(out / name, tax)
    step(2, "index: train.bson, test.bson (+ picture MD5s)")
    timings["index_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run = out / "run"
    tcfg = TrainConfig(train=str(out / "train.bson"), out=str(run), backbone=backbone, weights=weights,
                       picture_size=picture_size, crop=crop, batch_size=batch_size, epochs=20.0, max_minutes=minutes,
                       val_fraction=val_fraction, seed=seed)
    if (run / "model.pt").exists():
        step(3, f"train: reusing {run}")
    else:
        resume = (run / "checkpoint.pt").exists()
        step(3, f"train: {backbone} for at most {minutes:g} min -> {run}" + (" (resuming)" if resume else ""))
        train(tcfg, resume=resume, progress=progress)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    spec_dir = None
    fitted_rows = []
    if specialists:
        from etalage.ocr import load_engine
        from etalage.ocr.cache import OcrCache
        from etalage.specialists.runner import fit_specialists

        step(4, f"specialists: fit {', '.join(specialists)} on up to {specialist_train} training products each "
                f"(covers read with {ocr_engine}; the core's validation products left out)")
        spec_dir = out / "specialists"
        with OcrCache(out / "ocr-cache.sqlite") as cache:
            fitted_rows = fit_specialists(Catalog.open(out / "train.bson"), tax, list(specialists), spec_dir,
                                          load_engine(ocr_engine), cache, load_md5(out / "train.bson"),
                                          exclude=np.load(run / "val_positions.npy"), max_train=specialist_train,
                                          seed=seed, progress=progress)
    else:
        step(4, "specialists: none")
    timings["specialists_fit_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fusion_dir = out / "fusion"
    if (fusion_dir / "fit_report.json").exists():
        step(5, f"fusion fit: reusing {fusion_dir}")
        fit = json.loads((fusion_dir / "fit_report.json").read_text())
    else:
        step(5, f"fusion fit: LightGBM on the core's validation products -> {fusion_dir}")
        fit = fit_fusion(run, out / "train.bson", fusion_dir, specialists=spec_dir, progress=progress,
                         report=lambda m: report("      " + m))
    timings["fusion_fit_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    step(6, "submit: index -> core -> specialists -> fusion -> submission.csv (work: submission_work)")
    work = out / "submission_work"
    plan = PredictPlan.from_model(fusion_dir)
    predict_file(plan, out / "test.bson", work, command=f"etalage submit --fusion {fusion_dir} --test "
                 f"{out / 'test.bson'} --out {out / 'submission.csv'}", progress=progress,
                 report=lambda m: report("      " + m))
    merge_submission(work, out / "submission.csv", tax, out / "test.bson")
    timings["submit_s"] = time.perf_counter() - t0

    ids, cats = read_id_category_csv(out / "test_labels.csv")
    test_ids = Catalog.open(out / "test.bson").product_ids
    order = np.argsort(ids)
    truth = tax.indices_of(cats[order][np.searchsorted(ids[order], test_ids)])
    stages = stage_top1(work, tax, list(plan.specialist_names))
    scores = {k: float((v == truth).mean()) for k, v in stages.items()}
    l1 = tax.level1_of[truth]
    per_level1 = {tax.level1_names[g]: {"products": int((l1 == g).sum()),
                                        **{k: float((v[l1 == g] == truth[l1 == g]).mean()) for k, v in stages.items()}}
                  for g in np.unique(l1)}
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    result = {**scores, "per_level1": per_level1, "test_products": len(truth),
              "val_top1_last_epoch": metrics[-1]["val_top1"] if metrics else None, "epochs": len(metrics),
              "fusion_fit": {k: fit[k] for k in ("kind", "products", "candidate_coverage", "valid_top1_by_kind")},
              "specialists": [{k: r[k] for k in ("specialist", "groups", "train_products")} for r in fitted_rows],
              "timings": timings}
    with atomic_write(out / "report.json", "w") as fh:
        json.dump(result, fh, indent=2)
    step(7, "score (product top-1 on the synthetic test set):")
    report(f"  {'stage':<22}{'top-1':>8}")
    for k, v in scores.items():
        report(f"  {k:<22}{v:>8.4f}")
    report(f"  {'level-1 group':<30}{'products':>9}" + "".join(f"{k:>18}" for k in stages))
    for name, row in sorted(per_level1.items(), key=lambda kv: -kv[1]["products"]):
        report(f"  {name:<30}{row['products']:>9}" + "".join(f"{row[k]:>18.4f}" for k in stages))
    report(f"outputs: {out / 'submission.csv'}, {out / 'test_labels.csv'}, {out / 'category_names.csv'}, "
           f"{out / 'report.json'}")
    return result
