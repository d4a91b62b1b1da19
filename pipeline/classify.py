"""Classifying products the moment they are listed (``etalage serve``, or a notebook): the models of a fusion
model (or a core run alone) loaded once, then batches of ``Listing``s -> ``Proposal``s.

Each batch goes through exactly what ``submit`` runs: its listings are written as a small dump in a temporary
folder (the pictures as given, the title, the id), indexed and hashed like any dump, and the same core,
specialists and fusion stages run over it as one chunk, with the models already in memory. So a product gets
the answer ``submit`` gives it, and nothing here is a second implementation of the pipeline.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etalage.catalog import Catalog
from etalage.catalog.pack import NewProduct, write_products
from etalage.chunks import load_parts
from etalage.compute import Compute
from etalage.core.predict import PredictOptions
from etalage.core.ranking import CoreRanking
from etalage.errors import ConfigError, DataError
from etalage.ocr.cache import default_cache_path
from etalage.options import FUSED_TOPK
from etalage.pipeline.plan import PredictPlan
from etalage.pipeline.stages import (
    CoreStage,
    FusionInputs,
    FusionStage,
    SpecialistsJob,
    SpecialistsStage,
    models_job,
    specialist_rankings,
    training_signals,
)
from etalage.pipeline.workdir import WorkDir

log = logging.getLogger(__name__)


@dataclass
class Listing:
    """One product as a seller lists it: its encoded pictures (1-4 JPEG/PNG/WebP..., in order), its title, its id
    (the product-id prior reads it where the fusion model has one)."""

    pictures: list[bytes]
    title: str | None = None
    product_id: int | None = None


@dataclass
class Category:
    category_id: int
    names: tuple[str, str, str]   # level 1, 2, 3
    probability: float


@dataclass
class Proposal:
    """The categories proposed for a listing, best first, and which signals spoke (``core``, ``specialists:NAME``,
    ``picture hash``, ``id``)."""

    categories: list[Category]
    signals: list[str] = field(default_factory=list)


@dataclass
class _Loaded:
    """The stages of a model, opened once (networks, specialists, OCR engine and cache, fusion model, training
    signals); each batch's own stages adopt them."""

    core: CoreStage
    specialists: SpecialistsStage | None = None
    fusion: FusionStage | None = None
    signals: object = None
    fusion_without_id: FusionStage | None = None  # where the training ids looked numbered category by category
    train_ids: np.ndarray | None = None


class Classifier:
    """A fusion model's pipeline (or a core run's predictions) for products not in any dump.

    >>> clf = Classifier.load(fusion="fusion/")
    >>> proposal = clf.classify([Listing([open("shoe.jpg", "rb").read()], title="Leather boots")])[0]
    >>> proposal.categories[0].names, proposal.categories[0].probability
    """

    def __init__(self, plan: PredictPlan | None, models: list, loaded: _Loaded, ocr_cache: Path | None,
                 compute: Compute):
        self.plan, self.models, self.loaded, self.ocr_cache, self.compute = plan, models, loaded, ocr_cache, compute
        self.taxonomy = models[0].runs[0].taxonomy()
        self.max_batch = max(1, compute.batch_size)

    @classmethod
    def load(cls, fusion: str | Path | None = None, run=None, ocr_cache: str | Path | None = None,
             compute: Compute | None = None) -> Classifier:
        """``fusion``: a fitted fusion model (its core runs, specialists and training dump as it names them);
        without it, ``run``: a core run (or fold runs, or several: averaged) alone."""
        from etalage.core.ensemble import open_models

        compute = (compute or Compute()).but(progress=False)
        if fusion is None:
            if not run:
                raise ConfigError("pass a fusion model (--fusion) or a core run (--run)")
            models = open_models([run] if isinstance(run, (str, Path)) else list(run))
            core = CoreStage(None, models_job(models, Path(), _no_dir, PredictOptions()), compute)
            return cls(None, models, _Loaded(_opened(core)), None, compute)
        plan = PredictPlan.from_model(fusion, run)
        plan.check_specialists()
        train = Catalog.open(plan.train, plan.taxonomy(), md5=True, cache_dir=compute.cache_dir)
        cache = Path(ocr_cache) if ocr_cache else default_cache_path(plan.train, compute.cache_dir)
        core = CoreStage(None, models_job(plan.models, Path(), _no_dir, PredictOptions()), compute)
        loaded = _Loaded(_opened(core), signals=training_signals(train, plan.taxonomy(), plan.ks))
        if plan.specialist_names:
            job = SpecialistsJob(plan.specialists, plan.specialist_names, cache, Path(), Path())
            loaded.specialists = _opened(SpecialistsStage(None, job, plan.taxonomy()))
        loaded.fusion = _opened(FusionStage(FusionInputs(plan, None, None, plan.taxonomy(), loaded.signals)))
        loaded.train_ids = train.product_ids
        if plan.model.without_id.exists:
            inputs = FusionInputs(plan, None, None, plan.taxonomy(), loaded.signals, plan.model.without_id.path)
            loaded.fusion_without_id = _opened(FusionStage(inputs))
        return cls(plan, plan.models, loaded, cache, compute)

    def classify(self, listings: list[Listing]) -> list[Proposal]:
        """The proposals for ``listings`` (one batch: the core runs them together)."""
        if not listings:
            return []
        products = _products(listings)
        with tempfile.TemporaryDirectory(prefix="etalage-classify-") as tmp:
            tmp = Path(tmp)
            catalog = Catalog.open(write_products(tmp / "listings.bson", products), md5=True, cache_dir=tmp)
            work = WorkDir(tmp / "work")
            rows = (0, len(catalog))
            self._core(catalog, work)
            if self.plan is None:
                return self._core_proposals(CoreRanking.load(work.core))
            names = list(self.plan.specialist_names)
            if names:
                job = SpecialistsJob(self.plan.specialists, names, self.ocr_cache, work.core, work.specialists,
                                     chunk=len(catalog), producer="etalage serve")
                _run_adopted(SpecialistsStage(catalog, job, self.taxonomy), self.loaded.specialists, rows)
            fusion = self._fusion(catalog)
            inputs = FusionInputs(self.plan, work, catalog, self.taxonomy, self.loaded.signals)
            _run_adopted(FusionStage(inputs), fusion, rows)
            fused = load_parts(work.fused, [rows])
            spoke = self._signals(catalog, work, names, fusion is self.loaded.fusion)
        return self._fused_proposals(fused, spoke, fusion)

    def _fusion(self, catalog: Catalog) -> FusionStage:
        """The reranker for this batch: with the id prior where its ids interleave with the training ids as
        ``submit`` decides for a dump (``predict.id_prior_choice``), else the one fitted without id features."""
        from etalage.pipeline.predict import id_prior_choice

        if self.loaded.fusion_without_id is None:
            return self.loaded.fusion
        chosen = id_prior_choice(self.plan, catalog.product_ids, self.loaded.train_ids)
        return self.loaded.fusion if chosen == self.plan.model.path else self.loaded.fusion_without_id

    def _core(self, catalog: Catalog, work: WorkDir) -> CoreStage:
        plan = self.plan
        options = PredictOptions(plan.topk, 5, bool(plan.neighbours)) if plan else PredictOptions(FUSED_TOPK)
        job = models_job(self.models, work.core, work.core_run, options, plan.tta if plan else "none",
                         len(catalog), "etalage serve")
        return _run_adopted(CoreStage(catalog, job, self.compute), self.loaded.core, (0, len(catalog)))

    def _signals(self, catalog: Catalog, work: WorkDir, names: list[str], with_id: bool) -> list[list[str]]:
        """Which signals had something to say of each product: the core always; a specialist that looked at it;
        a picture seen in training; its id, when given and the reranker reads ids."""
        n = len(catalog)
        spoke = [["core"] for _ in range(n)]
        for sr in specialist_rankings(work.specialists, names):
            for r in sr.rows:
                spoke[int(r)].append(f"specialists:{sr.name}")
        rows, owner = catalog.picture_rows(np.arange(n))
        for r in np.unique(owner[self.loaded.signals.hash_index.known(catalog.md5[rows])]):
            spoke[int(r)].append("picture hash")
        for r in np.flatnonzero(catalog.product_ids >= 0) if with_id else ():
            spoke[int(r)].append("id")
        return spoke

    def _category(self, c: int, p: float) -> Category:
        names = tuple(self.taxonomy.names_of(int(c)))
        return Category(int(self.taxonomy.category_ids[int(c)]), names, float(p))

    def _core_proposals(self, ranking: CoreRanking) -> list[Proposal]:
        return [Proposal([self._category(c, p) for c, p in zip(ranking.topk_class[i, :FUSED_TOPK],
                                                               ranking.topk_prob[i, :FUSED_TOPK], strict=True)
                          if c >= 0], ["core"]) for i in range(len(ranking))]

    def _fused_proposals(self, fused: dict, spoke: list[list[str]], fusion: FusionStage) -> list[Proposal]:
        probs = fusion.loaded.model.probabilities(fused["topk_score"])
        out = []
        for i in range(len(fused["product_ids"])):
            classes, p = fused["topk_class"][i], probs[i]
            if classes[0] < 0:  # fusion ranked nothing: the core's best class, as the submission does
                classes, p = np.array([fused["core_top1"][i]]), np.array([1.0])
            out.append(Proposal([self._category(c, q) for c, q in zip(classes, p, strict=True) if c >= 0], spoke[i]))
        return out

    def close(self) -> None:
        for stage in (self.loaded.core, self.loaded.specialists, self.loaded.fusion, self.loaded.fusion_without_id):
            if stage is not None:
                stage.close()


def _no_dir(model: str, run: int) -> Path:  # a template stage writes nowhere
    return Path()


def _opened(stage):
    stage.open(None)
    return stage


def _run_adopted(stage, template, rows: tuple[int, int]):
    """``stage`` (a batch's, over its own catalogue and folder) run on ``rows`` with ``template``'s models."""
    stage.adopt(template)
    if hasattr(stage, "claim"):
        stage.claim()
    stage.run(rows)
    return stage


def _products(listings: list[Listing]) -> list[NewProduct]:
    """The listings as products of a dump: 1-4 pictures each, ids unique (none given: -1, -2, ..., ids no
    training product has)."""
    out, seen = [], {}
    for i, li in enumerate(listings):
        if not 1 <= len(li.pictures) <= 4:
            raise DataError(f"listing {i}: {len(li.pictures)} pictures; a product has 1 to 4")
        pid = int(li.product_id) if li.product_id is not None else -(i + 1)
        if pid in seen:
            raise DataError(f"listings {seen[pid]} and {i} share the id {pid}")
        seen[pid] = i
        out.append(NewProduct(pid, list(li.pictures), li.title))
    return out
