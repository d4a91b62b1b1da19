"""The specialist plugin API: what a specialist sees, what it returns, and what the base class does
for it.

A specialist scores the classes of some level-1 groups (or, with ``groups = (EVERY_GROUP,)``, of the
whole taxonomy) for the products the core routes to it. A minimal plugin sets ``groups`` (and
``feature_names`` if it gives fusion features) and writes two methods, as scikit-learn estimators do:

- ``fit(readings, labels, taxonomy) -> self``: learned attributes end in ``_``;
- ``predict(readings) -> SpecialistOutput``.

Its name is its entry-point name (``etalage.specialists.plugins``); the base class saves and loads
it as data only (constructor parameters as JSON, learned attributes through skops with a trusted-types
check: ``etalage.specialists.persist``), stamped with the etalage and plugin versions. A specialist
that reads gets each product's OCR boxes; one that looks sets ``needs = ("pictures",)`` (or both) and
gets the decoded pictures too.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from etalage.core.ranking import ROUTING_THRESHOLD, CoreRanking

if TYPE_CHECKING:
    from etalage.catalog.taxonomy import Taxonomy
    from etalage.ocr.boxes import TextBox

NEEDS = ("text", "pictures", "title")
EVERY_GROUP = "*"   # ``groups = (EVERY_GROUP,)``: a specialist over every class of the taxonomy


@dataclass
class ProductReading:
    """What a specialist gets for one product.

    ``boxes``: per readable picture, the OCR boxes found on it (empty lists when the specialist does
    not read; no list at all when it neither reads nor looks); ``picture_features``: per picture, the
    ``etalage.ocr.features.PICTURE_FEATURE_NAMES`` vector; ``pictures``: the decoded (H, W, 3) uint8
    RGB pictures, for specialists that need them; ``title``: the product's title, for specialists that
    need it (None when the product has none, or the specialist does not need it).
    """

    product_id: int
    boxes: list[list[TextBox]]
    picture_features: np.ndarray
    pictures: list[np.ndarray] | None = field(default=None, repr=False)
    title: str | None = None

    @property
    def text(self) -> str:
        """All words read, picture after picture, top to bottom."""
        parts = []
        for boxes in self.boxes:
            ordered = sorted(boxes, key=lambda b: (float(b.quad[:, 1].mean()), float(b.quad[:, 0].mean())))
            parts.extend(b.text for b in ordered)
        return " ".join(parts)


@dataclass
class SpecialistOutput:
    """Scores of one specialist over its own classes, and features for fusion."""

    class_indices: np.ndarray   # (C,) int32: taxonomy class indices the columns refer to
    scores: np.ndarray          # (N, C) float32: probabilities over the specialist's classes
    features: np.ndarray        # (N, F) float32: per-product features for the fusion ranker
    feature_names: tuple[str, ...]

    def topk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, k) taxonomy class indices (int32) and scores (float32), best first."""
        k = min(k, self.scores.shape[1])
        order = np.argsort(-self.scores, axis=1, kind="stable")[:, :k]
        return self.class_indices[order].astype(np.int32), np.take_along_axis(self.scores, order, 1)


class Specialist(ABC):
    """Base class of specialists (see the module docstring; docs/plugins.md has a full example).

    Class attributes a plugin may set: ``groups`` (level-1 names whose classes it scores;
    ``(EVERY_GROUP,)``: all of them), ``feature_names`` (of ``SpecialistOutput.features``, the same for
    every product: fusion needs fixed columns even for chunks it scored nothing in), ``needs``
    (``"text"``: OCR boxes; ``"pictures"``: decoded pictures; ``"title"``: the product's title, and then
    only products with a title are fitted on and scored, whatever the gate says), ``gate_threshold``,
    ``trusted_types`` (extra types its learned attributes hold, for the data-only loader). ``name`` is
    set from the entry point. Constructor arguments are its options (``etalage specialists fit --option
    NAME.KEY=VALUE``); keep each as an attribute of the same name.
    """

    name: str = ""
    groups: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    needs: tuple[str, ...] = ("text",)
    gate_threshold: float = ROUTING_THRESHOLD
    trusted_types: tuple[str, ...] = ()

    def classes(self, taxonomy: Taxonomy) -> np.ndarray:
        """Taxonomy class indices (int32) the specialist scores: all classes under its groups."""
        if EVERY_GROUP in self.groups:
            return np.arange(taxonomy.n_classes, dtype=np.int32)
        return np.concatenate([taxonomy.classes_under(g) for g in self.groups]).astype(np.int32)

    @classmethod
    def level1_indices(cls, taxonomy: Taxonomy) -> list[int]:
        """The taxonomy's level-1 indices of the specialist's groups."""
        if EVERY_GROUP in cls.groups:
            return list(range(taxonomy.n_level1))
        return [taxonomy.level1_index(g) for g in cls.groups]

    def gate(self, ranking: CoreRanking, taxonomy: Taxonomy) -> np.ndarray:
        """Boolean mask over ``ranking``'s products: which ones this specialist looks at. Default: the
        core's routing rule (``CoreRanking.routed_to``) for the specialist's groups."""
        return ranking.routed_to(self.level1_indices(taxonomy), taxonomy.level1_of, self.gate_threshold)

    @abstractmethod
    def fit(self, readings: list[ProductReading], labels: np.ndarray, taxonomy: Taxonomy) -> Specialist:
        """Learn from training products' readings and their taxonomy class indices; return self."""

    @abstractmethod
    def predict(self, readings: list[ProductReading]) -> SpecialistOutput:
        """Score the specialist's classes for each product."""

    # -- parameters and persistence (data only) ---------------------------------------------------
    def get_params(self) -> dict:
        """The constructor's arguments, read back from the attributes of the same name."""
        params = {}
        for p in inspect.signature(type(self).__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            params[p.name] = getattr(self, p.name, p.default)
        return params

    def learned_state(self) -> dict:
        """Learned attributes: public names ending in ``_`` (scikit-learn's convention)."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def save(self, folder: str | Path) -> None:
        """Write ``folder/specialist.json`` (manifest: versions, parameters) and ``folder/state.skops``."""
        from etalage.specialists.persist import save_specialist

        save_specialist(self, folder)

    @classmethod
    def load(cls, folder: str | Path) -> Specialist:
        """A fitted specialist from ``save``'s folder; nothing in the folder can run code."""
        from etalage.specialists.persist import load_specialist

        return load_specialist(cls, folder)
