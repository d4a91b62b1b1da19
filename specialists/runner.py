"""Specialists over a catalogue: fit them on training products, then score the products the core
routes to them, chunk by chunk, into files fusion reads.

Fitting leaves out the core's validation products: fusion trains on those, and a specialist that had
seen them would look better there than on the test set. Scoring follows the core's chunks
(``NAME/part-START-END.npz``, written atomically), so a killed run redoes at most one chunk and
``--shard i/n`` splits the work the same way as the core's predictions. Every call into a plugin goes
through ``etalage.specialists.guard``: a chunk where a plugin failed gets no part but a
``NAME/failed-START-END.json`` note, so fusion goes on without it there, the stage's summary counts
it, and the next run tries it again.

A specialist that needs ``"title"`` is fitted on, and scores, only products that have a title
(``with_title``): the others get no candidates from it and its features are missing for them in
fusion. ``max_train`` bounds the cost of reading and looking; a specialist that needs only titles
(no OCR, no pictures) is fitted on all of its training products.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog
from etalage.chunks import list_parts, load_chunked, part_done, part_path
from etalage.core.ranking import CoreRanking
from etalage.errors import ConfigError, StageOutputError
from etalage.files import atomic_write, save_npz_atomic, write_json_atomic
from etalage.ocr.features import OCR_SUMMARY_NAMES, text_summary
from etalage.specialists.base import ProductReading, Specialist
from etalage.specialists.guard import check_fitted, guarded_gate, guarded_predict
from etalage.specialists.persist import load_specialist
from etalage.specialists.plugins import available, create_specialist, uses_old_contract
from etalage.specialists.readings import read_products

log = logging.getLogger(__name__)

SPECIALIST_TOPK = 10   # classes kept per product and specialist (all later stages need)
FIT_STAMP = "fit.json"
TRAIN_POSITIONS = "train_positions.npy"  # the training products a specialist was fitted on


def with_title(spec: Specialist, catalog: Catalog, positions: np.ndarray) -> np.ndarray:
    """Boolean mask over ``positions``: the products ``spec`` may look at as far as titles go (all of
    them, unless it needs a title: then those that have one)."""
    positions = np.asarray(positions, np.int64)
    return catalog.titled[positions] if "title" in spec.needs else np.ones(len(positions), bool)


def train_cap(spec: Specialist, max_train: int | None) -> int | None:
    """The training products ``spec`` is fitted on at most: ``max_train`` bounds the cost of OCR and of
    decoding pictures, so a specialist that needs neither (titles only) takes them all (None)."""
    return max_train if {"text", "pictures"} & set(spec.needs) else None


# ---------------------------------------------------------------------------------------------
# fitting


@dataclass
class FitSettings:
    """Which training products specialists are fitted on: never those at ``exclude`` (the core's validation
    products: fusion learns from them), up to ``max_train`` per specialist that reads or looks (``train_cap``;
    None: all), drawn with ``seed``; ``options``: constructor arguments per specialist name."""

    exclude: np.ndarray | None = None
    max_train: int | None = 2000
    seed: int = 0
    options: dict[str, dict] = field(default_factory=dict)


def fit_specialists(train: Catalog, taxonomy, names: list[str], out: str | Path, engine, cache,
                    settings: FitSettings | None = None, progress: bool = True) -> list[dict]:
    """Fit each named specialist on the training products of its groups (``FitSettings``), reading covers with
    the OCR ``engine`` through ``cache``; saved under ``out/NAME``. A specialist already fitted with the same
    settings is kept (a rerun only fits what is missing). A plugin that fails on its own training products is
    refused here (``ConfigError``)."""
    st = settings or FitSettings()
    exclude, max_train, seed, options = st.exclude, st.max_train, st.seed, st.options
    out = Path(out)
    labels = taxonomy.indices_of(train.category_ids)
    allowed = np.ones(len(train), bool)
    if exclude is not None:
        allowed[np.asarray(exclude, np.int64)] = False
    options = options or {}
    rows = []
    for name in names:
        spec = create_specialist(name, **options.get(name, {}))
        cap = train_cap(spec, max_train)
        settings = {"train": str(train.path), "max_train": cap, "seed": seed, "excluded": int((~allowed).sum()),
                    "options": options.get(name, {}), "needs": list(spec.needs)}
        if "text" in spec.needs:
            settings.update(engine=engine.name, engine_key=engine.cache_key, engine_options=engine.options)
        folder = out / name
        stamp = folder / FIT_STAMP
        if stamp.exists() and json.loads(stamp.read_text()).get("settings") == settings:
            rows.append(json.loads(stamp.read_text()))
            log.info("specialist %s: reusing %s", name, folder)
            continue
        eligible = np.isin(labels, spec.classes(taxonomy)) & allowed & with_title(spec, train, np.arange(len(train)))
        pos = np.flatnonzero(eligible)
        if len(pos) < 2:
            titled = " with a title (pack the listing with its title column)" if "title" in spec.needs else ""
            raise ConfigError(f"specialist {name!r}: {len(pos)} training products{titled} in "
                              f"{', '.join(spec.groups)} of {train.path}; it needs at least 2")
        rng = np.random.default_rng(seed)
        pos = np.sort(rng.choice(pos, len(pos) if cap is None else min(cap, len(pos)), replace=False))
        readings = read_products(train, pos, engine, cache, spec.needs, progress=progress)
        if spec.fit(readings, labels[pos], taxonomy) is None:
            warnings.warn(f"specialist {name!r}: fit returned None; it should return self (the pre-0.2 contract, "
                          f"deprecated)", DeprecationWarning, stacklevel=2)
        check_fitted(spec, readings, taxonomy)
        spec.save(folder)
        with atomic_write(folder / TRAIN_POSITIONS, "wb") as fh:  # fusion must not learn from these products
            np.save(fh, pos.astype(np.int64))
        row = {"specialist": name, "groups": list(spec.groups), "train_products": int(len(pos)), "settings": settings}
        write_json_atomic(stamp, row)
        rows.append(row)
    return rows


def trained_positions(folder: str | Path, train: str | Path) -> np.ndarray:
    """The positions in ``train`` of the products every specialist under ``folder`` was fitted on (their
    scores of those products are not honest; fusion leaves them out). Empty for specialists fitted on
    another file."""
    out = [np.zeros(0, np.int64)]
    for name in fitted_names(folder):
        stamp = json.loads((Path(folder) / name / FIT_STAMP).read_text())
        path = Path(folder) / name / TRAIN_POSITIONS
        if path.exists() and Path(stamp["settings"]["train"]).resolve() == Path(train).resolve():
            out.append(np.load(path, allow_pickle=False).astype(np.int64))
    return np.unique(np.concatenate(out))


def fitted_names(folder: str | Path) -> list[str]:
    return sorted(p.parent.name for p in Path(folder).glob(f"*/{FIT_STAMP}"))


def fit_settings(folder: str | Path) -> list[dict]:
    """The settings every specialist under ``folder`` was fitted with (``fit.json``)."""
    return [json.loads((Path(folder) / n / FIT_STAMP).read_text())["settings"] for n in fitted_names(folder)]


def load_fitted(folder: str | Path, names: list[str] | None = None) -> list[Specialist]:
    """The specialists fitted under ``folder`` (one sub-folder each, as ``fit_specialists`` writes)."""
    folder = Path(folder)
    found = fitted_names(folder)
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
        factory = entries[name].factory
        if uses_old_contract(factory):
            out.append(factory.load(folder / name))
        else:
            out.append(load_specialist(factory, folder / name))
    return out


# ---------------------------------------------------------------------------------------------
# scoring


def failed_path(folder: str | Path, start: int, end: int) -> Path:
    return Path(folder) / f"failed-{start:09d}-{end:09d}.json"


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
        """All parts of ``folder`` (or only the chunk ``rows`` = (start, end), renumbered from 0). A chunk
        where the plugin failed reads as one where it looked at nothing."""
        folder = Path(folder)
        if rows is not None and failed_path(folder, *rows).exists() and (rows not in list_parts(folder)):
            meta = json.loads((folder / "meta.json").read_text())
            return cls.empty(meta["name"], tuple(meta["feature_names"]))
        meta, cat = load_chunked(folder, rows, "specialist scores",
                                 lambda _meta: "etalage submit --fusion FUSION ... (or etalage fusion fit)")
        row = cat["rows"] - (rows[0] if rows is not None else 0)
        return cls(meta["name"], row, cat["topk_class"], cat["topk_score"], cat["features"],
                   tuple(meta["feature_names"]), cat["ocr"])

    def without(self, rows: np.ndarray) -> SpecialistRanking:
        """The same view, as if the specialist had not looked at the products ``rows`` (fit blanks some
        products' titles so that fusion learns the case of a listing without one)."""
        keep = ~np.isin(self.rows, np.asarray(rows, np.int64))
        return SpecialistRanking(self.name, self.rows[keep], self.topk_class[keep], self.topk_score[keep],
                                 self.features[keep], self.feature_names, self.ocr[keep])

    @classmethod
    def empty(cls, name: str, feature_names: tuple[str, ...]) -> SpecialistRanking:
        return cls(name, np.zeros(0, np.int64), np.zeros((0, SPECIALIST_TOPK), np.int32),
                   np.zeros((0, SPECIALIST_TOPK), np.float32), np.zeros((0, len(feature_names)), np.float32),
                   feature_names, np.zeros((0, len(OCR_SUMMARY_NAMES)), np.float32))


@dataclass
class ChunkScore:
    """What scoring one chunk did: products scored per specialist, the specialists whose plugin failed
    there (no part: the next run tries again), and whether a chunk failed before now succeeded (fusion,
    which went on without that specialist there, must redo it)."""

    scored: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    recovered: bool = False


class SpecialistScorer:
    """The fitted ``specialists`` scoring, chunk by chunk, the products of a core ranking their gates let
    through, into ``out_dir/NAME/part-*.npz``; the covers read by the OCR ``engine`` through ``cache``.
    Every call into a plugin is guarded (``etalage.specialists.guard``)."""

    def __init__(self, specialists: list[Specialist], taxonomy, out_dir: str | Path, engine=None, cache=None):
        self.specialists, self.taxonomy, self.out_dir = specialists, taxonomy, Path(out_dir)
        self.engine, self.cache = engine, cache

    def claim(self, n_products: int, chunk: int, producer: str | None) -> None:
        """Each specialist's folder and its ``meta.json`` (what fusion and explain read back)."""
        for spec in self.specialists:
            (self.out_dir / spec.name).mkdir(parents=True, exist_ok=True)
            _write_meta(self.out_dir / spec.name, spec, n_products, chunk, producer)

    def todo(self, rows: tuple[int, int]) -> bool:
        return not all(part_done(self.out_dir / s.name, rows) for s in self.specialists)

    def score(self, part: CoreRanking, catalog: Catalog, positions: np.ndarray, rows: tuple[int, int]) -> ChunkScore:
        """Chunk ``rows`` = (a, b): ``part`` is the core ranking of rows a..b, ranking row r the product at
        ``positions[r]`` of ``catalog``. One reading per product and kind of needs (a title-only specialist costs
        no OCR); a specialist that reads titles looks only at products that have one."""
        a, b = rows
        done = ChunkScore()
        read: dict[tuple[str, ...], dict[int, ProductReading]] = {}
        for spec in self.specialists:
            folder = self.out_dir / spec.name
            if part_done(folder, rows):
                continue
            mask = guarded_gate(spec, part, self.taxonomy)
            result = None
            if mask is not None:
                gated = np.flatnonzero(mask & with_title(spec, catalog, positions[a:b]))
                wanted = positions[a + gated]
                cached = read.setdefault(tuple(spec.needs), {})
                new = np.array([p for p in wanted if int(p) not in cached], np.int64)
                cached.update(zip(new.tolist(), read_products(catalog, new, self.engine, self.cache, spec.needs),
                                  strict=True))
                result = _score_chunk(spec, [cached[int(p)] for p in wanted], a + gated, folder, a, b, self.taxonomy)
            if result is None:
                write_json_atomic(failed_path(folder, a, b), {"specialist": spec.name, "chunk": [a, b]})
                done.failed.append(spec.name)
                continue
            done.scored[spec.name] = result
            if failed_path(folder, a, b).exists():
                failed_path(folder, a, b).unlink()
                done.recovered = True
        return done


def _score_chunk(spec: Specialist, readings: list[ProductReading], rows: np.ndarray, folder: Path, a: int, b: int,
                 taxonomy) -> int | None:
    """One part file: the specialist's top classes, features and OCR summary for the gated ``rows``
    of products a..b (NaN, missing, where it does not read: it saw no OCR, so it cannot say that
    nothing was read). Returns the products scored, or None when the plugin failed (already warned)."""
    names = list(spec.feature_names)
    if len(rows):
        result = guarded_predict(spec, readings, taxonomy)
        if result is None:
            return None
        top_c, top_s = result.topk(SPECIALIST_TOPK)
        feats = result.features
        ocr = np.stack([text_summary(r.boxes) for r in readings]) if "text" in spec.needs else \
            np.full((len(readings), len(OCR_SUMMARY_NAMES)), np.nan, np.float32)
    else:
        top_c, top_s = np.zeros((0, SPECIALIST_TOPK), np.int32), np.zeros((0, SPECIALIST_TOPK), np.float32)
        feats = np.zeros((0, len(names)), np.float32)
        ocr = np.zeros((0, len(OCR_SUMMARY_NAMES)), np.float32)
    k = SPECIALIST_TOPK
    if top_c.shape[1] < k:  # a specialist with fewer classes than k: pad so every part has k columns
        pad = k - top_c.shape[1]
        top_c = np.pad(top_c, ((0, 0), (0, pad)), constant_values=-1)
        top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=0)
    save_npz_atomic(part_path(folder, a, b), rows=np.asarray(rows, np.int64), topk_class=top_c.astype(np.int32),
                    topk_score=top_s.astype(np.float32), features=feats, ocr=ocr)
    return int(len(rows))


def _write_meta(folder: Path, spec: Specialist, n_products: int, chunk: int, producer: str | None) -> None:
    meta = {"name": spec.name, "n_products": n_products, "chunk": chunk, "feature_names": list(spec.feature_names),
            "producer": producer}
    write_json_atomic(folder / "meta.json", meta)
