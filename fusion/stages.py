"""The second level as jobs: fit it on the core's validation products, predict a data file through
every stage in resumable chunks, merge the chunks into a submission, and report what each signal adds.

Predicting a file runs, per chunk of products (the core's chunks, so ``--shard i/n`` splits every
stage the same way):

1. index + picture MD5s of the file (skipped when present);
2. core predictions            -> WORK/core/part-*.npz
3. specialists on gated products -> WORK/specialists/NAME/part-*.npz (OCR through the cache)
4. fusion                      -> WORK/fused/part-*.npz (top classes and scores per product)

Every part is written atomically and skipped when present, so a killed job picks up where it stopped;
memory holds one chunk's table at a time plus the training signals.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.bsonindex import ensure_index, file_stamp, hash_pictures, load_md5, md5_path_for
from etalage.catalog.io import (
    atomic_write,
    chunk_ranges,
    claim_folder,
    list_parts,
    load_parts,
    part_path,
    save_npz_atomic,
    shard_chunk_ranges,
)
from etalage.fusion.model import FusionModel, assemble, feature_groups
from etalage.fusion.signals import TrainingSignals
from etalage.fusion.table import CandidateTable

from etalage.errors import ConfigError, DataError, StageOutputError

log = logging.getLogger(__name__)

FUSED_TOPK = 5
CHUNK = 4096


def map_forked(fn, items: list, workers: int):
    """``fn`` over ``items`` in ``workers`` forked processes, yielding results in order. The children
    inherit what the parent set up (training signals, the model): nothing large is pickled. Feature
    building is single-threaded numpy, so on 2 cores two processes nearly double the fusion stage."""
    if workers <= 1 or len(items) <= 1:
        yield from (fn(x) for x in items)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(min(workers, len(items))) as pool:
        yield from pool.imap(fn, items, chunksize=1)


def fusion_workers() -> int:
    """Processes for the fusion stage: every core this process may use (``ETALAGE_FUSION_WORKERS``
    overrides)."""
    import os

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return int(os.environ.get("ETALAGE_FUSION_WORKERS", 0)) or usable


def ensure_indexed(path: str | Path, taxonomy: Taxonomy | None = None, progress: bool = False) -> Catalog:
    """Stage 1 for one file: the offset index and picture MD5s (each skipped when up to date)."""
    idx = ensure_index(path, known_category_ids=None if taxonomy is None else taxonomy.category_ids,
                       progress=progress)
    md5 = md5_path_for(path)
    if not md5.exists() or np.load(md5, mmap_mode="r").shape[0] != len(idx.pictures):  # missing or stale
        hash_pictures(path, index=idx, progress=progress)
    return Catalog.open(path)


def training_signals(train: Catalog, taxonomy: Taxonomy, ks: list[int] | None = None,
                     md5: np.ndarray | None = None) -> TrainingSignals:
    """``md5``: the training file's picture MD5s when the caller already holds them."""
    train.require_labels()
    return TrainingSignals.build(train.product_ids, taxonomy.indices_of(train.category_ids),
                                 load_md5(train.path) if md5 is None else md5, train.n_pictures, taxonomy.n_classes, ks)


def _engine_of(specialists_dir: Path) -> tuple[str, dict]:
    """The OCR engine (name, options) the specialists were fitted with: test covers are read the same way."""
    settings = [json.loads(p.read_text())["settings"] for p in sorted(specialists_dir.glob("*/fit.json"))]
    engines = {(s["engine"], json.dumps(s.get("engine_options", {}), sort_keys=True)) for s in settings}
    if len(engines) > 1:
        raise ConfigError(f"{specialists_dir}: specialists fitted with different OCR engines or settings; refit them "
                          f"with one `etalage specialists fit --ocr-engine ...`")
    if not engines:
        return "easyocr", {}
    name, options = engines.pop()
    return name, json.loads(options)


def _score_specialists(specialists_dir, names, ranking, catalog, positions, taxonomy, out_dir, shard, producer,
                       ocr_cache, progress) -> None:
    from etalage.ocr import load_engine
    from etalage.ocr.cache import OcrCache
    from etalage.specialists.runner import load_fitted, score_catalog

    specs = load_fitted(specialists_dir, names)
    name, options = _engine_of(Path(specialists_dir))
    engine = load_engine(name, **options)
    with OcrCache(ocr_cache) as cache:
        score_catalog(specs, ranking, catalog, positions, taxonomy, engine, cache, load_md5(catalog.path), out_dir,
                      shard=shard, producer=producer, progress=progress)


def _specialist_rankings(folder: Path, names: list[str], rows: tuple[int, int] | None = None) -> list:
    from etalage.specialists.runner import SpecialistRanking

    return [SpecialistRanking.load(folder / n, rows) for n in names]


# ---------------------------------------------------------------------------------------------
# fit


def fit_fusion(run: str | Path, train: str | Path, out: str | Path, specialists: str | Path | None = None,
               kind: str = "auto", topk: int = 20, tta: str = "none", ocr_cache: str | Path | None = None, seed: int = 0,
               device: str = "auto", batch_size: int = 64, workers: int | None = None, progress: bool = True,
               report=print) -> dict:
    """Fit the fusion model on the core run's validation products of ``train`` (the core never trained
    on them). Writes OUT/fusion.lgb.txt, OUT/fusion.json (features and the settings that built the
    table), OUT/table.npz (for ``fusion report``) and OUT/fit_report.json."""
    from etalage.core.predict import CorePredictor

    run, train, out = Path(run), Path(train), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    val_path = run / "val_positions.npy"
    if not val_path.exists():
        raise StageOutputError(f"{val_path}: the run has no validation products; train with "
                               f"`etalage train --val-fraction 0.05 ...` (fusion trains on them)")
    taxonomy = Taxonomy.load(run / "category_names.csv")
    catalog = ensure_indexed(train, taxonomy, progress)
    catalog.require_labels()
    val = np.sort(np.load(val_path))
    labels = taxonomy.indices_of(catalog.category_ids)
    command = f"etalage fusion fit --run {run} --train {train} --out {out}"
    t0 = time.perf_counter()
    report(f"[1/4] core predictions on the {len(val)} validation products of {train.name}")
    predictor = CorePredictor(run, device=device, batch_size=batch_size, workers=workers, tta=tta)
    ranking = predictor.predict_catalog(catalog, out / "core_val", topk=topk, positions=val, chunk=CHUNK,
                                        producer=command, progress=progress)
    names: list[str] = []
    if specialists is not None:
        from etalage.specialists.runner import load_fitted

        names = [s.name for s in load_fitted(specialists)]
        report(f"[2/4] specialists {', '.join(names)} on the products their gates let through")
        _score_specialists(specialists, names, ranking, catalog, val, taxonomy, out / "specialists_val", (0, 1),
                           command, ocr_cache or train.parent / "ocr-cache.sqlite", progress)
    else:
        report("[2/4] specialists: none (pass --specialists DIR from `etalage specialists fit`)")
    report("[3/4] table: candidates and features (hash and id signals exclude each product itself)")
    train_md5 = load_md5(train)
    signals = training_signals(catalog, taxonomy, md5=train_md5)
    pic_rows, pic_owner = catalog.picture_rows(val)
    table = assemble(ranking, taxonomy, signals, train_md5[pic_rows], pic_owner,
                     _specialist_rankings(out / "specialists_val", names), training_queries=True,
                     own_classes=labels[val])
    truth = labels[val]
    feature_names = tuple(table.features)
    save_table(out / "table.npz", table, truth, ranking.top1())
    report(f"[4/4] LightGBM ({'ranker and binary, the better kept' if kind == 'auto' else kind}) over "
           f"{len(table.owner):,} rows x {len(feature_names)} features")
    kinds = ("ranker", "binary") if kind == "auto" else (kind,)
    model, by_kind = FusionModel.fit_best(table, truth, feature_names, kinds=kinds, seed=seed)
    model.config = {"run": str(run), "train": str(train), "specialists": None if specialists is None else
                    str(specialists), "specialist_names": names, "topk": topk, "tta": tta, "ks": signals.ks,
                    "train_stamp": file_stamp(train)}
    model.save(out)
    fit = {"products": len(val), "rows": len(table.owner), "features": len(feature_names), "kind": model.kind,
           "valid_top1_by_kind": by_kind, "core_top1": float((ranking.top1() == truth).mean()),
           "candidate_coverage": coverage(table, truth), "seconds": time.perf_counter() - t0,
           "importance": model.importance()}
    with atomic_write(out / "fit_report.json", "w") as fh:
        json.dump(fit, fh, indent=2)
    return fit


def coverage(table: CandidateTable, truth: np.ndarray) -> float:
    """Share of products whose true class is among their candidates (fusion's ceiling)."""
    n = len(truth)
    hit = np.zeros(n, bool)
    hit[table.owner[table.classes == np.asarray(truth)[table.owner]]] = True
    return float(hit.mean()) if n else 0.0


def save_table(path: Path, table: CandidateTable, truth: np.ndarray, core_top1: np.ndarray) -> None:
    names = list(table.features)
    save_npz_atomic(path, owner=table.owner, classes=table.classes, X=table.matrix(tuple(names)),
                    names=np.array(names), truth=np.asarray(truth, np.int32), core_top1=np.asarray(core_top1))


def load_table(path: Path) -> tuple[CandidateTable, np.ndarray, np.ndarray]:
    if not path.exists():
        raise StageOutputError(f"{path}: no fusion table; run `etalage fusion fit --out {path.parent} ...`")
    with np.load(path) as z:
        names = [str(n) for n in z["names"]]
        table = CandidateTable(z["owner"], z["classes"], {n: z["X"][:, j] for j, n in enumerate(names)})
        return table, z["truth"], z["core_top1"]


# ---------------------------------------------------------------------------------------------
# predict (shards) and merge


@dataclass
class PredictPlan:
    """What ``predict_file`` runs with: the fusion model's settings, overridable per call."""

    model: str
    run: str
    train: str
    specialists: str | None
    specialist_names: list[str]
    topk: int
    ks: list[int]
    tta: str  # the core's test-time augmentation: the model saw its probabilities, test must match

    @classmethod
    def from_model(cls, model_dir: str | Path, run=None, train=None, specialists=None) -> PredictPlan:
        cfg = FusionModel.load(model_dir).config
        return cls(str(model_dir), str(run or cfg["run"]), str(train or cfg["train"]),
                   str(specialists) if specialists else cfg.get("specialists"), cfg.get("specialist_names", []),
                   int(cfg["topk"]), list(cfg["ks"]), cfg.get("tta", "none"))


def _check_work(work: Path, data: Path, plan: PredictPlan, chunk: int) -> None:
    stamp = {"data": str(data), "data_stamp": file_stamp(data), "model": plan.model, "run": plan.run,
             "chunk": chunk}
    claim_folder(work / "work.json", stamp)


def predict_file(plan: PredictPlan, data: str | Path, work: str | Path, shard: tuple[int, int] = (0, 1),
                 command: str = "etalage submit", ocr_cache: str | Path | None = None, device: str = "auto",
                 batch_size: int = 64, workers: int | None = None, chunk: int = CHUNK,
                 progress: bool = True, report=print) -> bool:
    """Stages 1-4 for shard ``i/n`` of ``data`` into ``work``. True when every chunk of every shard
    is fused (the merge can run)."""
    from etalage.core.predict import CorePredictor
    from tqdm import tqdm

    data, work = Path(data), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    _check_work(work, data, plan, chunk)
    taxonomy = Taxonomy.load(Path(plan.run) / "category_names.csv")
    label = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    report(f"[1/4] index + picture hashes: {data.name}, {Path(plan.train).name}")
    catalog = ensure_indexed(data, progress=progress)
    train = ensure_indexed(plan.train, taxonomy, progress)
    log.info("peak RSS so far %.0f MB", _peak_rss_mb())
    report(f"[2/4] core predictions{label} -> {work / 'core'}")
    predictor = CorePredictor(plan.run, device=device, batch_size=batch_size, workers=workers, tta=plan.tta)
    predictor.predict_catalog(catalog, work / "core", topk=plan.topk, shard=shard, chunk=chunk, producer=command,
                              progress=progress)
    chunks = shard_chunk_ranges(len(catalog), chunk, shard)
    if plan.specialist_names:
        if plan.specialists is None:
            raise ConfigError(f"{plan.model}: the model uses specialists {', '.join(plan.specialist_names)}; "
                              f"pass --specialists DIR")
        log.info("peak RSS so far %.0f MB", _peak_rss_mb())
        report(f"[3/4] specialists {', '.join(plan.specialist_names)}{label} -> {work / 'specialists'}")
        _score_specialists(plan.specialists, plan.specialist_names, work / "core", catalog, np.arange(len(catalog)),
                           taxonomy, work / "specialists", shard, command,
                           ocr_cache or data.parent / "ocr-cache.sqlite", progress)
    else:
        report("[3/4] specialists: none in this fusion model")
    log.info("peak RSS so far %.0f MB", _peak_rss_mb())
    report(f"[4/4] fusion{label} -> {work / 'fused'}")
    model = FusionModel.load(plan.model)
    signals = training_signals(train, taxonomy, plan.ks)
    md5 = load_md5(data)
    fused_dir = work / "fused"
    done = list_parts(fused_dir)
    todo = [c for c in chunks if c not in done]
    workers = min(fusion_workers(), len(todo))
    model.threads = 1 if workers > 1 else 0
    _FUSE.update(work=work, catalog=catalog, taxonomy=taxonomy, signals=signals, md5=md5, model=model,
                 specialists=list(plan.specialist_names))
    with tqdm(total=sum(b - a for a, b in todo), unit="product", desc="fusion", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        for a, b in map_forked(_fuse_chunk, todo, workers):
            bar.update(b - a)
    _FUSE.clear()
    log.info("peak RSS so far %.0f MB", _peak_rss_mb())
    return all(c in list_parts(fused_dir) for c in chunk_ranges(len(catalog), chunk))


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_FUSE: dict = {}  # what the fusion workers inherit (set by predict_file before forking)


def _fuse_chunk(chunk: tuple[int, int]) -> tuple[int, int]:
    """Fuse products a..b: their table from every signal, ranked; one part file."""
    from etalage.core.predict import CoreRanking

    a, b = chunk
    st = _FUSE
    work = st["work"]
    part = CoreRanking.load(work / "core", (a, b))
    pic_rows, pic_owner = st["catalog"].picture_rows(np.arange(a, b))
    specs = _specialist_rankings(work / "specialists", st["specialists"], (a, b))
    table = assemble(part, st["taxonomy"], st["signals"], st["md5"][pic_rows], pic_owner, specs)
    classes, scores = st["model"].rank(table, b - a, FUSED_TOPK)
    save_npz_atomic(part_path(work / "fused", a, b), product_ids=part.product_ids, topk_class=classes,
                    topk_score=scores, core_top1=part.top1())
    return a, b


def load_fused(work: str | Path, n_products: int | None = None, command: str = "etalage submit --shard i/n"
               ) -> dict[str, np.ndarray]:
    """Every fused part of ``work`` in product order; a missing chunk names the command to run."""
    work = Path(work)
    stamp = work / "work.json"
    if not stamp.exists():
        raise StageOutputError(f"{work}: no pipeline outputs; run `{command}` first")
    meta = json.loads(stamp.read_text())
    data = Path(meta["data"])
    if n_products is None:
        n_products = len(Catalog.open(data))
    expected = chunk_ranges(n_products, meta["chunk"])
    done = list_parts(work / "fused")
    missing = [c for c in expected if c not in done]
    if missing:
        a, b = missing[0]
        raise StageOutputError(f"{work / 'fused'}: products {a}-{b} of {data} are not fused yet ({len(missing)} of "
                               f"{len(expected)} chunks missing); run `{command}` for every shard first")
    return load_parts(work / "fused", expected)


def merge_submission(work: str | Path, out: str | Path, taxonomy: Taxonomy, data: str | Path,
                     command: str = "etalage submit --shard i/n") -> dict:
    """Write the submission from the fused parts of every shard (validated, atomic)."""
    from etalage.catalog.submission import write_submission

    catalog = Catalog.open(data)
    fused = load_fused(work, len(catalog), command)
    if not np.array_equal(fused["product_ids"], catalog.product_ids):
        raise DataError(f"{work}: fused products do not match {data} (another file?)")
    best = fused["topk_class"][:, 0]
    best = np.where(best >= 0, best, fused["core_top1"])
    write_submission(out, fused["product_ids"], taxonomy.category_ids[best], expected_ids=catalog.product_ids,
                     taxonomy=taxonomy)
    return {"submission": str(out), "products": len(best)}


# ---------------------------------------------------------------------------------------------
# report


ABLATION = (("core", ("core",)), ("core + hash", ("core", "hash")), ("core + id", ("core", "id")),
            ("core + specialists", ("core", "specialists")), ("all", ("core", "hash", "id", "specialists")))


def ablation(table: CandidateTable, truth: np.ndarray, core_top1: np.ndarray, kind: str = "ranker", folds: int = 3,
             seed: int = 0, progress: bool = True) -> list[dict]:
    """Product top-1 of the reranker with each group of signals, by ``folds``-fold cross-validation over
    the fusion products (fit on the other folds, scored on the held-out one)."""
    from tqdm import tqdm

    groups = feature_groups(tuple(table.features))
    n = len(truth)
    fold = np.random.default_rng(seed).integers(0, folds, n)
    rows = [{"signals": "core top-1 (no reranker)", "features": 0, "top1": float((core_top1 == truth).mean())}]
    for label, parts in tqdm(ABLATION, desc="ablation", disable=not progress, leave=False):
        names = tuple(n for g in parts for n in groups[g])
        if not names or (parts != ("core",) and not any(groups[g] for g in parts if g != "core")):
            continue  # e.g. no specialists in this table
        pred = np.full(n, -1, np.int32)
        for f in range(folds):
            held = fold == f
            sub, sub_truth, _ = _subtable(table, truth, ~held)
            model = FusionModel.fit(sub, sub_truth, names, kind, seed=seed)
            test, _, test_rows = _subtable(table, truth, held)
            pred[test_rows] = model.predict(test, len(test_rows))
        rows.append({"signals": label, "features": len(names), "top1": float((pred == truth).mean())})
    return rows


def _subtable(table: CandidateTable, truth: np.ndarray, products: np.ndarray
              ) -> tuple[CandidateTable, np.ndarray, np.ndarray]:
    """The rows of some products, renumbered 0..m-1; returns the table, their truth and their old numbers."""
    keep = np.flatnonzero(products)
    new = np.full(len(products), -1, np.int64)
    new[keep] = np.arange(len(keep))
    r = products[table.owner]
    return (CandidateTable(new[table.owner[r]], table.classes[r], {k: v[r] for k, v in table.features.items()}),
            np.asarray(truth)[keep], keep)


def write_report(model_dir: str | Path, out: str | Path, folds: int = 3, progress: bool = True) -> dict:
    """Feature importance and the ablation: OUT (markdown) and OUT with .png (two bar charts)."""
    model_dir, out = Path(model_dir), Path(out)
    model = FusionModel.load(model_dir)
    table, truth, core_top1 = load_table(model_dir / "table.npz")
    rows = ablation(table, truth, core_top1, model.kind, folds, progress=progress)
    importance = model.importance()
    total = sum(importance.values()) or 1.0
    lines = [f"# Fusion report: {model_dir}", "",
             f"{len(truth):,} products (the core run's validation products), {len(table.owner):,} candidate rows, "
             f"candidate coverage {coverage(table, truth):.4f}; model kind {model.kind}.", "",
             f"## Ablation (product top-1, {folds}-fold cross-validation over those products)", "",
             "| signals | features | top-1 |", "|---|---:|---:|"]
    lines += [f"| {r['signals']} | {r['features']} | {r['top1']:.4f} |" for r in rows]
    lines += ["", "## Feature importance (share of total gain, fitted model)", "", "| feature | gain share |",
              "|---|---:|"]
    lines += [f"| {k} | {v / total:.4f} |" for k, v in list(importance.items())[:25]]
    png = out.with_suffix(".png")
    _chart(rows, importance, png)
    lines += ["", f"![ablation and importance]({png.name})", ""]
    with atomic_write(out, "w") as fh:
        fh.write("\n".join(lines))
    return {"ablation": rows, "importance": importance, "markdown": str(out), "png": str(png)}


def _chart(rows: list[dict], importance: dict[str, float], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [r["signals"] for r in rows]
    values = [r["top1"] for r in rows]
    a1.barh(labels[::-1], values[::-1], color="#4c72b0")
    lo = max(0.0, min(values) - 0.05)
    a1.set_xlim(lo, min(1.0, max(values) + 0.02))
    a1.set_xlabel("product top-1")
    a1.set_title("Ablation")
    for y, v in enumerate(values[::-1]):
        a1.text(v, y, f" {v:.3f}", va="center", fontsize=8)
    top = list(importance.items())[:15]
    total = sum(importance.values()) or 1.0
    a2.barh([k for k, _ in top][::-1], [v / total for _, v in top][::-1], color="#dd8452")
    a2.set_xlabel("share of total gain")
    a2.set_title("Feature importance")
    fig.tight_layout()
    with atomic_write(png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
