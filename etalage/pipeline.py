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

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.bsonindex import build_index, hash_pictures, md5_path_for
from etalage.catalog.io import atomic_write
from etalage.catalog.submission import score_submission, write_submission

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


def run_demo(out: str | Path, products: int = 3000, minutes: float = 6.0, seed: int = 0,
             backbone: str = "efficientnet_lite0", weights: str | None = "imagenet", picture_size: int = 112,
             crop: int = 96, batch_size: int = 32, progress: bool = True, report=print) -> dict:
    """synth -> index -> train (time-boxed) -> predict -> submit -> score, under ``out``."""
    from etalage.catalog.synth import SynthConfig, write_synthetic_catalogue
    from etalage.core.train import TrainConfig, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    cfg = SynthConfig(products=products, seed=seed)
    stamp = out / "synth.json"
    if not (stamp.exists() and json.loads(stamp.read_text()).get("config") == asdict(cfg)):
        report(f"[1/5] synth: {products} products -> {out}")
        summary = write_synthetic_catalogue(out, cfg, progress=progress)
        with atomic_write(stamp, "w") as fh:
            json.dump(summary, fh, indent=2)
    else:
        report(f"[1/5] synth: reusing {out}")
    timings["synth_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tax = Taxonomy.load(out / "category_names.csv")
    for name in ("train.bson", "test.bson"):
        idx = build_index(out / name, known_category_ids=tax.category_ids)
        if not md5_path_for(out / name).exists():
            hash_pictures(out / name, index=idx)
    report("[2/5] index: train.bson, test.bson (+ picture MD5s)")
    timings["index_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run = out / "run"
    tcfg = TrainConfig(train=str(out / "train.bson"), out=str(run), backbone=backbone, weights=weights,
                       picture_size=picture_size, crop=crop, batch_size=batch_size, epochs=20.0, max_minutes=minutes,
                       val_fraction=0.1, seed=seed)
    if (run / "model.pt").exists():
        report(f"[3/5] train: reusing {run}")
    else:
        resume = (run / "checkpoint.pt").exists()
        report(f"[3/5] train: {backbone} for at most {minutes:g} min -> {run}" + (" (resuming)" if resume else ""))
        train(tcfg, resume=resume, progress=progress)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report("[4/5] predict + submit: test.bson -> submission.csv")
    submit_core(run, out / "test.bson", out / "submission.csv", pred_dir=out / "pred_test", progress=progress)
    timings["predict_submit_s"] = time.perf_counter() - t0

    score = score_submission(out / "submission.csv", out / "test_labels.csv", tax)
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    result = {"core": score.accuracy, "per_level1": {k: v[0] for k, v in score.per_level1.items()},
              "test_products": score.n, "val_top1_last_epoch": metrics[-1]["val_top1"] if metrics else None,
              "epochs": len(metrics), "timings": timings}
    with atomic_write(out / "report.json", "w") as fh:
        json.dump(result, fh, indent=2)
    report("[5/5] score (product top-1 on the synthetic test set):")
    report(f"  {'stage':<22}{'top-1':>8}")
    report(f"  {'core':<22}{score.accuracy:>8.4f}")
    report(f"  {'level-1 group':<34}{'top-1':>8}{'products':>10}")
    for name, (acc, n) in sorted(score.per_level1.items(), key=lambda kv: -kv[1][1]):
        report(f"  {name:<34}{acc:>8.4f}{n:>10}")
    report(f"outputs: {out / 'submission.csv'}, {out / 'test_labels.csv'}, {out / 'category_names.csv'}, "
           f"{out / 'report.json'}")
    return result

