"""The core stage over a fusion's or an audit's core models (one run, the fold runs of one split, several
models) as jobs for an engine, and the embedding-neighbour indexes built from the first model's runs.

When fitting (and auditing), each training product is predicted by the run that held it out
(``holdout_rankings``); when predicting a dump, every run predicts every product and each chunk's rankings
are averaged per model, then over the models (``stages.models_job``). A single run writes its predictions
straight into ``WORK/core``; otherwise each run writes ``WORK/core_runs/MODEL/runI`` and ``WORK/core`` holds
the averaged ranking, the one later stages (specialists' gates, explain) read. Memory stays at one chunk of
top-K lists per run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog
from etalage.chunks import DEFAULT_CHUNK, chunk_ranges
from etalage.compute import Compute
from etalage.core.ensemble import CoreModel
from etalage.core.predict import PredictOptions
from etalage.core.ranking import CoreRanking
from etalage.core.rundir import RunDir
from etalage.fusion.folder import FusionDir
from etalage.fusion.neighbours import EmbeddingIndex, NeighbourHits
from etalage.pipeline.engine import Engine, RunStats
from etalage.pipeline.stages import CoreJob, CoreStage, CoreTarget

log = logging.getLogger(__name__)


@dataclass
class HeldOutJob:
    """Core predictions of a labelled dump's products by runs that never trained on them: the ``catalog``, the
    folder they go to (``folder/MODEL/runI``, resumable), the core's options and test-time augmentation, the
    command that fills it."""

    catalog: Catalog
    folder: Path
    options: PredictOptions
    tta: str = "none"
    producer: str | None = None


def predict_positions(job: HeldOutJob, run: RunDir, out: Path, positions: np.ndarray, compute: Compute,
                      engine: Engine) -> tuple[CoreRanking, RunStats]:
    """``run``'s ranking of the products at ``positions`` (in that order), predicted into ``out`` on ``engine``."""
    stage = CoreStage(job.catalog, CoreJob([CoreTarget(run, out, job.options.embedding)], job.options, job.tta,
                                           DEFAULT_CHUNK, job.producer, positions), compute)
    stage.claim()
    stats = engine.run([stage], chunk_ranges(len(positions), DEFAULT_CHUNK), f"predict {out.name}")
    return CoreRanking.load(out), stats


def holdout_rankings(models: list[CoreModel], job: HeldOutJob, compute: Compute, engine: Engine
                     ) -> tuple[np.ndarray, list[CoreRanking], RunStats]:
    """The training products every model predicts honestly (ascending positions) and each model's ranking of
    them, row for row: for a fold set, each product by the run that held its fold out."""
    positions, _ = models[0].holdout()
    rankings, stats = [], RunStats(engine.name)
    for m in models:
        pos, run_of = m.holdout()
        parts, where = [], []
        for i, run in enumerate(m.runs):
            mine = pos[run_of == i]
            log.info("      %s run %d/%d: %d held-out products", m.name, i + 1, len(m.runs), len(mine))
            ranking, run_stats = predict_positions(job, run, job.folder / m.name / f"run{i}", mine, compute, engine)
            stats.merge(run_stats)
            parts.append(ranking)
            where.append(mine)
        order = np.argsort(np.concatenate(where), kind="stable")
        rankings.append(CoreRanking.concat(parts).take(order))
    return positions, rankings, stats


# ---------------------------------------------------------------------------------------------
# embedding neighbours


def build_neighbour_indexes(model: CoreModel, job: HeldOutJob, labels: np.ndarray, folder: FusionDir,
                            compute: Compute, engine: Engine) -> list[np.ndarray]:
    """One index per run of ``model`` over the embeddings it gives every training product (predicted into
    the fusion folder, resumable), saved under ``folder.neighbours_dir``. Returns the embeddings (each run's
    own, training positions in order): the fit's queries come from them."""
    embeddings = []
    every = np.arange(len(job.catalog))
    emb_job = HeldOutJob(job.catalog, folder.neighbours_dir, PredictOptions(1, 1, True), job.tta, job.producer)
    for i, run in enumerate(model.runs):
        pred, _ = predict_positions(emb_job, run, folder.neighbours_dir / f"run{i}_embeddings", every, compute, engine)
        emb = pred.embedding.astype(np.float32)
        EmbeddingIndex.build(emb, labels, every).save(folder.neighbour_index(i))
        embeddings.append(emb)
    return embeddings


def holdout_hits(model: CoreModel, embeddings: list[np.ndarray], folder: FusionDir, positions: np.ndarray,
                 k: int) -> NeighbourHits:
    """The neighbours of each held-out training product at ``positions``, found in the index of the run
    that held it out, the product itself left out."""
    pos, run_of = model.holdout()
    at = np.searchsorted(pos, positions)
    owner_run = run_of[at]
    sims = np.zeros((len(positions), k), np.float32)
    classes = np.full((len(positions), k), -1, np.int32)
    for i in range(len(model.runs)):
        rows = np.flatnonzero(owner_run == i)
        if not len(rows):
            continue
        hits = EmbeddingIndex.load(folder.neighbour_index(i)).search(embeddings[i][positions[rows]], k,
                                                                      exclude=positions[rows])
        sims[rows], classes[rows] = hits.sims, hits.classes
    return NeighbourHits(sims, classes)
