"""Specialists over a catalogue, for fusion: fit them on training products, then score the products
the core routes to them, chunk by chunk, into files the fusion stage reads.

Fitting leaves out the core's validation products: fusion trains on those, and a specialist that had
seen them would look better there than on the test set. Scoring follows the core's chunks
(``part-START-END.npz`` per specialist, written atomically), so a killed run redoes at most one chunk
and ``--shard i/n`` splits the work the same way as the core's predictions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from etalage.catalog import Catalog
from etalage.catalog.io import (
    atomic_write,
    list_parts,
    load_chunked,
    part_path,
    save_npz_atomic,
    shard_chunk_ranges,
)
from etalage.ocr.features import SUMMARY_NAMES
from etalage.specialists.base import ProductReading, Specialist, available, create_specialist, safe_predict

from etalage.errors import ConfigError, StageOutputError

log = logging.getLogger(__name__)

SPECIALIST_TOPK = 10   # classes kept per product and specialist (all later stages need)
OCR_SUMMARY_NAMES = ("ocr_text_length", "ocr_box_count", "ocr_confidence_mean")


def ocr_summary(readings: list[ProductReading]) -> np.ndarray:
    """``OCR_SUMMARY_NAMES`` per product (float32): characters and boxes over all its pictures,
    confidence averaged over its boxes."""
    i_len, i_box, i_conf = (SUMMARY_NAMES.index(n) for n in ("text_length", "box_count", "confidence_mean"))
    out = np.zeros((len(readings), len(OCR_SUMMARY_NAMES)), np.float32)
    for j, r in enumerate(readings):
        f = r.picture_features
        boxes = f[:, i_box].sum()
        out[j] = (f[:, i_len].sum(), boxes, (f[:, i_conf] * f[:, i_box]).sum() / boxes if boxes else 0.0)
    return out


# ---------------------------------------------------------------------------------------------
# fitting


def fit_specialists(train: Catalog, taxonomy, names: list[str], out: str | Path, engine, cache, md5: np.ndarray,
                    exclude: np.ndarray | None = None, max_train: int = 2000, seed: int = 0,
                    progress: bool = True) -> list[dict]:
    """Fit each named specialist on (up to ``max_train``) training products of its groups, leaving out
    the positions in ``exclude``; saved under ``out/NAME``. A specialist already fitted with the same
    settings is kept (a rerun only fits what is missing)."""
    from etalage.specialists.readings import read_products

    out = Path(out)
    labels = taxonomy.indices_of(train.category_ids)
    allowed = np.ones(len(train), bool)
    if exclude is not None:
        allowed[np.asarray(exclude, np.int64)] = False
    rows = []
    for name in names:
        spec = create_specialist(name)
        settings = {"train": str(train.path), "max_train": max_train, "seed": seed, "engine": engine.name,
                    "engine_key": engine.cache_key, "engine_options": engine.options, "excluded": int((~allowed).sum())}
        folder = out / name
        stamp = folder / "fit.json"
        if stamp.exists() and json.loads(stamp.read_text()).get("settings") == settings:
            rows.append(json.loads(stamp.read_text()))
            log.info("specialist %s: reusing %s", name, folder)
            continue
        pos = np.flatnonzero(np.isin(labels, spec.classes(taxonomy)) & allowed)
        if len(pos) < 2:
            raise ConfigError(f"specialist {name!r}: {len(pos)} training products in {', '.join(spec.groups)} "
                              f"of {train.path}; it needs at least 2")
        rng = np.random.default_rng(seed)
        pos = np.sort(rng.choice(pos, min(max_train, len(pos)), replace=False))
        spec.fit(read_products(train, pos, engine, cache, md5, progress=progress), labels[pos], taxonomy)
        spec.save(folder)
        row = {"specialist": name, "groups": list(spec.groups), "train_products": int(len(pos)), "settings": settings}
        with atomic_write(stamp, "w") as fh:
            json.dump(row, fh, indent=2)
        rows.append(row)
    return rows


def load_fitted(folder: str | Path, names: list[str] | None = None) -> list[Specialist]:
    """The specialists fitted under ``folder`` (one sub-folder each, as ``fit_specialists`` writes)."""
    folder = Path(folder)
    found = sorted(p.parent.name for p in folder.glob("*/fit.json"))
    if names is not None:
        missing = [n for n in names if n not in found]
        if missing:
            raise StageOutputError(f"{folder}: specialist {missing[0]!r} is not fitted there; run "
                                   f"`etalage specialists fit --out {folder} --names {','.join(names)} ...`")
        found = list(names)
    if not found:
        raise StageOutputError(f"{folder}: no fitted specialists; run `etalage specialists fit --out {folder} ...`")
    entries = available()
    out = []
    for name in found:
        if name not in entries:
            raise ConfigError(f"{folder / name}: specialist {name!r} is not installed (see `etalage specialists list`)")
        out.append(entries[name].factory.load(folder / name))
    return out


# ---------------------------------------------------------------------------------------------
# scoring


@dataclass
class SpecialistRanking:
    """One specialist's view of the products of a core ranking: only the products it looked at."""

    name: str
    rows: np.ndarray          # (n,) int64: product rows (positions in the core ranking), ascending
    topk_class: np.ndarray    # (n, k) int32 taxonomy classes, best first
    topk_score: np.ndarray    # (n, k) float32
    features: np.ndarray      # (n, F) float32: the specialist's own fusion features
    feature_names: tuple[str, ...]
    ocr: np.ndarray           # (n, len(OCR_SUMMARY_NAMES)) float32

    @classmethod
    def load(cls, folder: str | Path, rows: tuple[int, int] | None = None) -> SpecialistRanking:
        """All parts of ``folder`` (or only the chunk ``rows`` = (start, end), renumbered from 0)."""
        meta, cat = load_chunked(folder, rows, "specialist scores",
                                 lambda _meta: "etalage submit --fusion FUSION ... (or etalage fusion fit)")
        row = cat["rows"] - (rows[0] if rows is not None else 0)
        return cls(meta["name"], row, cat["topk_class"], cat["topk_score"], cat["features"],
                   tuple(meta["feature_names"]), cat["ocr"])


def score_catalog(specialists: list[Specialist], predictions, catalog: Catalog, positions: np.ndarray, taxonomy,
                  engine, cache, md5: np.ndarray, out_dir: str | Path, shard: tuple[int, int] = (0, 1),
                  producer: str | None = None, progress: bool = True) -> None:
    """Score the products of the core's ``predictions`` (a ``CoreRanking``, or its folder: then one
    chunk at a time is loaded) that each specialist's gate lets through, into
    ``out_dir/NAME/part-*.npz``. Ranking row r is the product at ``positions[r]`` of ``catalog``.
    Finished chunks are skipped."""
    from etalage.core.predict import CoreRanking
    from etalage.specialists.readings import read_products
    from tqdm import tqdm

    out_dir = Path(out_dir)
    positions = np.asarray(positions, np.int64)
    if isinstance(predictions, CoreRanking):
        meta = predictions.meta
        chunk_of = lambda a, b: predictions.take(np.arange(a, b))  # noqa: E731
    else:
        meta = json.loads((Path(predictions) / "meta.json").read_text())
        chunk_of = lambda a, b: CoreRanking.load(predictions, (a, b))  # noqa: E731
    n_products, chunk = int(meta["n_products"]), int(meta["chunk"])
    shard_chunks = shard_chunk_ranges(n_products, chunk, shard)
    todo = {}  # specialist name -> its chunks still to score
    for spec in specialists:
        (out_dir / spec.name).mkdir(parents=True, exist_ok=True)
        done = list_parts(out_dir / spec.name)
        todo[spec.name] = {c for c in shard_chunks if c not in done}
    chunks = [c for c in shard_chunks if any(c in t for t in todo.values())]
    with tqdm(total=sum(b - a for a, b in chunks), unit="product", desc="specialists", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        for a, b in chunks:
            part = chunk_of(a, b)  # one load of the core's chunk, and one reading per product, for all
            read: dict[int, ProductReading] = {}
            for spec in specialists:
                if (a, b) not in todo[spec.name]:
                    continue
                rows = np.flatnonzero(spec.gate(part, taxonomy))
                wanted = positions[a + rows]
                new = np.array([p for p in wanted if int(p) not in read], np.int64)
                read.update(zip(new.tolist(), read_products(catalog, new, engine, cache, md5), strict=True))
                _score_chunk(spec, [read[int(p)] for p in wanted], a + rows, out_dir / spec.name, a, b)
            bar.update(b - a)
    for spec in specialists:
        _write_meta(out_dir / spec.name, spec, n_products, chunk, list(spec.feature_names), producer)


def _score_chunk(spec: Specialist, readings: list[ProductReading], rows: np.ndarray, folder: Path, a: int,
                 b: int) -> None:
    """One part file: the specialist's top classes, features and OCR summary for the gated ``rows``
    of products a..b (an empty part when nothing was gated or the plugin failed, already warned)."""
    names = list(spec.feature_names)
    result = safe_predict(spec, readings) if len(rows) else None
    if result is None:
        rows = rows[:0]
        top_c, top_s = np.zeros((0, SPECIALIST_TOPK), np.int32), np.zeros((0, SPECIALIST_TOPK), np.float32)
        feats = np.zeros((0, len(names)), np.float32)
        ocr = np.zeros((0, len(OCR_SUMMARY_NAMES)), np.float32)
    else:
        top_c, top_s = result.topk(SPECIALIST_TOPK)
        feats, ocr = result.features.astype(np.float32), ocr_summary(readings)
        if list(result.feature_names) != names:
            raise ConfigError(f"specialist {spec.name!r} returned features {list(result.feature_names)} "
                              f"but declares feature_names {names}; fusion needs the same columns "
                              f"for every product")
    save_npz_atomic(part_path(folder, a, b), rows=np.asarray(rows, np.int64), topk_class=top_c.astype(np.int32),
                    topk_score=top_s.astype(np.float32), features=feats, ocr=ocr)


def _write_meta(folder: Path, spec: Specialist, n_products: int, chunk: int, names: list[str],
                producer: str | None) -> None:
    meta = {"name": spec.name, "n_products": n_products, "chunk": chunk, "feature_names": names,
            "producer": producer}
    with atomic_write(folder / "meta.json", "w") as fh:
        json.dump(meta, fh, indent=2)
