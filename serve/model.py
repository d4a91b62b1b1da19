"""What the server asks of a model: a listing in, a proposal out, and the one door models come through.

The types are ``etalage.pipeline.classify``'s (the classifier the batch pipeline's models are loaded
into): a ``Listing`` as a seller lists it, a ``Proposal`` of top-5 ``Category`` rows. The server only
needs a ``Classifier``'s shape (``classify``, ``close``, ``max_batch``), so any object with it can be
served; ``ModelSource`` names where the real one comes from and loads it where it is called (in the
server process, or in each Ray Serve replica: it is a small picklable value, not a loaded model).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from etalage.errors import ConfigError
from etalage.pipeline.classify import Category, Listing, Proposal

__all__ = ["Category", "Classifier", "Listing", "ModelSource", "Proposal"]


@runtime_checkable
class Classifier(Protocol):
    max_batch: int  # products per classify call it wants at most

    def classify(self, listings: list[Listing]) -> list[Proposal]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ModelSource:
    """Where the served model comes from: a fusion folder, a core run alone, or ``MODULE:FACTORY`` (any
    importable zero-argument callable returning a ``Classifier``: a model of your own behind the same API)."""

    fusion: str | None = None
    run: str | None = None
    ocr_cache: str | None = None
    factory: str | None = None

    def __post_init__(self):
        given = [name for name in ("fusion", "run", "factory") if getattr(self, name)]
        if len(given) != 1:
            raise ConfigError("serve one model: give exactly one of --fusion DIR, --run DIR or --classifier "
                              f"MODULE:FACTORY (got {', '.join('--' + g for g in given) or 'none'})")

    def describe(self) -> str:
        return f"fusion {self.fusion}" if self.fusion else f"run {self.run}" if self.run else self.factory

    def __call__(self) -> Classifier:
        """The loaded model (slow: weights, indexes); its owner closes it."""
        if self.factory:
            return _from_factory(self.factory)
        from etalage.pipeline.classify import Classifier as PipelineClassifier

        return PipelineClassifier.load(fusion=self.fusion, run=self.run, ocr_cache=self.ocr_cache)


def _from_factory(spec: str) -> Classifier:
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"--classifier {spec!r}: expected MODULE:FACTORY, e.g. mypackage.models:load")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--classifier {spec!r}: cannot import it ({exc})") from None
    model = factory()
    if not isinstance(model, Classifier):
        raise ConfigError(f"--classifier {spec!r} returned a {type(model).__name__}, which lacks classify(listings), "
                          f"close() or max_batch")
    return model
