"""etalage: sort e-commerce products into a catalogue's fine categories from their pictures (and titles).

The objects a notebook needs are importable from here, loaded on first use (PEP 562), so ``import etalage``
stays light (no torch)::

    >>> import etalage
    >>> catalog = etalage.Catalog.open("train.bson")                    # a Cdiscount-shaped BSON dump
    >>> result = etalage.train(etalage.TrainConfig(train="train.bson", out="run", max_minutes=20))
    >>> ranking = etalage.CorePredictor("run").predict_catalog(etalage.Catalog.open("test.bson"), "pred")

The package is one namespace over the repository's folders (``etalage.catalog``, ``etalage.core``,
``etalage.ocr``, ``etalage.specialists``, ``etalage.fusion``, ``etalage.pipeline``, ``etalage.serve``,
``etalage.cli``); this folder holds the ground they stand on (errors, options, files, chunks, compute).
"""

from __future__ import annotations

import importlib

__version__ = "1.0.0"

# name -> the module that owns it (docs/architecture.md)
_PUBLIC = {
    "EtalageError": "etalage.errors",
    "Compute": "etalage.compute",
    "Catalog": "etalage.catalog.catalog",
    "Taxonomy": "etalage.catalog.taxonomy",
    "TrainConfig": "etalage.core.config",
    "train": "etalage.core.train",
    "CorePredictor": "etalage.core.predict",
    "CoreRanking": "etalage.core.ranking",
    "load_engine": "etalage.ocr.zoo",
    "Specialist": "etalage.specialists.base",
    "FusionModel": "etalage.fusion.model",
    "LocalEngine": "etalage.pipeline.engine",
    "submit": "etalage.pipeline.submit",
    "Classifier": "etalage.pipeline.classify",
    "Listing": "etalage.pipeline.classify",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        return value
    raise AttributeError(f"module 'etalage' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
