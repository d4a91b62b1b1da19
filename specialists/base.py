"""The specialist plugin API: what a specialist sees, what it returns, and how it is found.

A specialist looks at the products the core routes to it (``gate``), reads their text (OCR boxes
of every picture, through ``etalage.ocr``), and scores its own classes. Built-in and third-party
specialists are found the same way, through the ``etalage.specialists`` entry-point group:

    [project.entry-points."etalage.specialists"]
    books = "etalage.specialists.books:BooksSpecialist"

Discovery is cached, duplicate names warn (the first wins, built-ins first), and a plugin whose
import fails becomes a named warning, never a crash. ``ETALAGE_DISABLE_PLUGIN_AUTOLOAD=1`` keeps
only the built-ins (for reproducible benchmarks), like pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import logging
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.errors import ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "etalage.specialists"
AUTOLOAD_SWITCH = "ETALAGE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "etalage"


@dataclass
class ProductReading:
    """What a specialist gets for one product: the text read on each of its pictures."""

    product_id: int
    boxes: list[list]          # per picture, a list of etalage.ocr.TextBox
    picture_features: np.ndarray  # (n_pictures, len(PICTURE_FEATURE_NAMES)) float32, see etalage.ocr.features

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
    """Base class of specialists. Subclasses set ``name`` and ``groups`` and implement
    ``fit``, ``predict``, ``save`` and ``load``; ``gate`` has a default."""

    name: str = ""
    groups: tuple[str, ...] = ()      # level-1 names whose classes the specialist scores
    gate_threshold: float = 0.3       # core probability mass on the groups that sends a product here
    feature_names: tuple[str, ...] = ()  # names of SpecialistOutput.features, the same for every product:
    #                                     fusion needs fixed columns even for chunks it scored nothing in

    def classes(self, taxonomy) -> np.ndarray:
        """Taxonomy class indices (int32) the specialist scores: all classes under its groups."""
        return np.concatenate([taxonomy.classes_under(g) for g in self.groups]).astype(np.int32)

    def gate(self, ranking, taxonomy) -> np.ndarray:
        """Boolean mask over ``ranking``'s products: which ones this specialist looks at.

        Default: the core's level-1 probability on the groups reaches ``gate_threshold``, or the
        core's best class is in them.
        """
        ids = [taxonomy.level1_index(g) for g in self.groups]
        mass = ranking.level1_prob[:, ids].astype(np.float32).sum(1)
        return (mass >= self.gate_threshold) | np.isin(taxonomy.level1_of[ranking.top1()], ids)

    @abstractmethod
    def fit(self, readings: list[ProductReading], labels: np.ndarray, taxonomy) -> None:
        """Learn from training products' readings and their taxonomy class indices."""

    @abstractmethod
    def predict(self, readings: list[ProductReading]) -> SpecialistOutput:
        """Score the specialist's classes for each product."""

    @abstractmethod
    def save(self, folder: str | Path) -> None:
        ...

    @classmethod
    @abstractmethod
    def load(cls, folder: str | Path) -> Specialist:
        ...


# ---------------------------------------------------------------------------------------------
# discovery


@dataclass(frozen=True)
class SpecialistEntry:
    name: str
    origin: str        # the distribution that provides it ("etalage" for built-ins)
    target: str        # "module:Class"
    factory: type | None
    error: str | None = None

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(getattr(self.factory, "groups", ())) if self.factory else ()


@functools.cache
def discover() -> dict[str, SpecialistEntry]:
    """Name -> entry for every specialist registered under the entry-point group (cached).

    Built-ins come first and keep their names; a plugin that fails to import is kept with its error
    (``etalage specialists list`` shows it) and a warning names it.
    """
    autoload = os.environ.get(AUTOLOAD_SWITCH, "") not in ("1", "true", "yes")
    found: dict[str, SpecialistEntry] = {}
    eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP),
                 key=lambda ep: (_origin(ep) != BUILTIN_DISTRIBUTION, ep.name))
    for ep in eps:
        origin = _origin(ep)
        if origin != BUILTIN_DISTRIBUTION and not autoload:
            continue
        if ep.name in found:
            warnings.warn(f"specialist {ep.name!r} from {origin} ignored: the name is taken by "
                          f"{found[ep.name].origin}", stacklevel=2)
            continue
        try:
            factory = ep.load()
            if not (isinstance(factory, type) and issubclass(factory, Specialist)):
                raise TypeError(f"{ep.value} is not a Specialist subclass")
            found[ep.name] = SpecialistEntry(ep.name, origin, ep.value, factory)
        except Exception as exc:  # noqa: BLE001 - any broken plugin is reported, not fatal
            warnings.warn(f"specialist plugin {ep.name!r} from {origin} failed to load and is skipped: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
            found[ep.name] = SpecialistEntry(ep.name, origin, ep.value, None, f"{type(exc).__name__}: {exc}")
    return found


def _origin(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def available() -> dict[str, SpecialistEntry]:
    """The specialists that loaded."""
    return {k: v for k, v in discover().items() if v.factory is not None}


def create_specialist(name: str, **options) -> Specialist:
    entries = available()
    if name not in entries:
        raise ConfigError(f"unknown specialist {name!r}; available: {', '.join(sorted(entries)) or 'none'}")
    return entries[name].factory(**options)


def safe_predict(specialist: Specialist, readings: list[ProductReading]) -> SpecialistOutput | None:
    """``predict`` that turns a plugin's exception into a warning naming it (the pipeline goes on)."""
    try:
        out = specialist.predict(readings)
        if out.scores.shape[0] != len(readings):
            raise ValueError(f"returned {out.scores.shape[0]} rows for {len(readings)} products")
        return out
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"specialist {specialist.name!r} failed and is skipped: {type(exc).__name__}: {exc}",
                      stacklevel=2)
        log.warning("specialist %s failed: %s", specialist.name, exc)
        return None
