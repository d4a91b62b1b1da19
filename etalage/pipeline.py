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


def demo_specialists(out: Path, tax: Taxonomy, names: list[str], ocr_engine: str, max_train: int, seed: int,
                     progress: bool) -> list[dict]:
    """Fit each specialist on (up to ``max_train``) training products of its groups and compare it
    with the core on the test products of those groups (by the answer key)."""
    import numpy as np

    from etalage.catalog.bsonindex import load_md5
    from etalage.catalog.submission import read_id_category_csv
    from etalage.ocr import load_engine
    from etalage.ocr.cache import OcrCache
    from etalage.specialists import create_specialist, safe_predict
    from etalage.specialists.readings import read_products

    train, test = Catalog.open(out / "train.bson"), Catalog.open(out / "test.bson")
    train_labels = tax.indices_of(train.category_ids)
    ids, cats = read_id_category_csv(out / "test_labels.csv")
    test_labels = tax.indices_of(cats)
    sub_ids, sub_cats = read_id_category_csv(out / "submission.csv")
    core_pred = tax.indices_of(sub_cats[np.argsort(sub_ids)][np.searchsorted(np.sort(sub_ids), ids)])
    engine = load_engine(ocr_engine)
    rng = np.random.default_rng(seed)
    rows = []
    with OcrCache(out / "ocr-cache.sqlite") as cache:
        for name in names:
            spec = create_specialist(name)
            own = spec.classes(tax)
            pos = np.flatnonzero(np.isin(train_labels, own))
            if len(pos) < 2:
                continue
            pos = np.sort(rng.choice(pos, min(max_train, len(pos)), replace=False))
            spec.fit(read_products(train, pos, engine, cache, load_md5(out / "train.bson"), progress=progress),
                     train_labels[pos], tax)
            spec.save(out / "specialists" / name)
            tpos = np.flatnonzero(np.isin(test_labels, own))
            result = safe_predict(spec, read_products(test, tpos, engine, cache, load_md5(out / "test.bson"),
                                                      progress=progress))
            if result is None or not len(tpos):
                continue
            top = result.topk(1)[0][:, 0]
            rows.append({"specialist": name, "group": "+".join(spec.groups), "train_products": len(pos),
                         "test_products": len(tpos), "core_top1": float((core_pred[tpos] == test_labels[tpos]).mean()),
                         "specialist_top1": float((top == test_labels[tpos]).mean())})
    return rows


def run_demo(out: str | Path, products: int = 3000, minutes: float = 5.0, seed: int = 0,
             backbone: str = "efficientnet_lite0", weights: str | None = "imagenet", picture_size: int = 112,
             crop: int = 96, batch_size: int = 32, specialists: tuple[str, ...] = ("books", "music"),
             ocr_engine: str = "easyocr", specialist_train: int = 150, progress: bool = True, report=print) -> dict:
    """synth -> index -> train (time-boxed) -> predict -> submit -> specialists -> score, under ``out``."""
    from etalage.catalog.synth import SynthConfig, write_synthetic_catalogue
    from etalage.core.train import TrainConfig, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    cfg = SynthConfig(products=products, seed=seed)
    stamp = out / "synth.json"
    if not (stamp.exists() and json.loads(stamp.read_text()).get("config") == asdict(cfg)):
        report(f"[1/6] synth: {products} products -> {out}")
        summary = write_synthetic_catalogue(out, cfg, progress=progress)
        with atomic_write(stamp, "w") as fh:
            json.dump(summary, fh, indent=2)
    else:
        report(f"[1/6] synth: reusing {out}")
    timings["synth_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tax = Taxonomy.load(out / "category_names.csv")
    for name in ("train.bson", "test.bson"):
        idx = build_index(out / name, known_category_ids=tax.category_ids)
        if not md5_path_for(out / name).exists():
            hash_pictures(out / name, index=idx)
    report("[2/6] index: train.bson, test.bson (+ picture MD5s)")
    timings["index_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run = out / "run"
    tcfg = TrainConfig(train=str(out / "train.bson"), out=str(run), backbone=backbone, weights=weights,
                       picture_size=picture_size, crop=crop, batch_size=batch_size, epochs=20.0, max_minutes=minutes,
                       val_fraction=0.1, seed=seed)
    if (run / "model.pt").exists():
        report(f"[3/6] train: reusing {run}")
    else:
        resume = (run / "checkpoint.pt").exists()
        report(f"[3/6] train: {backbone} for at most {minutes:g} min -> {run}" + (" (resuming)" if resume else ""))
        train(tcfg, resume=resume, progress=progress)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report("[4/6] predict + submit: test.bson -> submission.csv")
    submit_core(run, out / "test.bson", out / "submission.csv", pred_dir=out / "pred_test", progress=progress)
    timings["predict_submit_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    specialist_rows = []
    if specialists:
        report(f"[5/6] specialists: {', '.join(specialists)} read covers with {ocr_engine} (cache: ocr-cache.sqlite)")
        specialist_rows = demo_specialists(out, tax, specialists, ocr_engine, specialist_train, seed, progress)
    timings["specialists_s"] = time.perf_counter() - t0

    score = score_submission(out / "submission.csv", out / "test_labels.csv", tax)
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    result = {"core": score.accuracy, "per_level1": {k: v[0] for k, v in score.per_level1.items()},
              "test_products": score.n, "val_top1_last_epoch": metrics[-1]["val_top1"] if metrics else None,
              "epochs": len(metrics), "timings": timings, "specialists": specialist_rows}
    with atomic_write(out / "report.json", "w") as fh:
        json.dump(result, fh, indent=2)
    report("[6/6] score (product top-1 on the synthetic test set):")
    report(f"  {'stage':<22}{'top-1':>8}")
    report(f"  {'core':<22}{score.accuracy:>8.4f}")
    if specialist_rows:
        report(f"  {'specialist':<12}{'group':<14}{'products':>9}{'core':>8}{'specialist':>12}")
        for row in specialist_rows:
            report(f"  {row['specialist']:<12}{row['group']:<14}{row['test_products']:>9}{row['core_top1']:>8.4f}"
                   f"{row['specialist_top1']:>12.4f}")
    report(f"  {'level-1 group':<34}{'top-1':>8}{'products':>10}")
    for name, (acc, n) in sorted(score.per_level1.items(), key=lambda kv: -kv[1][1]):
        report(f"  {name:<34}{acc:>8.4f}{n:>10}")
    report(f"outputs: {out / 'submission.csv'}, {out / 'test_labels.csv'}, {out / 'category_names.csv'}, "
           f"{out / 'report.json'}")
    return result

