"""``etalage explain``: one static HTML page (pictures embedded) showing where the pipeline goes wrong
on a labelled set that went through ``submit`` or ``fusion predict``.

A core-only ``submit --run`` work folder gets the same page with what it holds: the pictures, the core's top-5
and the truth, filtered by level-1 group and by whether the core was right (a catalogue team looks at its
first model's mistakes before it fits any second level).

Per product: its pictures with the OCR boxes drawn on them and the text read, the core's top-5, each
specialist's vote, fusion's top-5 with the features that moved its choice (LightGBM's TreeSHAP
contributions), and the truth. Filters by level-1 group and by what fusion did (wrong at core / fixed by
fusion / broken by fusion / wrong at both / right at both), and a summary per group. The page needs no
server and no network: open it in a browser.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.submission import answer_key_classes
from etalage.compute import Compute
from etalage.core.ranking import CoreRanking
from etalage.core.rundir import RunDir
from etalage.errors import DataError
from etalage.fusion.model import FusionModel, fused_top1
from etalage.fusion.neighbours import load_indexes
from etalage.ocr.cache import OcrCache, default_cache_path
from etalage.pipeline.page import picture_src, write_page
from etalage.pipeline.plan import PredictPlan
from etalage.pipeline.predict import load_fused
from etalage.pipeline.stages import FusionInputs, chunk_table, specialist_rankings, training_signals
from etalage.pipeline.workdir import WorkDir

log = logging.getLogger(__name__)

STATUSES = {"fixed": "fixed by fusion", "broken": "broken by fusion", "wrong": "wrong at both",
            "right": "right at both"}
CORE_STATUSES = {"wrong": "wrong at core", "right": "right at core"}


def _truth(catalog: Catalog, taxonomy: Taxonomy, labels: str | Path | None) -> np.ndarray:
    """Class index per product (-1 where the answer key has none)."""
    if labels is None:
        if not catalog.has_labels:
            raise DataError(f"{catalog.path} has no category_id: pass --labels ANSWER_KEY.csv")
        return taxonomy.indices_of(catalog.category_ids)
    return answer_key_classes(labels, catalog.product_ids, taxonomy)


def _status(core_ok: np.ndarray, fused_ok: np.ndarray) -> np.ndarray:
    return np.where(core_ok & fused_ok, "right", np.where(core_ok, "broken", np.where(fused_ok, "fixed", "wrong")))


def _choose(status: np.ndarray, known: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Every product fusion changed the verdict of, then the wrong ones, then right ones, up to ``limit``."""
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for kind in ("fixed", "broken", "wrong", "right"):
        rows = np.flatnonzero((status == kind) & known)
        picked.extend(rng.permutation(rows)[: max(0, limit - len(picked))].tolist())
    return np.sort(np.array(picked, np.int64))


def _finite_or_none(value) -> float | None:
    """A feature's value for the page: NaN (no specialist looked) is shown as "missing" (JSON has no NaN)."""
    value = float(value)
    return value if np.isfinite(value) else None


def _contributions(inputs: FusionInputs, rows: np.ndarray, fused_top: np.ndarray, chunk: int) -> dict[int, list]:
    """Product row -> [(feature, value, contribution)] of its fused top class, the four that moved it most."""
    plan = inputs.plan
    model = FusionModel.load(plan.model)
    indexes = load_indexes(plan.model, len(plan.models[0].runs)) if plan.neighbours else []
    out: dict[int, list] = {}
    for a in sorted({int(r) // chunk * chunk for r in rows}):
        b = min(a + chunk, len(inputs.catalog))
        _, table = chunk_table(inputs, indexes, (a, b))
        contrib = model.contributions(table)
        for r in rows[(rows >= a) & (rows < b)]:
            hit = np.flatnonzero((table.owner == r - a) & (table.classes == fused_top[r]))
            if not len(hit):
                continue
            c = contrib[hit[0]]
            top = np.argsort(-np.abs(c))[:4]
            out[int(r)] = [(model.feature_names[j], _finite_or_none(table.features[model.feature_names[j]][hit[0]]),
                            float(c[j]))
                           for j in top]
    return out


def explain(work: str | Path, out: str | Path, labels: str | Path | None = None, limit: int = 400,
            ocr_cache: str | Path | None = None, compute: Compute | None = None) -> dict:
    """Write the page for the products of ``work`` (a finished ``submit`` or ``fusion predict`` folder, or a
    core-only ``submit --run`` one); returns a summary (products shown, per-group figures).

    >>> explain("submission_work", "explain.html", labels="test_labels.csv")["groups"][0]
    """
    compute = compute or Compute()
    work = WorkDir(work)
    core_only = None if work.stamp_file.exists() else core_only_predictions(work)
    if core_only is not None:
        return _explain_core(core_only, out, labels, limit, compute)
    job = work.job("etalage submit --fusion FUSION --data FILE.bson --out submission.csv")
    plan = PredictPlan.from_model(job["model"])
    taxonomy = plan.taxonomy()
    catalog = Catalog.open(job["data"], md5=True, progress=compute.progress, cache_dir=compute.cache_dir)
    truth = _truth(catalog, taxonomy, labels)
    fused = load_fused(work, len(catalog))
    core = CoreRanking.load(work.core)
    fused_top = fused_top1(fused["topk_class"], fused["core_top1"])
    known = truth >= 0
    status = _status(core.top1() == truth, fused_top == truth)
    rows = _choose(status, known, limit)
    train = Catalog.open(plan.train, taxonomy, md5=True, progress=compute.progress, cache_dir=compute.cache_dir)
    inputs = FusionInputs(plan, work, catalog, taxonomy, training_signals(train, taxonomy, plan.ks))
    moved = _contributions(inputs, rows, fused_top, int(job["chunk"]))
    cache, engine_key = _ocr_cache(plan, catalog, ocr_cache, compute)
    specs = {s.name: s for s in specialist_rankings(work.specialists, list(plan.specialist_names))}
    try:
        records = [_record(int(r), catalog, taxonomy, truth, status, core, fused, specs, moved, (cache, engine_key))
                   for r in rows]
    finally:
        if cache is not None:
            cache.close()
    summary = _summary(taxonomy, truth, core.top1(), fused_top, known)
    render(out, records, summary, {"data": str(job["data"]), "fusion": str(plan.model), "products": int(known.sum()),
                                   "shown": len(records)})
    return {"page": str(out), "shown": len(records), "products": int(known.sum()), "groups": summary}


def core_only_predictions(work: WorkDir) -> tuple[Path, dict] | None:
    """Where a core-only ``submit --run`` left the core's ranking, and the stamp naming its run and data: the
    work folder itself for one run; ``core/`` (each run's own predictions under ``core_runs/``) for several.
    None when the folder holds neither."""
    for core_dir, stamps in ((work.path, [work.path / "meta.json"]),
                             (work.core, sorted(work.core_runs.glob("*/run*/meta.json")))):
        if (core_dir / "meta.json").exists() and stamps and stamps[0].exists():
            meta = json.loads(stamps[0].read_text())
            if "run" in meta and "data" in meta:
                return core_dir, meta
    return None


def _explain_core(found: tuple[Path, dict], out, labels, limit: int, compute: Compute) -> dict:
    """The page of a core-only submission: no specialists, no fusion; products the core got wrong first."""
    core_dir, meta = found
    taxonomy = RunDir(meta["run"]).taxonomy()
    catalog = Catalog.open(meta["data"], progress=compute.progress, cache_dir=compute.cache_dir)
    truth = _truth(catalog, taxonomy, labels)
    core = CoreRanking.load(core_dir)
    if len(core) != len(catalog):
        raise DataError(f"{core_dir}: predictions of {len(core)} products, {catalog.path} has {len(catalog)}; "
                        f"rerun `etalage submit --run ... --data {catalog.path}` into a new --work folder")
    known = truth >= 0
    status = np.where(core.top1() == truth, "right", "wrong")
    rows = _choose(status, known, limit)
    records = [_record(int(r), catalog, taxonomy, truth, status, core, None, {}, {}, (None, None)) for r in rows]
    summary = _summary(taxonomy, truth, core.top1(), None, known)
    render(out, records, summary, {"data": str(catalog.path), "run": str(meta["run"]), "products": int(known.sum()),
                                   "shown": len(records)})
    return {"page": str(out), "shown": len(records), "products": int(known.sum()), "groups": summary}


def _ocr_cache(plan: PredictPlan, catalog: Catalog, ocr_cache, compute: Compute) -> tuple[OcrCache | None, str | None]:
    """The OCR cache the specialists read through, and their engine's key (None, None when none reads)."""
    from etalage.specialists.runner import fit_settings

    engines = {s.get("engine_key") for s in fit_settings(plan.specialists)} if plan.specialists else set()
    engine_key = next(iter(engines - {None}), None)
    if engine_key is None:
        return None, None
    return OcrCache(ocr_cache or default_cache_path(catalog.path, compute.cache_dir)), engine_key


def _record(r: int, catalog: Catalog, taxonomy: Taxonomy, truth, status, core, fused, specs: dict, moved: dict,
            reading: tuple) -> dict:
    """What the page shows of product row ``r``."""
    cache, engine_key = reading

    def names(c: int) -> str:
        return " / ".join(taxonomy.names_of(int(c))[1:]) if c >= 0 else "-"

    pics = catalog.picture_bytes(r)
    boxes, md5s = {}, [None] * len(pics)
    if cache is not None:
        first = int(catalog.index.products["first_picture"][r])
        md5s = [catalog.md5[first + k].tobytes() for k in range(len(pics))]
        boxes = cache.get_many(md5s, engine_key)
    votes = {}
    for name, sr in specs.items():
        hit = np.flatnonzero(sr.rows == r)
        if len(hit):
            j = hit[0]
            votes[name] = [(names(c), float(s)) for c, s in zip(sr.topk_class[j, :3], sr.topk_score[j, :3],
                                                                strict=True) if c >= 0]
    return {
        "id": int(catalog.product_ids[r]), "group": taxonomy.level1_names[taxonomy.level1_of[truth[r]]],
        "status": str(status[r]), "truth": names(truth[r]),
        "core": [(names(c), float(p)) for c, p in zip(core.topk_class[r, :5], core.topk_prob[r, :5], strict=True)],
        "fused": None if fused is None else [(names(c), float(s)) for c, s in zip(fused["topk_class"][r],
                                                                                 fused["topk_score"][r], strict=True)
                                              if c >= 0],
        "specialists": votes, "moved": moved.get(r, []),
        "pictures": [{"src": picture_src(p),
                      "boxes": [{"quad": np.asarray(b.quad).round(1).tolist(), "text": b.text,
                                 "conf": round(float(b.confidence), 2)} for b in boxes.get(m, [])]}
                     for p, m in zip(pics, md5s, strict=True)],
    }


def _summary(taxonomy, truth, core_top, fused_top, known) -> list[dict]:
    """Per level-1 group: products, the core's top-1 and, with ``fused_top``, fusion's and what it changed."""
    out = []
    l1 = np.where(known, taxonomy.level1_of[np.where(known, truth, 0)], -1)
    for g in np.unique(l1[known]):
        m = l1 == g
        c = core_top[m] == truth[m]
        row = {"group": taxonomy.level1_names[g], "products": int(m.sum()), "core": float(c.mean())}
        if fused_top is not None:
            f = fused_top[m] == truth[m]
            row.update(fused=float(f.mean()), fixed=int((~c & f).sum()), broken=int((c & ~f).sum()))
        out.append(row)
    return sorted(out, key=lambda r: -r["products"])


def render(out: str | Path, records: list[dict], summary: list[dict], meta: dict) -> Path:
    """The page: data as JSON, drawn by a few lines of JavaScript (filters also read ``#group=..&status=..``).
    ``meta`` names the fusion model (``fusion``) or, for a core-only submission, the core run (``run``)."""
    fused = "fusion" in meta
    cells = ("core", "fused", "fixed", "broken") if fused else ("core",)
    rows = "".join(f"<tr><td>{html.escape(s['group'])}</td><td>{s['products']}</td>"
                   + "".join(f"<td>{s[k]:.3f}</td>" if isinstance(s[k], float) else f"<td>{s[k]}</td>" for k in cells)
                   + "</tr>" for s in summary)
    groups = "".join(f'<option value="{html.escape(s["group"])}">{html.escape(s["group"])}</option>' for s in summary)
    model = f"fusion model {meta['fusion']}" if fused else f"core run {meta['run']} (core only: no fusion)"
    head = html.escape(f"{meta['shown']} of {meta['products']} labelled products of {meta['data']}, {model}")
    titles = ("core top-1", "fusion top-1", "fixed by fusion", "broken by fusion") if fused else ("core top-1",)
    if fused:
        statuses = ('what fusion did <select id="status"><option value="">all</option><option value="core-wrong">'
                    "wrong at core</option>" + "".join(f'<option value="{k}">{v}</option>' for k, v in STATUSES.items()))
    else:
        statuses = ('the core <select id="status"><option value="">all</option>'
                    + "".join(f'<option value="{k}">{v}</option>' for k, v in CORE_STATUSES.items()))
    body = (f"<h1>etalage explain</h1><p>{head}</p>"
            '<table class="summary"><tr><th>level-1 group</th><th>products</th>'
            + "".join(f"<th>{t}</th>" for t in titles) + f"</tr>{rows}</table>"
            f'<div class="filters">group <select id="group"><option value="">all</option>{groups}</select> '
            f'{statuses}</select> <span id="count"></span></div><div id="cards"></div>')
    return write_page(out, "etalage explain", body, records, _STYLE, _SCRIPT)


_STYLE = """
table.summary td, table.summary th { padding: 2px 10px; text-align: right; }
table.summary td:first-child, table.summary th:first-child { text-align: left; }
.filters { margin: 1em 0; } .filters select { margin-right: 1em; }
.card.fixed { border-left: 6px solid #2a9d4b; } .card.broken { border-left: 6px solid #d1495b; }
.card.wrong { border-left: 6px solid #e9a23b; } .card.right { border-left: 6px solid #8ab; }
.pic { position: relative; width: 180px; height: 180px; flex: none; }
.box { position: absolute; border: 1px solid #e4008a; background: rgba(228,0,138,.08); }
.ok { color: #2a9d4b; font-weight: 600; } .words { color: #555; font-size: 12px; max-width: 360px; }
"""

_SCRIPT = """
const records = JSON.parse(document.getElementById("data").textContent);
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);
const list = (items, truth) => "<ol>" + items.map(([n, p]) =>
  `<li class="${n === truth ? "ok" : ""}">${esc(n)} <small>${p.toFixed(3)}</small></li>`).join("") + "</ol>";
function card(r) {
  const pics = r.pictures.map(p => `<div class="pic"><img src="${p.src}" alt="picture of ${r.id}">` +
    p.boxes.map(b => { const xs = b.quad.map(q => q[0]), ys = b.quad.map(q => q[1]);
      const x = Math.min(...xs), y = Math.min(...ys);
      return `<div class="box" title="${esc(b.text)} (${b.conf})" style="left:${x}px;top:${y}px;` +
        `width:${Math.max(...xs) - x}px;height:${Math.max(...ys) - y}px"></div>`; }).join("") + "</div>").join("");
  const words = r.pictures.flatMap(p => p.boxes.map(b => b.text)).join(" ");
  const specs = Object.entries(r.specialists).map(([n, v]) => `<div><h3>${esc(n)}</h3>${list(v, r.truth)}</div>`).join("");
  const moved = r.moved.map(([f, v, c]) => `<li>${esc(f)} = ${v === null ? "missing" : v.toFixed(3)} <small>(${c > 0 ? "+" : ""}${c.toFixed(2)})</small></li>`).join("");
  return `<div class="card ${r.status}" data-group="${esc(r.group)}" data-status="${r.status}">${pics}<div>` +
    `<h3>product ${r.id} &middot; truth: ${esc(r.truth)} &middot; ${esc(r.group)}</h3>` +
    `<div class="cols"><div><h3>core</h3>${list(r.core, r.truth)}</div>${specs}` +
    (r.fused === null ? "" : `<div><h3>fusion</h3>${list(r.fused, r.truth)}</div>` +
      `<div><h3>what moved fusion's choice</h3><ol>${moved}</ol></div>`) + `</div>` +
    (r.fused === null ? "" : `<div class="words">read: ${esc(words) || "(nothing)"}</div>`) + `</div></div>`;
}
document.getElementById("cards").innerHTML = records.map(card).join("");
function apply() {
  const g = document.getElementById("group").value, s = document.getElementById("status").value;
  let shown = 0;
  for (const el of document.querySelectorAll(".card")) {
    const st = el.dataset.status;
    const ok = (!g || el.dataset.group === g) && (!s || st === s || (s === "core-wrong" && (st === "fixed" || st === "wrong")));
    el.hidden = !ok; shown += ok;
  }
  document.getElementById("count").textContent = `${shown} shown`;
  document.body.dataset.shown = shown;
}
const params = new URLSearchParams(location.hash.slice(1));
for (const key of ["group", "status"]) if (params.get(key)) document.getElementById(key).value = params.get(key);
document.getElementById("group").onchange = document.getElementById("status").onchange = apply;
apply();
"""
