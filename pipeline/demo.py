"""``etalage demo``: the whole job on a synthetic catalogue, every stage skipped when its outputs are
there (a rerun resumes): synth -> index -> train (time-boxed) -> specialists -> fusion fit -> full
submission -> score per stage and per level-1 group."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.submission import answer_key_classes
from etalage.compute import Compute
from etalage.core.rundir import RunDir
from etalage.files import write_json_atomic
from etalage.fusion.folder import FusionDir
from etalage.fusion.model import fused_top1
from etalage.fusion.report import write_report
from etalage.pipeline.plan import PredictPlan
from etalage.pipeline.predict import JobSettings, load_fused, merge_submission, predict_file
from etalage.pipeline.workdir import WorkDir

log = logging.getLogger(__name__)
STEPS = 7


def stage_top1(work: WorkDir, taxonomy: Taxonomy, specialist_names: list[str]) -> dict[str, np.ndarray]:
    """Product top-1 (class index) of each stage, from a finished ``submit`` work folder: the core alone,
    the core with its specialists (``specialists_rule``) and fusion (``fused_top1``, the submission's
    rule)."""
    from etalage.specialists.plugins import available
    from etalage.specialists.runner import SpecialistRanking

    fused = load_fused(work)
    core = fused["core_top1"].astype(np.int32)
    plugins = available()
    votes = []
    for name in specialist_names:
        spec = SpecialistRanking.load(work.specialist(name))
        groups = plugins[name].factory.level1_indices(taxonomy) if name in plugins else []
        votes.append((spec.rows, spec.topk_class[:, 0], groups))
    return {"core": core, "core+specialists": specialists_rule(core, votes, taxonomy.level1_of),
            "fusion": fused_top1(fused["topk_class"], fused["core_top1"])}


def specialists_rule(core_top1: np.ndarray, votes: list[tuple[np.ndarray, np.ndarray, list[int]]],
                     level1_of: np.ndarray) -> np.ndarray:
    """The simplest second level, the demo's "core + specialists" stage: where the core's best class
    lies in one of a specialist's level-1 groups, the specialist's best class wins, even when it lies
    in another of its groups (a multi-group specialist such as ``media`` moves an album the core took
    for a book). ``votes``: per specialist (product rows it looked at, its best class there, the
    level-1 indices of its groups); later specialists win over earlier ones."""
    out = np.asarray(core_top1, np.int32).copy()
    for rows, best, groups in votes:
        agree = np.isin(level1_of[out[rows]], groups) & (best >= 0)
        out[rows[agree]] = best[agree]
    return out


def score_stages(stages: dict[str, np.ndarray], truth: np.ndarray, taxonomy: Taxonomy) -> dict:
    """Top-1 of every stage overall and per level-1 group of the truth."""
    scores = {k: float((v == truth).mean()) for k, v in stages.items()}
    l1 = taxonomy.level1_of[truth]
    per_level1 = {taxonomy.level1_names[g]: {"products": int((l1 == g).sum()),
                                             **{k: float((v[l1 == g] == truth[l1 == g]).mean())
                                                for k, v in stages.items()}}
                  for g in np.unique(l1)}
    return {**scores, "per_level1": per_level1}


def _step(i: int, text: str) -> None:
    log.info("[%d/%d] %s", i, STEPS, text)


# Defaults of the drawn demo and of the real-cover one (``run_demo``'s docstring says why they differ).
DRAWN_PRODUCTS, REAL_COVER_PRODUCTS = 3000, 8000
DRAWN_VAL_FRACTION, REAL_COVER_VAL_FRACTION = 0.15, 0.25
DRAWN_SPECIALIST_TRAIN = 300


@dataclass
class DemoConfig:
    """The demo's settings. ``products``, ``val_fraction`` and ``specialist_train`` default (None) by the
    pictures: drawn or real covers (``book_covers`` / ``music_covers``: real covers as the LIBRAIRIE /
    MUSIQUE pictures, ``etalage.synth.real_covers``).

    Defaults differ with real covers, for reasons measured: ``products`` 8000 instead of 3000 and
    ``val_fraction`` (the core's validation products, on which fusion learns) 0.25 instead of 0.15:
    LIBRAIRIE and MUSIQUE hold ~18% of the products, and with 718 fusion products (118 of them covers)
    the reranker could not see what the specialist is worth (on those 118 it beat the core by 2.5
    points, on the 216 test covers by 17); ``specialist_train`` (None) every training product of the
    specialist's groups instead of 300 (a specialist's top-1 on real covers still grows past 1,200
    training covers, benchmarks/bench_cover_curve.py; drawn covers are learnt from a few hundred).

    ``folds``: K fold runs instead of one run (``max_minutes / K`` each, so the demo keeps its time), and
    fusion learns from every training product out of fold (those the specialists trained on left out)
    instead of the validation share; ``neighbours``: the embedding-neighbour signal with that many
    neighbours."""

    products: int | None = None
    max_minutes: float = 5.0
    seed: int = 0
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    picture_size: int = 112
    crop: int = 96
    batch_size: int = 32
    names: tuple[str, ...] = ("media",)
    ocr_engine: str | None = None
    specialist_train: int | None = None
    val_fraction: float | None = None
    book_covers: str | None = None
    music_covers: str | None = None
    ablation_folds: int = 3
    folds: int | None = None
    neighbours: int = 0

    def resolved(self) -> DemoConfig:
        """The defaults that depend on the pictures filled in."""
        real = bool(self.book_covers or self.music_covers)
        return replace(self, products=self.products or (REAL_COVER_PRODUCTS if real else DRAWN_PRODUCTS),
                       specialist_train=self.specialist_train if self.specialist_train is not None or real
                       else DRAWN_SPECIALIST_TRAIN,
                       val_fraction=self.val_fraction or (REAL_COVER_VAL_FRACTION if real else DRAWN_VAL_FRACTION))


def run_demo(out: str | Path, cfg: DemoConfig | None = None, compute: Compute | None = None) -> dict:
    """Run (or resume) the demo under ``out``; returns what ``out/report.json`` holds.

    >>> result = run_demo("demo", DemoConfig(products=600, max_minutes=1))
    >>> result["core"], result["fusion"]
    """
    cfg, compute = (cfg or DemoConfig()).resolved(), compute or Compute()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with _timed(timings, "synth_s"):
        _synth_step(out, cfg, compute.progress)
    with _timed(timings, "index_s"):
        tax = _index_step(out, compute.progress)
    with _timed(timings, "train_s"):
        run, core = _train_step(out, cfg, compute.progress)
    with _timed(timings, "specialists_fit_s"):
        spec_dir, fitted_rows = _specialists_step(out, None if cfg.folds else run, cfg, compute)
    with _timed(timings, "fusion_fit_s"):
        fusion, fit, ablation = _fusion_step(out, core, spec_dir, cfg, compute)
    with _timed(timings, "submit_s"):
        work, plan = _submit_step(out, fusion, tax, compute)
    _step(7, "score (product top-1 on the test set) and explain.html")
    result = {**_score_step(out, work, tax, list(plan.specialist_names), run),
              "fusion_fit": {k: fit.get(k) for k in ("kind", "products", "held_out", "candidate_coverage",
                                                     "valid_top1_by_kind", "baselines")},
              "fusion_ablation": ablation, "pictures": _pictures_used(cfg.book_covers, cfg.music_covers),
              "specialists": [{k: r[k] for k in ("specialist", "groups", "train_products")} for r in fitted_rows],
              "timings": timings,
              "outputs": {name: str(out / name) for name in ("submission.csv", "test_labels.csv",
                                                               "category_names.csv", "report.json",
                                                               "fusion_report.md")}}
    from etalage.pipeline.explain import explain

    explain(work.path, out / "explain.html", labels=out / "test_labels.csv", compute=compute)
    result["outputs"]["explain.html"] = str(out / "explain.html")
    write_json_atomic(out / "report.json", result)
    return result


@contextmanager
def _timed(timings: dict[str, float], key: str):
    """Seconds the block took, into ``timings[key]``."""
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def _synth_step(out: Path, cfg: DemoConfig, progress: bool) -> None:
    """Step 1: the synthetic catalogue under ``out``, unless one made with the same settings is there."""
    from etalage.synth import SynthConfig, write_synthetic_catalogue

    synth = SynthConfig(products=cfg.products, seed=cfg.seed, book_covers=cfg.book_covers,
                        music_covers=cfg.music_covers)
    stamp = out / "synth.json"
    if not (stamp.exists() and json.loads(stamp.read_text()).get("config") == asdict(synth)):
        _step(1, f"synth: {cfg.products} products -> {out}")
        write_json_atomic(stamp, write_synthetic_catalogue(out, synth, progress=progress))
    else:
        _step(1, f"synth: reusing {out}")


def _index_step(out: Path, progress: bool) -> Taxonomy:
    """Step 2: index both dumps (and hash their pictures); returns the catalogue's taxonomy."""
    tax = Taxonomy.load(out / "category_names.csv")
    _step(2, "index: train.bson, test.bson (+ picture MD5s)")
    for name in ("train.bson", "test.bson"):
        Catalog.open(out / name, tax, md5=True, progress=progress)
    return tax


def _train_step(out: Path, cfg: DemoConfig, progress: bool) -> tuple[RunDir, Path]:
    """Step 3: the core run ``out/run`` time-boxed to ``cfg.max_minutes`` (with ``folds``, the K fold runs
    ``out/runs/fold*``, ``max_minutes / K`` each); finished runs are reused, a stopped one resumed. Returns the
    (first) run and the core model's folder."""
    from etalage.core.train import TrainConfig, fold_runs, train, train_folds

    minutes = cfg.max_minutes
    train_cfg = TrainConfig(train=str(out / "train.bson"), out=str(out / "run"), backbone=cfg.backbone,
                            weights=cfg.weights, picture_size=cfg.picture_size, crop=cfg.crop,
                            batch_size=cfg.batch_size, epochs=20.0, max_minutes=minutes,
                            val_fraction=cfg.val_fraction, seed=cfg.seed)
    if cfg.folds:
        runs = fold_runs(out / "runs", cfg.folds)
        _step(3, f"train: {cfg.folds} fold runs of {cfg.backbone}, at most {minutes / cfg.folds:g} min each -> "
                 f"{out / 'runs'}")
        train_folds(replace(train_cfg, out=str(out / "runs"), folds=cfg.folds, fold=0,
                            max_minutes=minutes / cfg.folds), progress=progress)
        return runs[0], out / "runs"
    run = RunDir(train_cfg.out)
    if run.finished:
        _step(3, f"train: reusing {run}")
        return run, run.path
    resume = run.checkpoint_file.exists()
    _step(3, f"train: {cfg.backbone} for at most {minutes:g} min -> {run}" + (" (resuming)" if resume else ""))
    train(train_cfg, resume=resume, progress=progress)
    return run, run.path


def _specialists_step(out: Path, run: RunDir | None, cfg: DemoConfig, compute: Compute
                      ) -> tuple[Path | None, list[dict]]:
    """Step 4: fit the specialists into ``out/specialists`` (the core run's validation products left out;
    with fold runs, fusion leaves the specialists' products out instead); returns the folder (None
    without specialists) and a row per fitted specialist."""
    from etalage.pipeline.fit import SpecialistsFitConfig, fit_specialists_job

    if not cfg.names:
        _step(4, "specialists: none")
        return None, []
    most = "all" if cfg.specialist_train is None else f"up to {cfg.specialist_train}"
    _step(4, f"specialists: fit {', '.join(cfg.names)} on {most} training products of their groups "
             f"(covers read with {cfg.ocr_engine or 'the default reading'}; the core's validation products left out)")
    spec_dir = out / "specialists"
    rows = fit_specialists_job(SpecialistsFitConfig(out / "train.bson", spec_dir, list(cfg.names),
                                                    run=run.path if run else None, max_train=cfg.specialist_train,
                                                    ocr_engine=cfg.ocr_engine, seed=cfg.seed), compute)
    return spec_dir, rows


def _fusion_step(out: Path, core: Path, spec_dir: Path | None, cfg: DemoConfig, compute: Compute
                 ) -> tuple[FusionDir, dict, list]:
    """Step 5: fit the fusion model into ``out/fusion`` and write its report (``fusion_report.md``, the
    ablation); each reused when there. Returns the folder, the fit report and the ablation rows."""
    from etalage.pipeline.fit import FusionFitConfig, fit_fusion

    fusion = FusionDir(out / "fusion")
    if fusion.fit_report_file.exists():
        _step(5, f"fusion fit: reusing {fusion}")
    else:
        _step(5, f"fusion fit: LightGBM on the products the core never trained on -> {fusion}")
        fit_fusion(FusionFitConfig([core], out / "train.bson", fusion.path, specialists=spec_dir,
                                   neighbours=cfg.neighbours), compute)
    fit = json.loads(fusion.fit_report_file.read_text())
    report_md = out / "fusion_report.md"
    if report_md.exists() and (out / "fusion_ablation.json").exists():
        ablation = json.loads((out / "fusion_ablation.json").read_text())
    else:
        log.info("      fusion report: what each signal adds (%d-fold cross-validation) -> %s", cfg.ablation_folds,
                 report_md)
        ablation = write_report(fusion.path, report_md, folds=cfg.ablation_folds, progress=compute.progress)["ablation"]
        write_json_atomic(out / "fusion_ablation.json", ablation)
    return fusion, fit, ablation


def _submit_step(out: Path, fusion: FusionDir, tax: Taxonomy, compute: Compute) -> tuple[WorkDir, PredictPlan]:
    """Step 6: every stage over ``test.bson`` into ``out/submission_work``, then ``submission.csv``."""
    work = WorkDir(out / "submission_work")
    _step(6, f"submit: index -> core -> specialists -> fusion -> submission.csv (work: {work.path.name})")
    plan = PredictPlan.from_model(fusion.path)
    command = f"etalage submit --fusion {fusion} --data {out / 'test.bson'} --out {out / 'submission.csv'}"
    predict_file(plan, out / "test.bson", work, JobSettings(command=command), compute)
    merge_submission(work, out / "submission.csv", tax, out / "test.bson")
    return work, plan


def _score_step(out: Path, work: WorkDir, tax: Taxonomy, specialist_names: list[str], run: RunDir) -> dict:
    """Step 7's figures: every stage's product top-1 on the test set against ``test_labels.csv``, overall
    and per level-1 group, and the core run's last validation top-1."""
    test_ids = Catalog.open(out / "test.bson").product_ids
    truth = answer_key_classes(out / "test_labels.csv", test_ids, tax, complete=True)
    scored = score_stages(stage_top1(work, tax, specialist_names), truth, tax)
    metrics = run.metrics()
    return {**scored, "test_products": len(truth),
            "val_top1_last_epoch": metrics[-1]["val_top1"] if metrics else None, "epochs": len(metrics)}


def _pictures_used(book_covers, music_covers) -> dict[str, str]:
    """What the report says the pictures of each group are."""
    return {"books": "real covers from " + str(book_covers) if book_covers else "drawn",
            "music": "real covers from " + str(music_covers) if music_covers else "drawn", "other groups": "drawn"}
