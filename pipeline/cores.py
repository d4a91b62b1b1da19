"""The core stage over a fusion's core models (one run, the fold runs of one split, several models), and
the embedding-neighbour indexes built from the first model's runs.

When fitting, each training product is predicted by the run that held it out (``holdout_rankings``);
when predicting a dump, every run predicts every product in the shard's chunks and each chunk's
rankings are averaged per model, then over the models (``predict_models``). A single run writes its
predictions straight into ``WORK/core``, as before; otherwise each run writes ``WORK/core_runs/MODEL/runI``
and ``WORK/core`` holds the averaged ranking, the one later stages (specialists' gates, explain) read.
Memory stays at one chunk of top-K lists per run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog
from etalage.chunks import list_parts, part_path, shard_chunk_ranges
from etalage.core.ensemble import CoreModel, mean_ranking
from etalage.core.ranking import CoreRanking
from etalage.core.rundir import RunDir
from etalage.files import claim_folder, save_npz_atomic
from etalage.fusion.folder import FusionDir
from etalage.fusion.neighbours import EmbeddingIndex, NeighbourHits

log = logging.getLogger(__name__)

RANKING_ARRAYS = ("product_ids", "topk_class", "topk_prob", "n_pictures", "picture_topk_class",
                  "picture_topk_prob", "level1_prob")


def _predictor(run, tta: str, kw: dict):
    from etalage.core.predict import CorePredictor

    return CorePredictor(run, tta=tta, **kw)


def holdout_rankings(models: list[CoreModel], catalog: Catalog, folder: Path, topk: int, tta: str, kw: dict,
                     producer: str, progress: bool) -> tuple[np.ndarray, list[CoreRanking]]:
    """The training products every model predicts honestly (ascending positions) and each model's ranking
    of them, row for row: for a fold set, each product by the run that held its fold out. Predictions go
    to ``folder/MODEL/runI`` (resumable)."""
    positions, _ = models[0].holdout()
    rankings = []
    for m in models:
        pos, run_of = m.holdout()
        parts, where = [], []
        for i, run in enumerate(m.runs):
            mine = pos[run_of == i]
            log.info("      %s run %d/%d: %d held-out products", m.name, i + 1, len(m.runs), len(mine))
            parts.append(_predictor(run, tta, kw).predict_catalog(catalog, folder / m.name / f"run{i}", topk=topk,
                                                                  positions=mine, producer=producer,
                                                                  progress=progress))
            where.append(mine)
        ranking = CoreRanking.concat(parts)
        order = np.argsort(np.concatenate(where), kind="stable")
        rankings.append(ranking.take(order))
    return positions, rankings


def single_run(models: list[CoreModel]) -> bool:
    """One model of one run: its predictions are the work folder's core stage itself."""
    return len(models) == 1 and not models[0].is_folds


def predict_models(models: list[CoreModel], catalog: Catalog, core_dir: Path, run_dir, shard: tuple[int, int],
                   chunk: int, topk: int, tta: str, embedding: bool, kw: dict, producer: str, progress: bool) -> None:
    """Every run of every model on shard ``shard`` of ``catalog``; then, unless there is a single run, each
    chunk's rankings averaged per model and over the models into ``core_dir`` (a part per chunk, skipped
    when done). ``run_dir(model, i)``: where run i of a model writes; ``embedding``: the first model's
    runs also store embeddings (the neighbour signal's queries)."""
    if single_run(models):
        _predictor(models[0].runs[0], tta, kw).predict_catalog(catalog, core_dir, topk=topk, shard=shard,
                                                               chunk=chunk, embedding=embedding, producer=producer,
                                                               progress=progress)
        return
    for j, m in enumerate(models):
        for i, run in enumerate(m.runs):
            log.info("      %s run %d/%d", m.name, i + 1, len(m.runs))
            _predictor(run, tta, kw).predict_catalog(catalog, run_dir(m.name, i), topk=topk, shard=shard, chunk=chunk,
                                                     embedding=embedding and j == 0, producer=producer,
                                                     progress=progress)
    claim_combined(models, catalog, core_dir, chunk, topk, tta, producer)
    done = list_parts(core_dir)
    for a, b in shard_chunk_ranges(len(catalog), chunk, shard):
        if (a, b) not in done:
            combine_chunk(models, core_dir, run_dir, (a, b))


def claim_combined(models: list[CoreModel], catalog: Catalog, core_dir: Path, chunk: int, topk: int, tta: str,
                   producer: str) -> None:
    """Stamp ``core_dir`` as the combination of ``models``' runs (or check it is)."""
    core_dir = Path(core_dir)
    core_dir.mkdir(parents=True, exist_ok=True)
    claim_folder(core_dir / "meta.json", {"n_products": len(catalog), "chunk": chunk, "producer": producer,
                                          "combined": [f"{m.name}:{len(m.runs)}" for m in models], "topk": topk,
                                          "tta": tta}, ignore=("producer",))


def combine_chunk(models: list[CoreModel], core_dir: Path, run_dir, rows: tuple[int, int]) -> None:
    """The chunk ``rows`` of every run averaged (per model, then over the models) into ``core_dir``."""
    combined, _ = chunk_rankings(models, run_dir, rows)
    save_npz_atomic(part_path(core_dir, *rows), **{k: getattr(combined, k) for k in RANKING_ARRAYS})


def part_done(folder: Path, rows: tuple[int, int]) -> bool:
    """Whether the part of ``rows`` in ``folder`` is finished (a whole npz file, as ``list_parts`` counts)."""
    import zipfile

    path = part_path(folder, *rows)
    return path.exists() and zipfile.is_zipfile(path)


@dataclass
class CoreTarget:
    """One run's predictions and where they go (``embedding``: with the fused embedding)."""

    run: RunDir
    out: Path
    embedding: bool


def core_targets(models: list[CoreModel], core_dir: Path, run_dir, embedding: bool) -> list[CoreTarget]:
    """Where each run of ``models`` writes, as ``predict_models`` lays it out: a single run straight into
    ``core_dir``; otherwise run i of a model into ``run_dir(model, i)`` (the first model's with embeddings)."""
    if single_run(models):
        return [CoreTarget(models[0].runs[0], Path(core_dir), embedding)]
    return [CoreTarget(run, Path(run_dir(m.name, i)), embedding and j == 0)
            for j, m in enumerate(models) for i, run in enumerate(m.runs)]


@dataclass
class CoreJob:
    """The core stage of a dump chunk by chunk, as the Ray engine's core actors run it: every target run
    predicts the chunks it has not done (the local engine's ``CorePredictor.predict_part``), then, with several
    runs, the chunk is combined into ``core_dir`` (``combine_chunk``). ``claim`` stamps every folder first
    (once, on the driver)."""

    targets: list[CoreTarget]
    models: list[CoreModel] | None   # set: several runs, combined into core_dir
    core_dir: Path
    run_dir: object                  # run_dir(model, i) -> folder (WorkDir.core_run), or None
    topk: int
    picture_topk: int
    tta: str
    kw: dict                         # CorePredictor settings (device, batch size, trust_pickle)
    producer: str
    chunk: int

    @classmethod
    def of_models(cls, models: list[CoreModel], core_dir: Path, run_dir, topk: int, tta: str, embedding: bool,
                  kw: dict, producer: str, chunk: int) -> CoreJob:
        combined = None if single_run(models) else models
        return cls(core_targets(models, core_dir, run_dir, embedding), combined, Path(core_dir), run_dir, topk, 5,
                   tta, kw, producer, chunk)

    def claim(self, catalog: Catalog) -> None:
        from etalage.core.predict import claim_predictions, model_spec

        for t in self.targets:
            claim_predictions(t.run, model_spec(t.run, self.kw.get("trust_pickle", False)), self.tta, catalog, t.out,
                              self.topk, self.picture_topk, t.embedding, self.chunk, None, self.producer)
        if self.models is not None:
            claim_combined(self.models, catalog, self.core_dir, self.chunk, self.topk, self.tta, self.producer)

    def done(self, rows: tuple[int, int]) -> bool:
        return all(part_done(t.out, rows) for t in self.targets) and \
            (self.models is None or part_done(self.core_dir, rows))

    def predictors(self) -> list:
        """One ``CorePredictor`` per target (the models loaded: once per actor)."""
        return [_predictor(t.run, self.tta, self.kw) for t in self.targets]

    def run_chunk(self, predictors: list, catalog: Catalog, rows: tuple[int, int]) -> int:
        """Predict chunk ``rows`` with every target that has not, then combine; returns pictures decoded."""
        positions = np.arange(len(catalog))
        pictures = 0
        for t, p in zip(self.targets, predictors, strict=True):
            if not part_done(t.out, rows):
                pictures += p.predict_part(catalog, t.out, positions, rows, self.topk, self.picture_topk, t.embedding,
                                           workers=0)
        if self.models is not None and not part_done(self.core_dir, rows):
            combine_chunk(self.models, self.core_dir, self.run_dir, rows)
        return pictures


def chunk_rankings(models: list[CoreModel], run_dir, rows: tuple[int, int]
                   ) -> tuple[CoreRanking, list[tuple[str, CoreRanking]]]:
    """The chunk ``rows`` of every model (its fold runs averaged) and their average."""
    per_model = []
    for m in models:
        runs = [CoreRanking.load(run_dir(m.name, i), rows) for i in range(len(m.runs))]
        per_model.append((m.name, mean_ranking(runs)))
    return mean_ranking([r for _, r in per_model]), per_model


def run_embeddings(models: list[CoreModel], run_dir, core_dir: Path, rows: tuple[int, int]) -> list[np.ndarray]:
    """The first model's embeddings of the chunk ``rows``, one array per run (each run's own space)."""
    if single_run(models):
        return [CoreRanking.load(core_dir, rows).embedding]
    return [CoreRanking.load(run_dir(models[0].name, i), rows).embedding for i in range(len(models[0].runs))]


# ---------------------------------------------------------------------------------------------
# embedding neighbours


def build_neighbour_indexes(model: CoreModel, catalog: Catalog, labels: np.ndarray, folder: FusionDir, tta: str,
                            kw: dict, producer: str, progress: bool) -> list[np.ndarray]:
    """One index per run of ``model`` over the embeddings it gives every training product (predicted into
    the fusion folder, resumable), saved under ``folder.neighbours_dir``. Returns the embeddings (each
    run's own, training positions in order): the fit's queries come from them."""
    embeddings = []
    for i, run in enumerate(model.runs):
        pred = _predictor(run, tta, kw).predict_catalog(catalog, folder.neighbours_dir / f"run{i}_embeddings",
                                                        topk=1, picture_topk=1, embedding=True, producer=producer,
                                                        progress=progress)
        emb = pred.embedding.astype(np.float32)
        EmbeddingIndex.build(emb, labels, np.arange(len(catalog))).save(folder.neighbour_index(i))
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


def load_indexes(folder: FusionDir, runs: int) -> list[EmbeddingIndex]:
    return [EmbeddingIndex.load(folder.neighbour_index(i)) for i in range(runs)]


def query_hits(indexes: list[EmbeddingIndex], embeddings: list[np.ndarray], k: int) -> list[NeighbourHits]:
    """Test-time neighbours: each run's embedding of the products against that run's index."""
    return [index.search(emb.astype(np.float32), k) for index, emb in zip(indexes, embeddings, strict=True)]
