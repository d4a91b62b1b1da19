"""Titles -> word (1-2) and character (2-5, within words) n-gram TF-IDF -> logistic regression.

Word n-grams carry the product's name ("round neck", "t shirt"); character n-grams survive spelling
variants, plurals and words glued or split ("tshirt", "T-Shirts"). Optionally an all-MiniLM-L6-v2
sentence embedding of the title joins them (``encoder``).

Measured on the real fashion-dev titles (``benchmarks/bench_title.py``, stratified 80/20 splits,
``benchmarks/results/title_fashion_dev.json``): top-1 0.971 (top-5 0.998) on all 29,943 products with
C=10. On a 10,000-product subsample, C=3, 10 and 30 give 0.962, 0.961 and 0.961 (2,000 test products:
within noise), and the MiniLM embedding 0.964 (+0.2 point, within noise) for 3.8 times the time: the
default leaves it out.
"""

from __future__ import annotations

import warnings

import numpy as np

from etalage.errors import ConfigError
from etalage.specialists.base import EVERY_GROUP, ProductReading, Specialist, SpecialistOutput
from etalage.specialists.encoders import TextEncoder, default_encoder_path

FEATURE_NAMES = ("top1_prob", "margin", "words", "known_words")


class TitleSpecialist(Specialist):
    """Every class of the taxonomy, from the title alone; fitted on every training product with a title
    (it reads no picture, so ``max_train`` does not bound it).

    Options: ``C`` (inverse regularisation of the logistic regression), ``encoder`` ("none"; "default":
    the offline MiniLM package; or a path to a Hugging Face model folder), ``embedding_weight`` (scale of
    the embedding beside the TF-IDF blocks), ``max_features`` (of the character n-grams).

    Features for fusion: its top probability and margin to the second, the title's word count and the
    share of its words seen in training titles (an unfamiliar title's scores deserve less trust).
    """

    groups = (EVERY_GROUP,)
    needs = ("title",)
    feature_names = FEATURE_NAMES

    def __init__(self, C: float = 10.0, encoder: str = "none", embedding_weight: float = 1.0,
                 max_features: int = 300_000):
        self.C, self.encoder, self.embedding_weight, self.max_features = C, encoder, embedding_weight, max_features
        self._text_encoder: TextEncoder | None = None

    def gate(self, ranking, taxonomy) -> np.ndarray:
        """Every product, whatever the core's routing: a title names a product of any group (the runner
        keeps those that have a title)."""
        return np.ones(len(ranking), bool)

    # -- representation --------------------------------------------------------------------------
    def _vectorisers(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        return [TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode"),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, strip_accents="unicode",
                                max_features=self.max_features)]

    def _embed(self, titles: list[str]) -> np.ndarray:
        if self.encoder == "none":
            return np.zeros((len(titles), 0), np.float32)
        if self._text_encoder is None:
            path = default_encoder_path() if self.encoder == "default" else self.encoder
            self._text_encoder = TextEncoder.shared(str(path))
        return self._text_encoder.encode(titles) * self.embedding_weight

    def _matrix(self, titles: list[str], fit: bool):
        from scipy import sparse

        blocks = [v.fit_transform(titles) if fit else v.transform(titles) for v in self.vectorisers_]
        return sparse.hstack([*blocks, sparse.csr_matrix(self._embed(titles))]).tocsr()

    # -- API ---------------------------------------------------------------------------------------
    def fit(self, readings: list[ProductReading], labels: np.ndarray, taxonomy) -> TitleSpecialist:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        if len(readings) != len(labels) or not len(readings):
            raise ConfigError(f"{self.name}: {len(readings)} readings for {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= taxonomy.n_classes:
            raise ConfigError(f"{self.name}: class {int(labels.max())} is outside the taxonomy's "
                              f"{taxonomy.n_classes} classes")
        titles = [r.title or "" for r in readings]
        self.vectorisers_ = self._vectorisers()
        X = self._matrix(titles, fit=True)
        self.class_indices_ = np.unique(labels).astype(np.int32)
        self.clf_ = None
        if len(self.class_indices_) > 1:
            with warnings.catch_warnings():  # the last digits of a C this large take long to settle
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.clf_ = LogisticRegression(C=self.C, max_iter=1000).fit(X, labels)
        return self

    def proba(self, titles: list[str]) -> np.ndarray:
        """(N, C) probabilities over ``class_indices_`` of each title."""
        if not hasattr(self, "class_indices_"):
            raise ConfigError(f"specialist {self.name!r} is not fitted")
        if self.clf_ is None or not titles:
            return np.ones((len(titles), len(self.class_indices_)), np.float32)
        return self.clf_.predict_proba(self._matrix(titles, fit=False)).astype(np.float32)

    def _word_stats(self, titles: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Words per title and the share of them seen in training titles."""
        words = self.vectorisers_[0]
        tokenise, prepare, vocabulary = words.build_tokenizer(), words.build_preprocessor(), words.vocabulary_
        counts, known = np.zeros(len(titles), np.float32), np.zeros(len(titles), np.float32)
        for i, title in enumerate(titles):
            tokens = tokenise(prepare(title))
            counts[i] = len(tokens)
            known[i] = sum(t in vocabulary for t in tokens) / max(1, len(tokens))
        return counts, known

    def predict(self, readings: list[ProductReading]) -> SpecialistOutput:
        titles = [r.title or "" for r in readings]
        p = self.proba(titles)
        if not len(readings):
            return SpecialistOutput(self.class_indices_, p, np.zeros((0, len(FEATURE_NAMES)), np.float32),
                                    FEATURE_NAMES)
        top = -np.sort(-p, axis=1)[:, :2]
        margin = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0)
        counts, known = self._word_stats(titles)
        feats = np.stack([top[:, 0], margin, counts, known], axis=1).astype(np.float32)
        return SpecialistOutput(self.class_indices_, p, feats, FEATURE_NAMES)
