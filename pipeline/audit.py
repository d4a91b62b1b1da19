"""``etalage audit``: the labelled products whose category the core disputes, most suspicious first, for
a catalogue team to check.

Every product is scored by a network that never trained on it: with fold runs (``train --folds K``) each
by the run that held its fold out, so the whole catalogue is audited; with a single run only its
validation products (the report says so). Several models are averaged (``check_compatible`` rules).
Confident learning on those rankings (``etalage.core.confident``) flags the suspects. Outputs:
``AUDIT/suspects.parquet`` and ``.csv`` (product id, given and suggested category with names and
probabilities, suspicion, the rule), ``AUDIT/audit.html`` (the top suspects as cards: pictures, given vs
suggested, the core's top-5, the specialists' votes where they looked) and ``AUDIT/report.json``.
"""

from __future__ import annotations

import csv
import html
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog
from etalage.chunks import chunk_ranges
from etalage.compute import Compute
from etalage.core.confident import find_suspects
from etalage.core.ensemble import mean_ranking, open_models
from etalage.core.predict import PredictOptions
from etalage.errors import DataError
from etalage.files import atomic_write, write_json_atomic
from etalage.ocr.cache import default_cache_path
from etalage.pipeline.engine import Engine, LocalEngine
from etalage.pipeline.page import picture_tags, write_page

log = logging.getLogger(__name__)

RULE = "confident learning (given label under its class's self-confidence, another class above its own)"


@dataclass
class AuditOptions:
    """How an audit runs: suspects shown on the page (``limit``), classes kept per product (``topk``; the rest
    bounded by the K-th), the core's test-time augmentation, fitted ``specialists`` whose votes the cards show
    and their OCR cache (None: the default beside the dump)."""

    limit: int = 50
    topk: int = 20
    tta: str = "none"
    specialists: Path | None = None
    ocr_cache: Path | None = None


def audit(runs, data: str | Path, out: str | Path, options: AuditOptions | None = None,
          compute: Compute | None = None, engine: Engine | None = None) -> dict:
    """Audit the labelled dump ``data`` with the core models ``runs`` into the folder ``out``, the core's
    predictions made on ``engine`` (default: this machine); returns the report (also ``out/report.json``).

    >>> report = audit("runs/folds", "train.bson", "audit/")
    >>> report["flagged"], report["outputs"]["audit.html"]
    """
    from etalage.pipeline.cores import HeldOutJob, holdout_rankings

    options, compute = options or AuditOptions(), compute or Compute()
    engine = engine or LocalEngine(compute.progress)
    models = open_models([runs] if isinstance(runs, (str, Path)) else list(runs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    taxonomy = models[0].runs[0].taxonomy()
    trained_on = Path(models[0].config()["train"]).resolve()
    if trained_on != Path(data).resolve():
        raise DataError(f"{data}: the runs were trained on {trained_on}; audit the dump they were trained on, whose "
                        f"products they predict out of fold")
    catalog = Catalog.open(data, taxonomy, md5=options.specialists is not None, progress=compute.progress,
                           cache_dir=compute.cache_dir)
    catalog.require_labels()
    t0 = time.perf_counter()
    folds = models[0].is_folds
    protocol = (f"every product, out of fold ({len(models[0].runs)} fold runs)" if folds else
                "the run's validation products only (train with --folds K to audit every product)")
    log.info("[1/3] core predictions: %s", protocol)
    job = HeldOutJob(catalog, out / "core", PredictOptions(options.topk), options.tta,
                     f"etalage audit --data {data} --out {out}")
    positions, per_model, stats = holdout_rankings(models, job, compute, engine)
    stats.save(out)
    ranking = mean_ranking(per_model)
    labels = taxonomy.indices_of(catalog.category_ids[positions]).astype(np.int64)
    log.info("[2/3] confident learning over %d products x top-%d", len(positions), ranking.topk_class.shape[1])
    sus = find_suspects(ranking.topk_class, ranking.topk_prob, labels, taxonomy.n_classes)
    rows = _suspect_rows(sus, positions, labels, catalog, taxonomy)
    _write_suspects(out, rows)
    shown = sus.flagged[:options.limit]
    votes = _specialist_votes(options, ranking.take(shown), catalog, positions[shown], taxonomy, out, compute,
                              engine) if options.specialists is not None and len(shown) else {}
    log.info("[3/3] audit.html: the top %d suspects", len(shown))
    _page(out / "audit.html", rows[:options.limit], ranking, shown, positions, catalog, taxonomy, votes,
          {"data": str(data), "scored": len(positions), "flagged": len(sus.flagged), "protocol": protocol})
    report = {"data": str(data), "runs": [str(m.path) for m in models], "protocol": protocol,
              "products": len(catalog), "scored": len(positions), "flagged": len(sus.flagged),
              "flagged_share": len(sus.flagged) / max(1, len(positions)), "expected_issues": sus.expected_issues,
              "rule": RULE, "topk": int(ranking.topk_class.shape[1]), "seconds": time.perf_counter() - t0,
              "outputs": {k: str(out / k) for k in ("suspects.parquet", "suspects.csv", "audit.html")}}
    write_json_atomic(out / "report.json", report)
    return report


COLUMNS = ("rank", "product_id", "given_category_id", "given_category", "given_probability",
           "suggested_category_id", "suggested_category", "suggested_probability", "suspicion", "rule")


def _suspect_rows(sus, positions: np.ndarray, labels: np.ndarray, catalog: Catalog, taxonomy) -> list[dict]:
    def name(c: int) -> str:
        return " / ".join(taxonomy.names_of(int(c)))

    out = []
    for rank, r in enumerate(sus.flagged, start=1):
        g, s = int(labels[r]), int(sus.suggested[r])
        out.append({"rank": rank, "product_id": int(catalog.product_ids[positions[r]]),
                    "given_category_id": int(taxonomy.category_ids[g]), "given_category": name(g),
                    "given_probability": float(sus.given_prob[r]), "suggested_category_id": int(taxonomy.category_ids[s]),
                    "suggested_category": name(s), "suggested_probability": float(sus.suggested_prob[r]),
                    "suspicion": float(sus.score[r]), "rule": RULE, "row": int(r)})
    return out


def _write_suspects(out: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: [r[c] for r in rows] for c in COLUMNS},
                     schema=pa.schema([("rank", pa.int32()), ("product_id", pa.int64()),
                                       ("given_category_id", pa.int64()), ("given_category", pa.string()),
                                       ("given_probability", pa.float32()), ("suggested_category_id", pa.int64()),
                                       ("suggested_category", pa.string()), ("suggested_probability", pa.float32()),
                                       ("suspicion", pa.float32()), ("rule", pa.string())]))
    with atomic_write(out / "suspects.parquet", "wb") as fh:
        pq.write_table(table, fh)
    with atomic_write(out / "suspects.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows([r[c] for c in COLUMNS] for r in rows)


def _specialist_votes(options: AuditOptions, ranking, catalog, positions, taxonomy, out: Path, compute: Compute,
                      engine: Engine) -> dict:
    """Each fitted specialist's top-3 for the shown suspects its gate lets through: {row: {name: [...]}}."""
    from etalage.pipeline.stages import SpecialistsJob, SpecialistsStage, specialist_rankings
    from etalage.specialists.runner import fitted_names

    names = fitted_names(options.specialists)
    if not names:
        return {}
    folder = out / "specialists"
    cache = Path(options.ocr_cache or default_cache_path(catalog.path, compute.cache_dir))
    job = SpecialistsJob(Path(options.specialists), names, cache, ranking, folder, positions,
                         producer=f"etalage audit --specialists {options.specialists}")
    stage = SpecialistsStage(catalog, job, taxonomy)
    stage.claim()
    engine.run([stage], chunk_ranges(len(positions), job.chunk), "specialists")
    votes: dict[int, dict] = {}
    for sr in specialist_rankings(folder, names):
        for j, r in enumerate(sr.rows):
            votes.setdefault(int(r), {})[sr.name] = [(" / ".join(taxonomy.names_of(int(c))[1:]), float(s))
                                                     for c, s in zip(sr.topk_class[j, :3], sr.topk_score[j, :3],
                                                                     strict=True) if c >= 0]
    return votes


def _page(path: Path, rows: list[dict], ranking, shown: np.ndarray, positions: np.ndarray, catalog, taxonomy,
          votes: dict, meta: dict) -> None:
    cards = []
    for i, row in enumerate(rows):
        r = int(shown[i])
        pics = picture_tags(catalog.picture_bytes(int(positions[r])), f"picture of {row['product_id']}")
        top5 = "".join(
            f'<li class="{"given" if int(c) == taxonomy.index_of(row["given_category_id"]) else ""}">'
            f'{html.escape(" / ".join(taxonomy.names_of(int(c))[1:]))} <small>{float(p):.3f}</small></li>'
            for c, p in zip(ranking.topk_class[r, :5], ranking.topk_prob[r, :5], strict=True) if c >= 0)
        specs = "".join(f'<div><h3>{html.escape(n)}</h3><ol>' + "".join(
            f"<li>{html.escape(c)} <small>{s:.3f}</small></li>" for c, s in v) + "</ol></div>"
            for n, v in votes.get(i, {}).items())
        cards.append(
            f'<div class="card" data-rank="{row["rank"]}"><div class="pics">{pics}</div><div>'
            f'<h3>#{row["rank"]} &middot; product {row["product_id"]} &middot; suspicion {row["suspicion"]:.3f}</h3>'
            f'<p>filed under <b class="given">{html.escape(row["given_category"])}</b> '
            f'({row["given_probability"]:.3f})<br>the core says <b class="suggested">'
            f'{html.escape(row["suggested_category"])}</b> ({row["suggested_probability"]:.3f})</p>'
            f'<div class="cols"><div><h3>core top-5</h3><ol>{top5}</ol></div>{specs}</div></div></div>')
    head = html.escape(f"{meta['flagged']:,} suspects among {meta['scored']:,} products of {meta['data']} "
                       f"({meta['protocol']}); the {len(rows)} most suspicious below")
    body = (f"<h1>etalage audit: products the core files elsewhere</h1><p>{head}</p>"
            f'<div id="cards">{"".join(cards)}</div>')
    write_page(path, "etalage audit", body, [{k: r[k] for k in ("rank", "product_id")} for r in rows], _STYLE,
               'document.body.dataset.cards = document.querySelectorAll(".card").length;')


_STYLE = """
.card { border-left: 6px solid #e9a23b; }
.given { color: #d1495b; } .suggested { color: #2a9d4b; } li.given { font-weight: 600; }
"""
