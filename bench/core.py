"""The core benchmark on real photos: train the core within a time budget, predict a labelled test dump,
and report product top-1 at every level of the taxonomy beside two anchors computed on the same backbone
in the same run: a linear probe (standardised ImageNet features, logistic regression) and the 2017 8th
place's nearest neighbours (the 5 training products closest in cosine, each voting ``((1 + s) / 2) ** 35``
for its class).

The anchors say what the pretrained backbone gives without fine-tuning: a fine-tuned core that does not
beat its own linear probe by a wide margin is not earning its training time. Outputs: ``REPORT.json``,
``REPORT.md`` and ``REPORT.png`` (learning curve, the most confused class pairs); the run folder and the
anchors' features beside them (``REPORT_work/``), reused when the command is run again.

``dev_split`` makes the dev-part protocol of the README's figures: a listing split by product,
stratified by class and seeded, each part packed with ``etalage pack``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.bsonindex import file_stamp
from etalage.catalog.submission import answer_key_classes
from etalage.catalog.taxonomy import taxonomy_beside
from etalage.errors import ConfigError
from etalage.files import atomic_write, save_npz_atomic, write_json_atomic

log = logging.getLogger(__name__)

ANCHOR_SIZE = 180          # the anchors' pictures: letterboxed to 180x180 on white, the Cdiscount shape
KNN_K, KNN_POWER = 5, 35   # the 2017 8th place's neighbour vote


def level_top1(pred: np.ndarray, truth: np.ndarray, tax: Taxonomy) -> dict[str, float]:
    """Top-1 of class indices ``pred`` against ``truth`` at the leaves and at each parent level."""
    return {"leaf": float((pred == truth).mean()),
            "level2": float((tax.level2_of[pred] == tax.level2_of[truth]).mean()),
            "level1": float((tax.level1_of[pred] == tax.level1_of[truth]).mean())}


def paired_top1(truth: np.ndarray, reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Two predictions of the same products compared product by product: how many only the ``reference``
    gets right (``only_reference``), how many only the ``candidate``, the candidate's top-1 minus the
    reference's (``delta``) and the two-sided sign test on the products only one gets right (``p``; 1.0 when
    there are none). Why: on a test part of a few hundred products one top-1 has a standard error of several
    points, but two predictions by the same network (with and without test-time augmentation) disagree on a
    few dozen products only, and the sign test tells whether those lean one way."""
    from scipy.stats import binomtest

    right_ref, right_cand = reference == truth, candidate == truth
    only_ref, only_cand = int((right_ref & ~right_cand).sum()), int((~right_ref & right_cand).sum())
    p = binomtest(only_cand, only_ref + only_cand).pvalue if only_ref + only_cand else 1.0
    return {"only_reference": only_ref, "only_candidate": only_cand, "p": float(p),
            "delta": float(right_cand.mean() - right_ref.mean())}


def answer_key(catalog: Catalog, labels: str | Path | None, tax: Taxonomy) -> np.ndarray:
    """Class index per product of ``catalog``: from the answer key ``labels``, else the dump's own."""
    if labels is None:
        catalog.require_labels()
        return tax.indices_of(catalog.category_ids).astype(np.int64)
    return answer_key_classes(labels, catalog.product_ids, tax, complete=True).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# the anchors


def backbone_features(catalog: Catalog, backbone: str, size: int = ANCHOR_SIZE, batch_size: int = 64,
                      progress: bool = False) -> np.ndarray:
    """(products, F) float32: pooled ImageNet features of each product (mean over its pictures), every
    picture letterboxed to ``size`` on white: what a training run's own probe reads (``etalage.core.probe``)."""
    import torch

    from etalage.core.backbones import create_backbone
    from etalage.core.data import PictureTransform
    from etalage.core.probe import FeaturePass, pooled_features

    bb = create_backbone(backbone, "imagenet")
    model = bb.model.to(memory_format=torch.channels_last)
    return pooled_features(model, catalog, np.arange(len(catalog)), PictureTransform(size, size, "letterbox", "none"),
                           torch.device("cpu"), (bb.mean, bb.std), FeaturePass(batch_size, True, progress))


def cached_features(catalog: Catalog, backbone: str, folder: Path, progress: bool) -> np.ndarray:
    """``backbone_features``, kept in ``folder`` under a name of the dump's stamp (a changed dump is
    encoded again)."""
    key = json.dumps({"data": str(catalog.path.resolve()), "stamp": file_stamp(catalog.path), "backbone": backbone,
                      "size": ANCHOR_SIZE}, sort_keys=True)
    path = folder / f"features-{catalog.path.stem}-{hashlib.md5(key.encode()).hexdigest()[:10]}.npz"
    if path.exists():
        return np.load(path)["features"]
    feats = backbone_features(catalog, backbone, progress=progress)
    save_npz_atomic(path, features=feats)
    return feats


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Best class per test product of a logistic regression on standardised features (the one a training run
    fits as its own probe, ``etalage.core.probe``)."""
    from etalage.core.probe import fit_linear_head

    weight, bias = fit_linear_head(train_x, train_y, int(max(train_y.max(initial=0), 0)) + 1, seed)
    return (np.asarray(test_x, np.float32) @ weight.T + bias).argmax(1).astype(np.int64)


def neighbour_vote(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int, k: int = KNN_K,
                   power: int = KNN_POWER, chunk: int = 2048) -> np.ndarray:
    """Best class per test product by the 8th place's vote: the ``k`` training products nearest in cosine,
    each adding ``((1 + s) / 2) ** power`` to its class."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    tr, te = unit(train_x).astype(np.float32), unit(test_x).astype(np.float32)
    best = np.zeros(len(te), np.int64)
    for a in range(0, len(te), chunk):
        sim = te[a:a + chunk] @ tr.T
        idx = np.argpartition(-sim, min(k, sim.shape[1] - 1), axis=1)[:, :k]
        s = np.take_along_axis(sim, idx, 1)
        votes = np.zeros((len(sim), n_classes), np.float64)
        np.add.at(votes, (np.repeat(np.arange(len(sim)), idx.shape[1]), train_y[idx].reshape(-1)),
                  (((1 + s) / 2) ** power).reshape(-1))
        best[a:a + chunk] = votes.argmax(1)
    return best


# ---------------------------------------------------------------------------------------------
# the benchmark


@dataclass
class CoreBenchConfig:
    """``etalage bench core``: train the core on ``train`` for ``max_minutes`` (the defaults, or ``overrides`` of
    ``TrainConfig``), predict the labelled ``data`` (or score it against the answer key ``labels``), report to
    ``out`` (.json, .md, .png); with ``anchors``, the linear probe and the 5-NN on the same backbone."""

    train: Path
    data: Path
    out: Path
    labels: Path | None = None
    taxonomy: Path | None = None
    max_minutes: float = 20.0
    overrides: dict = field(default_factory=dict)
    anchors: bool = True
    tta: str = "none"
    seed: int = 0


def run_core_bench(bench: CoreBenchConfig, progress: bool = True) -> dict:
    """Train, predict, score and compare with the anchors (``CoreBenchConfig``); returns the report."""
    from dataclasses import asdict, fields

    from etalage.core.config import TrainConfig
    from etalage.core.predict import CorePredictor
    from etalage.core.probe import LEVELS
    from etalage.core.rundir import RunDir
    from etalage.core.train import train as train_core

    train, test, out, labels, taxonomy = bench.train, bench.data, bench.out, bench.labels, bench.taxonomy
    minutes, overrides, anchors, tta, seed = bench.max_minutes, bench.overrides, bench.anchors, bench.tta, bench.seed
    out = Path(out)
    work = out.with_name(out.stem + "_work")
    train, test = Path(train), Path(test)
    tax = taxonomy_beside(train, taxonomy, required=True)
    tax_path = Path(tax.source)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ConfigError(f"--set {unknown[0]}: not a training setting (known: {', '.join(sorted(known))})")
    cfg = TrainConfig(train=str(train), out=str(work / "run"), taxonomy=str(tax_path), max_minutes=minutes,
                      seed=seed, **(overrides or {}))
    run = RunDir(cfg.out)
    t0 = time.perf_counter()
    if not run.finished:
        log.info("[1/3] training the core for %.1f minutes on %s", minutes, train.name)
        train_core(cfg, resume=run.checkpoint_file.exists(), progress=progress)
    train_s = time.perf_counter() - t0
    test_cat = Catalog.open(test, progress=progress)
    truth = answer_key(test_cat, labels, tax)
    log.info("[2/3] predicting %d test products", len(test_cat))
    t1 = time.perf_counter()
    predictor = CorePredictor(run, tta=tta)
    ranking = predictor.predict_catalog(test_cat, work / f"pred-{tta}", topk=5, progress=progress)
    predict_s = time.perf_counter() - t1
    top1 = ranking.top1().astype(np.int64)
    metrics = run.metrics()
    report = {"train": str(train), "test": str(test), "taxonomy": str(tax_path), "classes": tax.n_classes,
              "train_products": len(Catalog.open(train)), "test_products": len(test_cat), "minutes": minutes,
              "settings": {k: v for k, v in asdict(cfg).items() if k not in ("train", "out", "taxonomy")},
              "picture_size": predictor.spec.get("picture_size"), "crop": predictor.spec.get("crop"), "tta": tta,
              "core": {**level_top1(top1, truth, tax), "top5": float((ranking.topk_class == truth[:, None]).any(1).mean())},
              "train_seconds": train_s, "predict_seconds": predict_s, "steps": metrics[-1]["step"] if metrics else None,
              "kept": (metrics[-1].get("kept", "fine-tune") if metrics else None),
              "probe_seconds": metrics[-1].get("probe_seconds", 0.0) if metrics else None,
              **{f"{who}_val": {k: metrics[-1][f"{who}_{k}"] for k in LEVELS if metrics and f"{who}_{k}" in metrics[-1]}
                 for who in ("probe", "ensemble")},
              "epochs_seen": _epochs_seen(metrics), "curve": [{k: m.get(k) for k in ("elapsed_s", "epoch", "step",
                                                                                     "train_loss", "val_top1",
                                                                                     "val_level2_top1",
                                                                                     "val_level1_top1", "phase")}
                                                              for m in metrics],
              "confused": confused_pairs(top1, truth, tax)}
    if anchors:
        log.info("[3/3] anchors: linear probe and %d nearest neighbours on %s ImageNet features", KNN_K,
                 cfg.backbone)
        train_cat = Catalog.open(train)
        train_y = answer_key(train_cat, None, tax)
        tx = cached_features(train_cat, cfg.backbone, work, progress)
        ex = cached_features(test_cat, cfg.backbone, work, progress)
        report["linear_probe"] = level_top1(linear_probe(tx, train_y, ex, seed), truth, tax)
        report["knn"] = level_top1(neighbour_vote(tx, train_y, ex, tax.n_classes), truth, tax)
        counts = np.bincount(train_y, minlength=tax.n_classes)
        report["majority"] = level_top1(np.full(len(truth), counts.argmax()), truth, tax)
    if tta != "none":  # the same network without TTA: predicted (or reused, when done before) to pair with
        log.info("[2/3] predicting the test products again without test-time augmentation, to compare")
        plain = CorePredictor(run, tta="none").predict_catalog(test_cat, work / "pred-none", topk=5, progress=progress)
        report["against_no_tta"] = paired_top1(truth, plain.top1().astype(np.int64), top1)
    write_core_report(report, out, run)
    return report


def _epochs_seen(metrics: list[dict]) -> float | None:
    if not metrics:
        return None
    last = metrics[-1]
    return float(last["epoch"] - 1 + last["epoch_fraction"]) if last["epoch_fraction"] else float(last["epoch"])


def confused_pairs(pred: np.ndarray, truth: np.ndarray, tax: Taxonomy, n: int = 12) -> list[dict]:
    """The most frequent (true class, predicted class) mistakes, with their share of the true class."""
    wrong = pred != truth
    pairs, counts = np.unique(np.stack([truth[wrong], pred[wrong]], 1), axis=0, return_counts=True) \
        if wrong.any() else (np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    per_class = np.bincount(truth, minlength=tax.n_classes)
    order = np.argsort(-counts, kind="stable")[:n]
    return [{"true": tax.level3_names[int(t)], "predicted": tax.level3_names[int(p)], "count": int(c),
             "share_of_true": float(c / per_class[int(t)])} for (t, p), c in zip(pairs[order], counts[order],
                                                                                 strict=True)]


def write_core_report(report: dict, out: Path, run) -> None:
    from etalage.core.probe import KEPT_WORDS

    write_json_atomic(out, report)
    kept = report.get("kept") or "fine-tune"
    kept = "fine-tuned" if kept == "fine-tune" else f"the run's {KEPT_WORDS[kept]}, kept"
    rows = [(f"core ({kept})", report["core"])]
    for key, name in (("linear_probe", "linear probe (same backbone, ImageNet features)"),
                      ("knn", f"{KNN_K} nearest neighbours, 8th-place vote"), ("majority", "majority class")):
        if key in report:
            rows.append((name, report[key]))
    s = report["settings"]
    lines = [f"# Core on {Path(report['test']).name} ({report['test_products']:,} test products, "
             f"{report['classes']} classes)", "",
             f"Trained on {report['train_products']:,} products of {Path(report['train']).name} for "
             f"{report['train_seconds'] / 60:.1f} min ({report['epochs_seen'] or 0:.1f} epochs, {s['backbone']}, "
             f"{report['picture_size']}px, crops {report['crop']}, TTA {report['tta']}).", "",
             "| model | leaf top-1 | level-2 top-1 | level-1 top-1 |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['leaf']:.4f} | {r['level2']:.4f} | {r['level1']:.4f} |" for name, r in rows]
    if "against_no_tta" in report:
        pair = report["against_no_tta"]
        lines += ["", f"Test-time augmentation ({report['tta']}) against none, the same network: "
                      f"{pair['only_candidate']} products right only with it, {pair['only_reference']} only "
                      f"without (leaf {pair['delta']:+.4f}, two-sided sign test p = {pair['p']:.2f})."]
    lines += ["", "Most confused pairs (true -> predicted, count, share of the true class):", ""]
    lines += [f"- {c['true']} -> {c['predicted']}: {c['count']} ({100 * c['share_of_true']:.1f}%)"
              for c in report["confused"]]
    with atomic_write(out.with_suffix(".md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    _report_png(report, out.with_suffix(".png"))


def _report_png(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # not pyplot: its figures and backend are the caller's

    fig = Figure(figsize=(12, 4.2))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    curve = report["curve"]
    if curve:
        minutes = [c["elapsed_s"] / 60 for c in curve]
        ax.plot(minutes, [c["val_top1"] for c in curve], marker="o", label="core: validation leaf top-1")
    ax.axhline(report["core"]["leaf"], color="tab:blue", ls="--", label=f"core: test {report['core']['leaf']:.3f}")
    for key, colour, name in (("linear_probe", "tab:green", "linear probe"), ("knn", "tab:orange", "5-NN")):
        if key in report:
            ax.axhline(report[key]["leaf"], color=colour, ls=":", label=f"{name}: test {report[key]['leaf']:.3f}")
    ax.set(xlabel="training minutes", ylabel="leaf top-1", title="learning curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    pairs = report["confused"][:10][::-1]
    bx.barh([f"{c['true']} -> {c['predicted']}" for c in pairs], [c["count"] for c in pairs], color="tab:red")
    bx.set(xlabel="test products", title="most confused pairs (true -> predicted)")
    bx.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)


# ---------------------------------------------------------------------------------------------
# the dev protocol


def read_listing_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def dev_split(set_dir: str | Path, out_dir: str | Path, test_fraction: float = 0.2, seed: int = 0,
              size: int | None = ANCHOR_SIZE, max_train: int | None = None, test_prefix: str | None = None,
              progress: bool = True) -> dict:
    """Split a real set's dev listing (``DIR/listing.csv``, ``DIR/images``, ``DIR/category_names.csv``) by
    product, stratified by class and seeded, and pack ``train.bson``, ``test.bson`` and ``test_labels.csv``
    into ``out_dir`` (kept when already there). ``max_train``: at most this many training products.
    ``test_prefix``: instead, the products whose picture names start with it are the test part (the
    GroceryStore dev part holds its official ``train-`` and ``val-`` photos: its own split)."""
    from etalage.catalog.pack import PackOptions, pack_listing
    from etalage.catalog.split import validation_split

    set_dir, out_dir = Path(set_dir), Path(out_dir)
    files = {"train": out_dir / "train.bson", "test": out_dir / "test.bson", "labels": out_dir / "test_labels.csv",
             "taxonomy": out_dir / "category_names.csv"}
    if all(f.exists() for f in files.values()):
        return files
    header, rows = read_listing_rows(set_dir / "listing.csv")
    col = {h: i for i, h in enumerate(header)}
    products: dict[str, list[list[str]]] = {}
    for r in rows:
        products.setdefault(r[col["_id"]], []).append(r)
    ids = list(products)
    classes = np.array([int(products[i][0][col["category_id"]]) for i in ids])
    if test_prefix is not None:
        test_mask = np.array([products[i][0][col["picture"]].startswith(test_prefix) for i in ids])
    else:
        test_mask = validation_split(classes, test_fraction, seed)
    train_ids = [i for i, t in zip(ids, test_mask, strict=True) if not t]
    if max_train is not None and len(train_ids) > max_train:
        keep = ~validation_split(classes[~test_mask], 1 - max_train / len(train_ids), seed + 1)
        train_ids = [i for i, k in zip(train_ids, keep, strict=True) if k]
    parts = {"train": train_ids, "test": [i for i, t in zip(ids, test_mask, strict=True) if t]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for part, chosen in parts.items():
        listing = out_dir / f"{part}_listing.csv"
        with atomic_write(listing, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for i in chosen:
                writer.writerows(products[i])
        options = PackOptions(set_dir / "category_names.csv", size, labels=part == "train",
                              labels_out=files["labels"] if part == "test" else None)
        pack_listing(listing, set_dir / "images", files[part], options, progress=progress)
    return files
