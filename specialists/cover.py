"""Cover specialists: a product's covers read and looked at, over the classes of their groups.

- Reading: OCR text -> normalised words -> character n-gram (2-4) and word n-gram (1-2) TF-IDF, and an
  all-MiniLM-L6-v2 sentence embedding of the text and of its dictionary words alone -> logistic
  regression, plus the nearest training product's text (same title or artist). Character n-grams
  survive OCR's letter errors ("Crytng Freeman" still shares most trigrams with "Crying Freeman");
  the embeddings carry meaning to unseen titles.
- Looking: ImageNet CNN features of the pictures (efficientnet_lite0; each picture averaged with its
  mirror image) -> a strongly regularised logistic regression (a linear probe). Genres have looks (a
  romance is not a textbook), albums often show no readable title.
- Blend: the two parts' out-of-fold probabilities on the training products (``blend_folds`` folds)
  decide how to combine them: a weighted mean for every weight from 0 to 1, or a stacked logistic
  regression over both parts' log-probabilities; the one with the best out-of-fold top-1 is kept, so
  the blended scores do as well as the better part on the products it was fitted on, and the looking
  part weighs nothing where covers differ only by their words (the synthetic catalogue's do). (The
  blend is the specialist's own; "fusion" is the reranker over every signal, ``etalage.fusion``. The
  names ``fused`` in ``path_scores`` and ``oof_top1_`` and the ``fused_*`` features are kept: saved
  fusion models and the cover benchmark's reports use them.)

Settings chosen by exploratory 5-fold cross-validation runs on the real book covers of ``books-dev``
(one run each, not kept in benchmarks/results): word n-grams +1.4 points, the second embedding +0.8, the
probe's regularisation C=0.001 instead of 0.05 +5 and the mirror +1 for the looking part, stacking
+0.4 over the best weighted mean. The final cross-validated figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import warnings

import numpy as np

from etalage.errors import ConfigError
from etalage.specialists.base import ProductReading, Specialist, SpecialistOutput
from etalage.specialists.encoders import PictureEncoder, TextEncoder, default_encoder_path, normalise

FEATURE_NAMES = ("text_top1_prob", "text_margin", "knn_max_similarity", "knn_agrees", "image_top1_prob",
                 "fused_top1_prob", "fused_margin")
IMAGE_MODES = ("auto", "off")


class CoverSpecialist(Specialist):
    """Shared by the media, books and music specialists; subclasses only name their groups.

    Options: ``encoder`` ("default": the offline MiniLM package; a path; or "none"), ``C`` (inverse
    regularisation of the text model), ``word_grams`` (word n-grams beside the character ones),
    ``embedding_weight`` and ``box_weight`` (scale of the dense blocks beside the TF-IDF blocks; the box
    features at 0.3 cost 4.6 points on rendered covers, so 0), ``image`` ("auto": fit the looking part
    and let cross-validation weigh it; "off"), ``image_C`` (the looking part's regularisation),
    ``blend_folds`` (folds of the out-of-fold search that chooses the blend; ``fuse_folds``, its name
    before, is read too, so specialists saved with it still load).
    """

    feature_names = FEATURE_NAMES
    needs = ("text", "pictures")

    def __init__(self, encoder: str = "default", C: float = 3.0, word_grams: bool = True,
                 embedding_weight: float = 0.7, box_weight: float = 0.0, image: str = "auto", image_C: float = 0.001,
                 blend_folds: int = 3, **renamed):
        if "fuse_folds" in renamed:  # the option's name in specialists saved before it was renamed
            blend_folds = renamed.pop("fuse_folds")
        if renamed:
            raise TypeError(f"unexpected options {', '.join(sorted(renamed))}")
        if image not in IMAGE_MODES:
            raise ConfigError(f"image must be one of {', '.join(IMAGE_MODES)}, got {image!r}")
        self.encoder, self.C, self.word_grams = encoder, C, word_grams
        self.embedding_weight, self.box_weight = embedding_weight, box_weight
        self.image, self.image_C, self.blend_folds = image, image_C, blend_folds
        if image == "off":
            self.needs = ("text",)
        self._text_encoder: TextEncoder | None = None
        self._picture_encoder: PictureEncoder | None = None

    # -- representations --------------------------------------------------------------------
    def _dense(self, readings: list[ProductReading], texts: list[str]) -> np.ndarray:
        from etalage.ocr.lexicon import dictionary_words

        parts = []
        if self.encoder != "none":
            if self._text_encoder is None:
                path = default_encoder_path() if self.encoder == "default" else self.encoder
                self._text_encoder = TextEncoder.shared(str(path))
            weight = self.embedding_weight / np.sqrt(2)
            parts.append(self._text_encoder.encode(texts) * weight)
            parts.append(self._text_encoder.encode([dictionary_words(t) for t in texts]) * weight)
        if self.box_weight:
            box = np.stack([r.picture_features.mean(0) for r in readings])
            parts.append((box - self.box_mean_) / self.box_std_ * self.box_weight)
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(texts), 0), np.float32)

    def _looks(self, readings: list[ProductReading]) -> np.ndarray:
        if self._picture_encoder is None:
            self._picture_encoder = PictureEncoder.shared()
        return self._picture_encoder.encode([r.pictures or [] for r in readings], flip=True)

    @property
    def looks(self) -> bool:
        return self.image != "off"

    # -- the two parts -------------------------------------------------------------------------
    def _vectorisers(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        out = [TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, max_features=200_000)]
        if self.word_grams:
            out.append(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True))
        return out

    @staticmethod
    def _text_matrix(vectorisers, texts: list[str], dense: np.ndarray, fit: bool):
        from scipy import sparse

        blocks = [v.fit_transform(texts) if fit else v.transform(texts) for v in vectorisers]
        return sparse.hstack([*blocks, sparse.csr_matrix(dense)]).tocsr(), blocks[0]

    def _fit_text(self, texts: list[str], dense: np.ndarray, labels: np.ndarray):
        from sklearn.linear_model import LogisticRegression

        vectorisers = self._vectorisers()
        X, chars = self._text_matrix(vectorisers, texts, dense, fit=True)
        if len(np.unique(labels)) == 1:
            return vectorisers, None, chars
        return vectorisers, LogisticRegression(C=self.C, max_iter=3000).fit(X, labels), chars

    def _text_proba(self, vectorisers, clf, texts: list[str], dense: np.ndarray, only: int | None) -> np.ndarray:
        if clf is None:
            return self._columns(np.ones((len(texts), 1), np.float32), np.array([only]))
        return self._columns(clf.predict_proba(self._text_matrix(vectorisers, texts, dense, fit=False)[0]),
                             clf.classes_)

    def _fit_image(self, looks: np.ndarray, labels: np.ndarray):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(looks)
        if len(np.unique(labels)) == 1:
            return scaler, None
        return scaler, LogisticRegression(C=self.image_C, max_iter=3000).fit(scaler.transform(looks), labels)

    def _image_proba(self, scaler, clf, looks: np.ndarray, only: int | None) -> np.ndarray:
        if clf is None:
            return self._columns(np.ones((len(looks), 1), np.float32), np.array([only]))
        return self._columns(clf.predict_proba(scaler.transform(looks)), clf.classes_)

    def _columns(self, proba: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Probabilities over ``classes`` spread onto the columns of ``class_indices_``."""
        col = {int(c): j for j, c in enumerate(self.class_indices_)}
        out = np.zeros((len(proba), len(self.class_indices_)), np.float32)
        out[:, [col[int(c)] for c in classes]] = proba
        return out

    # -- combining them ------------------------------------------------------------------------
    @staticmethod
    def _stack_input(p_text: np.ndarray, p_image: np.ndarray) -> np.ndarray:
        return np.hstack([np.log(p_text + 1e-6), np.log(p_image + 1e-6)])

    def _oof(self, texts, dense, looks, labels, folds: int) -> tuple[np.ndarray, np.ndarray]:
        """Out-of-fold probabilities of both parts on the training products."""
        from sklearn.model_selection import StratifiedKFold

        p_text = np.zeros((len(texts), len(self.class_indices_)), np.float32)
        p_image = np.zeros_like(p_text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a class with fewer products than folds
            pairs = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(np.zeros(len(labels)), labels))
        for tr, va in pairs:
            only = int(labels[tr][0])
            vectorisers, clf, _ = self._fit_text([texts[i] for i in tr], dense[tr], labels[tr])
            p_text[va] = self._text_proba(vectorisers, clf, [texts[i] for i in va], dense[va], only)
            scaler, iclf = self._fit_image(looks[tr], labels[tr])
            p_image[va] = self._image_proba(scaler, iclf, looks[va], only)
        return p_text, p_image

    def _choose_blend(self, texts, dense, looks, labels) -> tuple[dict, object, dict]:
        """The combination with the best out-of-fold top-1 (ties: the better log-likelihood): a weighted
        mean (weight of the reading part 0..1) or a stacked logistic regression; returns it, the fitted
        stacker (or None) and each candidate's out-of-fold top-1."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_predict

        counts = np.bincount(np.unique(labels, return_inverse=True)[1])
        folds = min(self.blend_folds, int(counts.max()))
        if folds < 2 or len(counts) < 2:
            return {"kind": "mean", "weight": 1.0}, None, {}
        p_text, p_image = self._oof(texts, dense, looks, labels, folds)
        col = {int(c): j for j, c in enumerate(self.class_indices_)}
        truth = np.array([col[int(c)] for c in labels])

        def score(p: np.ndarray) -> tuple[float, float]:
            return float((p.argmax(1) == truth).mean()), float(np.log(p[np.arange(len(p)), truth] + 1e-9).mean())

        best, key = {"kind": "mean", "weight": 1.0}, (-1.0, -np.inf)
        for w in np.linspace(0, 1, 21):
            k = score(w * p_text + (1 - w) * p_image)
            if k > key:
                best, key = {"kind": "mean", "weight": float(w)}, k
        stacker, Z = None, self._stack_input(p_text, p_image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            inner = min(folds, int(counts.min())) if counts.min() >= 2 else 0
            if inner >= 2:
                p_stack = self._columns(cross_val_predict(LogisticRegression(max_iter=2000), Z, labels, cv=inner,
                                                          method="predict_proba"), np.unique(labels))
                k = score(p_stack)
                if k > key:
                    best, key = {"kind": "stack", "weight": best["weight"]}, k
                    stacker = LogisticRegression(max_iter=2000).fit(Z, labels)
        oof = {"text": score(p_text)[0], "image": score(p_image)[0], "fused": key[0], "folds": folds, **best}
        return best, stacker, oof

    # -- API -----------------------------------------------------------------------------------
    def fit(self, readings: list[ProductReading], labels: np.ndarray, taxonomy) -> CoverSpecialist:
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
        dense = self._dense(readings, texts)
        self.only_class_ = int(labels[0]) if len(np.unique(labels)) == 1 else None
        self.vectorisers_, self.clf_, self.train_tf_ = self._fit_text(texts, dense, labels)
        self.train_labels_ = labels.astype(np.int32)
        self.blend_, self.stacker_, self.oof_top1_ = {"kind": "mean", "weight": 1.0}, None, {}
        self.image_scaler_ = self.image_clf_ = None
        if self.looks:
            looks = self._looks(readings)
            self.image_scaler_, self.image_clf_ = self._fit_image(looks, labels)
            self.blend_, self.stacker_, self.oof_top1_ = self._choose_blend(texts, dense, looks, labels)
        return self

    @property
    def fusion_(self) -> dict:
        """``blend_`` under its name before the rename (not saved: ``learned_state`` reads attributes)."""
        return self.blend_

    @fusion_.setter
    def fusion_(self, value: dict) -> None:  # specialists saved before the rename hold ``fusion_``
        self.blend_ = value

    @property
    def weight_(self) -> float:
        """The reading part's weight in the weighted mean (1: the looking part is not used)."""
        return float(self.blend_["weight"])

    def path_scores(self, readings: list[ProductReading]) -> dict[str, np.ndarray]:
        """Scores over ``class_indices_`` of each part: ``text``, ``image`` (uniform when unused) and
        ``fused`` (the blend, what ``predict`` returns), plus ``similarity`` and ``neighbour`` (the nearest
        training product's character TF-IDF cosine and class)."""
        if not hasattr(self, "class_indices_"):
            raise ConfigError(f"specialist {self.name!r} is not fitted")
        n, c = len(readings), len(self.class_indices_)
        texts = [normalise(r.text) for r in readings]
        if n == 0:
            empty = np.zeros((0, c), np.float32)
            return {"text": empty, "image": empty, "fused": empty, "similarity": np.zeros(0, np.float32),
                    "neighbour": np.zeros(0, np.int32)}
        dense = self._dense(readings, texts)
        p_text = self._text_proba(self.vectorisers_, self.clf_, texts, dense, self.only_class_)
        p_image = np.full((n, c), 1.0 / c, np.float32)
        if self.looks and (self.stacker_ is not None or self.weight_ < 1.0):
            p_image = self._image_proba(self.image_scaler_, self.image_clf_, self._looks(readings), self.only_class_)
        if self.stacker_ is not None:
            blended = self._columns(self.stacker_.predict_proba(self._stack_input(p_text, p_image)),
                                    self.stacker_.classes_)
        else:
            w = self.blend_["weight"]
            blended = w * p_text + (1 - w) * p_image
        tf = self.vectorisers_[0].transform(texts)
        sims = (tf @ self.train_tf_.T).toarray() if self.train_tf_.shape[0] else np.zeros((n, 1))
        nn = sims.argmax(1)
        return {"text": p_text, "image": p_image, "fused": blended.astype(np.float32),
                "similarity": sims[np.arange(n), nn].astype(np.float32), "neighbour": self.train_labels_[nn]}

    def predict(self, readings: list[ProductReading]) -> SpecialistOutput:
        parts = self.path_scores(readings)
        blended, text = parts["fused"], parts["text"]
        if len(readings) == 0:
            return SpecialistOutput(self.class_indices_, blended, np.zeros((0, len(FEATURE_NAMES)), np.float32),
                                    FEATURE_NAMES)

        def top2(p):
            s = np.sort(p, axis=1)[:, ::-1]
            return s[:, 0], s[:, 0] - (s[:, 1] if s.shape[1] > 1 else 0)

        t1, tm = top2(text)
        f1, fm = top2(blended)
        best = self.class_indices_[blended.argmax(1)]
        feats = np.stack([t1, tm, parts["similarity"], (parts["neighbour"] == best).astype(np.float32),
                          parts["image"].max(1), f1, fm], axis=1).astype(np.float32)
        return SpecialistOutput(self.class_indices_, blended, feats, FEATURE_NAMES)

