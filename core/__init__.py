"""The core: a multi-picture CNN that ranks every class of the taxonomy for each product.

``create_backbone`` (timm + offline weights) -> ``MultiImageNet`` (pooling over 1-4 pictures,
level-1/2 heads) -> ``train`` (one process or torchrun, into a ``RunDir``) -> ``CorePredictor`` ->
``CoreRanking``. ``CoreRanking`` and ``RunDir`` are torch-free; the rest imports torch when first
used, so reading predictions never loads it.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "CoreRanking": "ranking", "RunDir": "rundir",
    "OFFLINE_WEIGHTS": "backbones", "create_backbone": "backbones",
    "POOLINGS": "model", "MultiImageNet": "model", "build_model": "model", "load_model": "model",
    "CorePredictor": "predict",
    "TrainConfig": "config", "train": "train",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"etalage.core.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'etalage.core' has no attribute {name!r}")
