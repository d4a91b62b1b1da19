"""MultiImageNet: one backbone pass per picture, pooling over a product's 1-4 pictures, class heads.

Pictures travel flat, ``(P, 3, H, W)`` with ``picture_product`` (P,) saying which product of the
batch each belongs to, so a batch of mostly one-picture products wastes no compute on padding.
Picture poolings (2017 evidence: the 2nd place measured FcNet3 0.7817 against 0.7791 for max-pooling on
the same features; averaging probabilities was the common floor):

- ``prob-mean``: average the per-picture class probabilities (the floor most teams started from);
- ``mean`` / ``max``: pool picture features, then classify;
- ``gate``: a learned sigmoid weight per picture ("FcNet3" of the 2nd place), features averaged
  with those weights, so placeholders and back-of-box shots can be ignored;
- ``attention``: a softmax over the product's pictures of a small learned score;
- ``mosaic``: the 1st place's (+1.3 points over averaging in 2017): a product's pictures tiled 2x2 into
  one picture of the same side before the backbone (``PictureTransform.product``), one pass per product.

The class head is shared between the fused embedding and each picture, which is what gives the
per-picture rankings; level-1 and level-2 heads sit on the fused embedding.

``build_model`` makes the network from a small description (``spec``) that ``model.pt`` stores
beside the weights, and ``load_model`` rebuilds a finished run's network from ``model.pt`` alone,
refusing any file that would run code when loaded (``UnsafeFileError``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from etalage.core.backbones import create_backbone
from etalage.errors import DataError, UnsafeFileError
from etalage.options import PICTURE_POOLINGS, check_choice

POOLINGS = PICTURE_POOLINGS


def _segment_sum(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    out = values.new_zeros((n, *values.shape[1:]))
    return out.index_add_(0, segment, values)


def _segment_softmax(scores: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of (P,) scores within each segment."""
    top = scores.new_full((n,), float("-inf")).scatter_reduce(0, segment, scores, reduce="amax", include_self=True)
    e = torch.exp(scores - top[segment])
    return e / _segment_sum(e, segment, n)[segment]


class MultiImageNet(nn.Module):
    def __init__(self, backbone: nn.Module, num_features: int, n_classes: int, n_level1: int, n_level2: int,
                 pooling: str = "gate", dropout: float = 0.2):
        super().__init__()
        check_choice(pooling, POOLINGS, "picture pooling")
        self.backbone = backbone
        self.pooling = pooling
        self.num_features = num_features
        if pooling == "gate":
            self.gate = nn.Linear(num_features, 1)
        elif pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(num_features, 128), nn.Tanh(), nn.Linear(128, 1))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, n_classes)
        self.level1_head = nn.Linear(num_features, n_level1)
        self.level2_head = nn.Linear(num_features, n_level2)

    # -- training helpers ----------------------------------------------------------------------
    def backbone_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's parameters in layer groups from the input up (timm's coarse ``group_matcher``:
        stem, each stage, the last convolution): what ``freeze`` and ``layer_decay`` count in."""
        from timm.models import group_parameters

        named = dict(self.backbone.named_parameters())
        groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=True))
        return [[named[n] for n in names] for _, names in sorted(groups.items())]

    def head_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def set_frozen(self, groups: int | None) -> None:
        """Freeze the first ``groups`` backbone layer groups (None: the whole backbone): no gradient, and
        their batch-norm statistics kept as pretrained (they stay in eval mode through ``train()``)."""
        layers = self.backbone_groups()
        n = len(layers) if groups is None else min(groups, len(layers))
        frozen = {id(p) for group in layers[:n] for p in group}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) not in frozen)
        self._frozen_norms = [m for m in self.backbone.modules()
                              if isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None
                              and id(m.weight) in frozen]
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in getattr(self, "_frozen_norms", ()):
            m.eval()
        return self

    def picture_weights(self, feats: torch.Tensor, picture_product: torch.Tensor, n: int) -> torch.Tensor:
        """Each picture's weight within its product (sums to 1 per product), for the weighted poolings."""
        if self.pooling == "gate":
            g = torch.sigmoid(self.gate(feats).squeeze(1)) + 1e-4
            return g / _segment_sum(g, picture_product, n)[picture_product]
        if self.pooling == "attention":
            return _segment_softmax(self.attention(feats).squeeze(1), picture_product, n)
        ones = torch.ones_like(feats[:, 0])
        return ones / _segment_sum(ones, picture_product, n)[picture_product]

    def frozen_prefix(self, groups: int) -> nn.Module | None:
        """The backbone's first ``groups`` layer groups as one module, whose output ``forward(...,
        from_group=groups)`` takes in place of pictures; None where the backbone cannot be cut there. Only
        timm's EfficientNet family (the Lite backbones among them) is cut: a stem, then stages in sequence,
        the last stage grouped with the head convolution. The modules are shared, not copied."""
        from timm.models.efficientnet import EfficientNet

        bb = self.backbone
        if not isinstance(bb, EfficientNet) or not 1 <= groups <= len(bb.blocks):
            return None
        prefix = nn.Sequential(bb.conv_stem, bb.bn1, *bb.blocks[:groups - 1])
        expected = {id(p) for group in self.backbone_groups()[:groups] for p in group}
        return prefix if {id(p) for p in prefix.parameters()} == expected else None

    def _backbone_from(self, maps: torch.Tensor, groups: int) -> torch.Tensor:
        """The backbone's pooled features from the output of its first ``groups`` layer groups
        (``frozen_prefix``): timm's ``forward_features`` and ``forward_head`` from there on."""
        bb = self.backbone
        x = maps
        for stage in bb.blocks[groups - 1:]:
            x = stage(x)
        return bb.forward_head(bb.bn2(bb.conv_head(x)))

    def forward(self, pictures: torch.Tensor, picture_product: torch.Tensor, n_products: int, from_group: int = 0
                ) -> dict[str, torch.Tensor]:
        """Returns ``logits`` (B, C) as log-probabilities-compatible scores, ``picture_logits`` (P, C),
        ``level1`` (B, L1), ``level2`` (B, L2) and the fused ``embedding`` (B, F). ``from_group`` > 0:
        ``pictures`` are the output of the backbone's first ``from_group`` layer groups (``frozen_prefix``)."""
        feats = self.backbone(pictures) if not from_group else self._backbone_from(pictures, from_group)
        if self.pooling == "max":
            emb = feats.new_full((n_products, feats.shape[1]), float("-inf"))
            emb = emb.scatter_reduce(0, picture_product[:, None].expand_as(feats), feats, reduce="amax",
                                     include_self=True)
        else:
            w = self.picture_weights(feats, picture_product, n_products)
            emb = _segment_sum(feats * w[:, None].to(feats.dtype), picture_product, n_products)
        picture_logits = self.classifier(self.dropout(feats))
        if self.pooling == "prob-mean":
            # Log of the mean of per-picture probabilities: a proper log-probability for the loss.
            w = self.picture_weights(feats, picture_product, n_products)
            logp = F.log_softmax(picture_logits.float(), dim=1) + torch.log(w)[:, None]
            top = logp.new_full((n_products, logp.shape[1]), float("-inf")).scatter_reduce(
                0, picture_product[:, None].expand_as(logp), logp, reduce="amax", include_self=True)
            logits = top + torch.log(_segment_sum(torch.exp(logp - top[picture_product]), picture_product,
                                                  n_products))
        else:
            logits = self.classifier(self.dropout(emb))
        emb_d = self.dropout(emb)
        return {"logits": logits, "picture_logits": picture_logits, "level1": self.level1_head(emb_d),
                "level2": self.level2_head(emb_d), "embedding": emb}


class ProbeEnsemble(nn.Module):
    """The run's linear probe and its fine-tuned network as one network: the mean of their probabilities.

    On grocery-dev (2,640 in-store photos from a few sessions) the fine-tune learns the training sessions and
    the probe generalises at the coarse levels; their mean scored above both at every level of the official
    val (docs/benchmarks.md). The pictures arrive as the probe reads them (whole, at its side); the fine-tune
    reads them resized to its own side (antialiased bicubic, as Pillow letterboxes), which is what
    letterboxing at its side gives. Outputs are the log of the mixed probabilities (what ``softmax`` turns
    back into them; a class neither member can give stays at ``-1e4``, as the probe's absent classes), and
    the fine-tune's embedding (what the embedding-neighbour signal was trained with)."""

    def __init__(self, probe: MultiImageNet, fine_tune: MultiImageNet, fine_side: int):
        super().__init__()
        self.probe = probe
        self.fine_tune = fine_tune
        self.fine_side = fine_side

    def forward(self, pictures: torch.Tensor, picture_product: torch.Tensor, n_products: int
                ) -> dict[str, torch.Tensor]:
        view = pictures
        if pictures.shape[-1] != self.fine_side:
            view = F.interpolate(pictures, size=(self.fine_side, self.fine_side), mode="bicubic", antialias=True,
                                 align_corners=False)
            if pictures.is_contiguous(memory_format=torch.channels_last):
                view = view.contiguous(memory_format=torch.channels_last)
        a = self.probe(pictures, picture_product, n_products)
        b = self.fine_tune(view, picture_product, n_products)
        out = {k: torch.log((torch.softmax(a[k].float(), 1) + torch.softmax(b[k].float(), 1)) / 2)
               .clamp_(min=-1e4) for k in ("logits", "picture_logits", "level1", "level2")}
        out["embedding"] = b["embedding"]
        return out


def ensemble_spec(probe_spec: dict, fine_spec: dict) -> dict:
    """What ``model.pt`` stores for a ``ProbeEnsemble``: the probe's picture settings (the input) and both
    members' specs."""
    return {**probe_spec, "kept": "ensemble", "pooling": "mean",
            "members": {"probe": probe_spec, "fine-tune": fine_spec}}


def build_model(n_classes: int, n_level1: int, n_level2: int, backbone: str, weights: str | None, pooling: str,
                dropout: float = 0.2) -> tuple[MultiImageNet, dict]:
    """The core network and the description ``model.pt`` stores to rebuild it without weight files."""
    bb = create_backbone(backbone, weights)
    model = MultiImageNet(bb.model, bb.num_features, n_classes, n_level1, n_level2, pooling, dropout)
    spec = {"backbone": backbone, "num_features": bb.num_features, "n_classes": n_classes, "n_level1": n_level1,
            "n_level2": n_level2, "pooling": pooling, "dropout": dropout, "mean": list(bb.mean), "std": list(bb.std)}
    return model, spec


def safe_torch_load(path: str | Path, what: str, rebuild: str, trust_pickle: bool = False):
    """``torch.load`` of tensors and plain values only (``weights_only=True``): a file that asks to run
    code is refused with one line naming it and ``rebuild`` (the command that makes a clean one).
    ``trust_pickle=True`` (``--trust-pickle``) loads it as a full pickle instead: only for files
    you made yourself."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # noqa: BLE001 - any refusal or damage is reported the same way
        refused = not trust_pickle and "Weights only load failed" in str(exc)
        if not refused:
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise DataError(f"{path}: cannot read the {what} ({type(exc).__name__}: {first}); {rebuild}") from None
        raise UnsafeFileError(f"{path}: refused: the {what} holds more than tensors and plain values, and loading "
                              f"it would run code; {rebuild} (or pass --trust-pickle if you made it yourself)"
                              ) from None


def picture_pooling_of(spec: dict) -> str:
    """A saved network's picture pooling (runs before 0.3 stored it as ``fusion``)."""
    return spec.get("pooling", spec.get("fusion", "gate"))


def network_of(spec: dict) -> nn.Module:
    """The network ``spec`` describes, without weights: a ``MultiImageNet``, or the ``ProbeEnsemble`` of two."""
    if spec.get("kept") == "ensemble":
        members = spec["members"]
        return ProbeEnsemble(network_of(members["probe"]), network_of(members["fine-tune"]),
                             int(members["fine-tune"]["picture_size"]))
    model, _ = build_model(spec["n_classes"], spec["n_level1"], spec["n_level2"], spec["backbone"], None,
                           picture_pooling_of(spec), spec.get("dropout", 0.2))
    return model


def load_model(model_file: str | Path, device: str | torch.device = "cpu", trust_pickle: bool = False
               ) -> tuple[MultiImageNet | ProbeEnsemble, dict]:
    """The finished network saved in ``model_file`` (``RUN/model.pt``) and its spec, in eval mode."""
    blob = safe_torch_load(model_file, "trained model", f"retrain with `etalage train --out {Path(model_file).parent}`",
                           trust_pickle)
    spec = blob["spec"]
    model = network_of(spec)
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, spec
