"""What each signal adds: product top-1 of the reranker fitted on each group of signals (k-fold
cross-validation over the fusion products), the fitted model's feature importance, candidate coverage;
markdown + PNG. Reads only the fusion folder's table and model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from etalage.errors import StageOutputError
from etalage.files import atomic_write, save_npz_atomic
from etalage.fusion.folder import FusionDir
from etalage.fusion.model import FusionModel, feature_groups
from etalage.fusion.table import CandidateTable
from etalage.progress import bar as progress_bar


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


SIGNAL_GROUPS = ("core", "ensemble", "neighbours", "hash", "id", "specialists")


def ablation_sets(groups: dict[str, list[str]], specialist_names=()) -> list[tuple[str, tuple[str, ...]]]:
    """(label, signal groups) of each ablation row: the core alone, the core with each signal (the other
    core models, the embedding neighbours, the picture hash, the product-id neighbours, the specialists,
    each specialist on its own), everything but the embedding neighbours, everything but the product-id
    neighbours, everything. Rows whose signals the table lacks are left out."""
    present = [g for g in SIGNAL_GROUPS if g == "core" or groups.get(g)]
    single = [("core + other core runs", "ensemble"), ("core + embedding neighbours", "neighbours"),
              ("core + hash", "hash"), ("core + id", "id"), ("core + specialists", "specialists")]
    sets = [("core", ("core",))] + [(label, ("core", g)) for label, g in single if g in present]
    if len(specialist_names) > 1:
        sets += [(f"core + {name}", ("core", f"specialist:{name}")) for name in specialist_names
                 if groups.get(f"specialist:{name}")]
    for label, left_out in (("all but embedding neighbours", "neighbours"), ("all but id", "id")):
        if left_out in present:
            sets.append((label, tuple(g for g in present if g != left_out)))
    sets.append(("all", tuple(present)))
    out: list[tuple[str, tuple[str, ...]]] = []
    for label, parts in sets:
        if all(parts != p for _, p in out):
            out.append((label, parts))
    return out


def ensemble_baselines(table: CandidateTable, truth: np.ndarray, folds: int = 5, seed: int = 0,
                       step: float = 0.1) -> dict:
    """The 2017 second levels' baselines on the fusion products, from the table's ``run_NAME_prob``
    columns: each run alone (the best one named), the plain mean of the runs' probabilities, and the
    weighted arithmetic and geometric means, their weights (a grid of ``step`` over the simplex) chosen
    out of fold: on the other ``folds`` folds of products, scored on the held-out one. Empty with one run."""
    from itertools import product as grid

    from etalage.core.ensemble import GEOMEAN_FLOOR

    runs = sorted(n[len("run_"):-len("_prob")] for n in table.features if n.startswith("run_") and n.endswith("_prob"))
    if len(runs) < 2:
        return {}
    truth = np.asarray(truth)
    n = len(truth)
    P = np.stack([table.features[f"run_{r}_prob"] for r in runs], 1).astype(np.float64)
    right = table.classes == truth[table.owner]
    order = np.lexsort((-np.arange(len(table.owner)), table.owner))
    starts = np.searchsorted(table.owner[order], np.arange(n))

    def top1_by_product(score: np.ndarray) -> np.ndarray:
        """Whether each product's best-scored candidate is its true class (ties: the first row)."""
        s = score[order]
        best = np.maximum.reduceat(s, starts)
        first = np.minimum.reduceat(np.where(s == np.repeat(best, np.diff(np.r_[starts, len(s)])),
                                             np.arange(len(s)), len(s)), starts)
        return right[order][first]

    ticks = np.round(np.arange(0, 1 + 1e-9, step), 6)
    weights = [np.array(w) for w in grid(ticks, repeat=len(runs)) if abs(sum(w) - 1) < 1e-6]
    fold = np.random.default_rng(seed).permutation(n) % folds
    out = {"runs": {r: float(top1_by_product(P[:, j]).mean()) for j, r in enumerate(runs)}}
    out["best_single_run"] = max(out["runs"], key=out["runs"].get)
    out["plain_mean"] = float(top1_by_product(P.mean(1)).mean())
    for key, transform in (("weighted_mean", P), ("weighted_geomean", np.log(np.maximum(P, GEOMEAN_FLOOR)))):
        hits = np.stack([top1_by_product(transform @ w) for w in weights])   # (weights, products)
        got = np.zeros(n, bool)
        chosen = []
        for f in range(folds):
            best = int(np.argmax(hits[:, fold != f].mean(1)))
            got[fold == f] = hits[best, fold == f]
            chosen.append([float(x) for x in weights[best]])
        out[key] = float(got.mean())
        out[f"{key}_weights_by_fold"] = chosen
    return out


def ablation(table: CandidateTable, truth: np.ndarray, core_top1: np.ndarray, kind: str = "ranker", folds: int = 3,
             seed: int = 0, specialist_names=(), lgb_params: dict | None = None, progress: bool = True) -> list[dict]:
    """Product top-1 of the reranker with each group of signals, by ``folds``-fold cross-validation over
    the fusion products (fit on the other folds, scored on the held-out one). Each fit is what
    ``etalage fusion fit`` does with those signals, of the fitted model's kind and LightGBM settings
    (``lgb_params``; its number of trees chosen again, since fewer signals may want fewer)."""
    groups = feature_groups(tuple(table.features), specialist_names)
    n = len(truth)
    fold = np.random.default_rng(seed).integers(0, folds, n)
    rows = [{"signals": "core top-1 (no reranker)", "features": 0, "top1": float((core_top1 == truth).mean())}]
    for label, parts in progress_bar(ablation_sets(groups, specialist_names), desc="ablation", enabled=progress):
        names = tuple(dict.fromkeys(n for g in parts for n in groups[g]))
        pred = np.full(n, -1, np.int32)
        for f in range(folds):
            held = fold == f
            sub, sub_truth, _ = _subtable(table, truth, ~held)
            model, _ = FusionModel.fit_best(sub, sub_truth, names, kinds=(kind,), seed=seed, lgb_params=lgb_params)
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
    folder, out = FusionDir(model_dir), Path(out)
    model = FusionModel.load(folder)
    table, truth, core_top1 = load_table(folder.table_file)
    # the signals the model was given (``fusion fit --without`` keeps some out of it, not out of the table)
    table = CandidateTable(table.owner, table.classes, {n: table.features[n] for n in model.feature_names})
    plan = model.plan
    rows = ablation(table, truth, core_top1, model.kind, folds, specialist_names=plan.specialist_names if plan else (),
                    lgb_params=(plan.lgb_chosen or plan.lgb_params) if plan else None, progress=progress)
    importance = model.importance()
    total = sum(importance.values()) or 1.0
    fit = json.loads(folder.fit_report_file.read_text()) if folder.fit_report_file.exists() else {}
    held = fit.get("held_out", "validation products")
    lines = [f"# Fusion report: {folder}", "",
             f"{len(truth):,} products ({held}), {len(table.owner):,} candidate rows, "
             f"candidate coverage {coverage(table, truth):.4f}; model kind {model.kind}.", "",
             f"## Ablation (product top-1, {folds}-fold cross-validation over those products)", "",
             "| signals | features | top-1 |", "|---|---:|---:|"]
    lines += [f"| {r['signals']} | {r['features']} | {r['top1']:.4f} |" for r in rows]
    base = ensemble_baselines(table, truth)
    if base:
        lines += ["", "## The 2017 second-level baselines on the same products", "",
                  "| combination of the core runs | top-1 |", "|---|---:|"]
        lines += [f"| {name} alone | {v:.4f} |" for name, v in base["runs"].items()]
        lines += [f"| plain mean of probabilities | {base['plain_mean']:.4f} |",
                  f"| weighted mean (weights out of fold) | {base['weighted_mean']:.4f} |",
                  f"| weighted geometric mean (weights out of fold) | {base['weighted_geomean']:.4f} |"]
    lines += ["", "## Feature importance (share of total gain, fitted model)", "", "| feature | gain share |",
              "|---|---:|"]
    lines += [f"| {k} | {v / total:.4f} |" for k, v in list(importance.items())[:25]]
    png = out.with_suffix(".png")
    _chart(rows, importance, png)
    lines += ["", f"![ablation and importance]({png.name})", ""]
    with atomic_write(out, "w") as fh:
        fh.write("\n".join(lines))
    return {"ablation": rows, "baselines": base, "importance": importance, "markdown": str(out), "png": str(png)}


def _chart(rows: list[dict], importance: dict[str, float], png: Path) -> None:
    from matplotlib.figure import Figure  # not pyplot: its figures and backend are the caller's

    fig = Figure(figsize=(12, 4.5))
    a1, a2 = fig.subplots(1, 2)
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
