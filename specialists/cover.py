"""Cover specialists: a product's covers read and looked at, over the classes of one group.

- Reading: OCR text -> normalised words -> character n-gram TF-IDF and an all-MiniLM-L6-v2 sentence
  embedding -> logistic regression, plus the nearest training product's text (same title or artist).
  Character n-grams survive OCR's letter errors ("Crytng Freeman" still shares most trigrams with
  "Crying Freeman"); the embedding carries meaning to unseen titles.
- Looking: ImageNet CNN features of the pictures (efficientnet_lite0, a linear probe) -> logistic
  regression. Genres have looks (a romance is not a textbook), albums often have no readable title.
- Fused: ``w * reading + (1 - w) * looking``, with ``w`` chosen on the training products by
  cross-validation (out-of-fold probabilities, 0 and 1 included), so the fused scores do as well as the
  better part on the products it was fitted on, and the looking part weighs nothing where covers differ
  only by their words (the synthetic catalogue's do).

Books and CDs of one group look alike to the core's CNN, which scores 5,270 classes; a specialist
sees only its group's classes and the words.
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
    """Shared by the books and music specialists; subclasses only name their groups.

    Options: ``encoder`` ("default": the offline MiniLM package; a path; or "none"), ``C`` (inverse
    regularisation of the text model), ``embedding_weight`` and ``box_weight`` (scale of the dense
    blocks beside the TF-IDF block; the box features at 0.3 cost 4.6 points on rendered covers, so 0),
    ``image`` ("auto": fit the looking part and let cross-validation weigh it; "off"), ``image_C``
    (the looking part's regularisation), ``fuse_folds`` (folds of the weight search).
    """

    feature_names = FEATURE_NAMES
    needs = ("text", "pictures")

    def __init__(self, encoder: str = "default", C: float = 10.0, embedding_weight: float = 1.0,
                 box_weight: float = 0.0, image: str = "auto", image_C: float = 0.05, fuse_folds: int = 3):
        if image not in IMAGE_MODES:
            raise ConfigError(f"image must be one of {', '.join(IMAGE_MODES)}, got {image!r}")
        self.encoder, self.C, self.embedding_weight, self.box_weight = encoder, C, embedding_weight, box_weight
        self.image, self.image_C, self.fuse_folds = image, image_C, fuse_folds
        if image == "off":
            self.needs = ("text",)
        self._text_encoder: TextEncoder | None = None
        self._picture_encoder: PictureEncoder | None = None

    # -- representations --------------------------------------------------------------------
    def _dense(self, readings: list[ProductReading], texts: list[str]) -> np.ndarray:
        parts = []
        if self.encoder != "none":
            if self._text_encoder is None:
                path = default_encoder_path() if self.encoder == "default" else self.encoder
                self._text_encoder = TextEncoder.shared(str(path))
            parts.append(self._text_encoder.encode(texts) * self.embedding_weight)
        if self.box_weight:
            box = np.stack([r.picture_features.mean(0) for r in readings])
            parts.append((box - self.box_mean_) / self.box_std_ * self.box_weight)
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(texts), 0), np.float32)

    def _looks(self, readings: list[ProductReading]) -> np.ndarray:
        if self._picture_encoder is None:
            self._picture_encoder = PictureEncoder.shared()
        return self._picture_encoder.encode([r.pictures or [] for r in readings])

    @property
    def looks(self) -> bool:
        return self.image != "off"

    # -- the two parts -------------------------------------------------------------------------
    def _fit_text(self, texts: list[str], dense: np.ndarray, labels: np.ndarray):
        from scipy import sparse
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, max_features=200_000)
        tf = tfidf.fit_transform(texts)
        if len(np.unique(labels)) == 1:
            return tfidf, None, tf
        X = sparse.hstack([tf, sparse.csr_matrix(dense)]).tocsr()
        return tfidf, LogisticRegression(C=self.C, max_iter=2000).fit(X, labels), tf

    def _text_proba(self, tfidf, clf, texts: list[str], dense: np.ndarray, only: int | None) -> np.ndarray:
        from scipy import sparse

        if clf is None:
            return self._columns(np.ones((len(texts), 1), np.float32), np.array([only]))
        X = sparse.hstack([tfidf.transform(texts), sparse.csr_matrix(dense)]).tocsr()
        return self._columns(clf.predict_proba(X), clf.classes_)

    def _fit_image(self, looks: np.ndarray, labels: np.ndarray):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(looks)
        if len(np.unique(labels)) == 1:
            return scaler, None
        return scaler, LogisticRegression(C=self.image_C, max_iter=2000).fit(scaler.transform(looks), labels)

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

    def _weigh(self, texts, dense, looks, labels) -> tuple[float, dict]:
        """The reading part's weight: the best out-of-fold top-1 over a grid of weights (ties: the better
        log-likelihood), and each part's out-of-fold top-1."""
        from sklearn.model_selection import StratifiedKFold

        counts = np.bincount(np.unique(labels, return_inverse=True)[1])
        folds = min(self.fuse_folds, int(counts.max()))
        if folds < 2 or len(counts) < 2:
            return 1.0, {}
        p_text = np.zeros((len(texts), len(self.class_indices_)), np.float32)
        p_image = np.zeros_like(p_text)
        split = StratifiedKFold(folds, shuffle=True, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a class with fewer products than folds
            pairs = list(split.split(np.zeros(len(labels)), labels))
        for tr, va in pairs:
            t_tr = [texts[i] for i in tr]
            tfidf, clf, _ = self._fit_text(t_tr, dense[tr], labels[tr])
            only = int(labels[tr][0])
            p_text[va] = self._text_proba(tfidf, clf, [texts[i] for i in va], dense[va], only)
            scaler, iclf = self._fit_image(looks[tr], labels[tr])
            p_image[va] = self._image_proba(scaler, iclf, looks[va], only)
        col = {int(c): j for j, c in enumerate(self.class_indices_)}
        truth = np.array([col[int(c)] for c in labels])
        best = (-1.0, -np.inf, 1.0)
        for w in np.linspace(0, 1, 21):
            p = w * p_text + (1 - w) * p_image
            key = (float((p.argmax(1) == truth).mean()), float(np.log(p[np.arange(len(p)), truth] + 1e-9).mean()))
            if key > best[:2]:
                best = (*key, float(w))
        top1 = {"text": float((p_text.argmax(1) == truth).mean()), "image": float((p_image.argmax(1) == truth).mean()),
                "fused": best[0], "weight": best[2], "folds": folds}
        return best[2], top1

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
        self.tfidf_, self.clf_, self.train_tf_ = self._fit_text(texts, dense, labels)
        self.train_labels_ = labels.astype(np.int32)
        self.weight_, self.oof_top1_ = 1.0, {}
        self.image_scaler_ = self.image_clf_ = None
        if self.looks:
            looks = self._looks(readings)
            self.image_scaler_, self.image_clf_ = self._fit_image(looks, labels)
            self.weight_, self.oof_top1_ = self._weigh(texts, dense, looks, labels)
        return self

    def path_scores(self, readings: list[ProductReading]) -> dict[str, np.ndarray]:
        """Scores over ``class_indices_`` of each part: ``text``, ``image`` (uniform when off) and
        ``fused`` (the weighted mix ``predict`` returns), plus ``similarity`` and ``neighbour`` (the
        nearest training product's TF-IDF cosine and class)."""
        if not hasattr(self, "class_indices_"):
            raise ConfigError(f"specialist {self.name!r} is not fitted")
        n, c = len(readings), len(self.class_indices_)
        texts = [normalise(r.text) for r in readings]
        if n == 0:
            empty = np.zeros((0, c), np.float32)
            return {"text": empty, "image": empty, "fused": empty, "similarity": np.zeros(0, np.float32),
                    "neighbour": np.zeros(0, np.int32)}
        dense = self._dense(readings, texts)
        p_text = self._text_proba(self.tfidf_, self.clf_, texts, dense, self.only_class_)
        p_image = np.full((n, c), 1.0 / c, np.float32)
        if self.looks and self.weight_ < 1.0:
            p_image = self._image_proba(self.image_scaler_, self.image_clf_, self._looks(readings), self.only_class_)
        tf = self.tfidf_.transform(texts)
        sims = (tf @ self.train_tf_.T).toarray() if self.train_tf_.shape[0] else np.zeros((n, 1))
        nn = sims.argmax(1)
        return {"text": p_text, "image": p_image, "fused": self.weight_ * p_text + (1 - self.weight_) * p_image,
                "similarity": sims[np.arange(n), nn].astype(np.float32), "neighbour": self.train_labels_[nn]}

    def predict(self, readings: list[ProductReading]) -> SpecialistOutput:
        parts = self.path_scores(readings)
        fused, text = parts["fused"], parts["text"]
        n = len(readings)
        if n == 0:
            return SpecialistOutput(self.class_indices_, fused, np.zeros((0, len(FEATURE_NAMES)), np.float32),
                                    FEATURE_NAMES)

        def top2(p):
            s = np.sort(p, axis=1)[:, ::-1]
            return s[:, 0], s[:, 0] - (s[:, 1] if s.shape[1] > 1 else 0)

        t1, tm = top2(text)
        f1, fm = top2(fused)
        best = self.class_indices_[fused.argmax(1)]
        feats = np.stack([t1, tm, parts["similarity"], (parts["neighbour"] == best).astype(np.float32),
                          parts["image"].max(1), f1, fm], axis=1).astype(np.float32)
        return SpecialistOutput(self.class_indices_, fused.astype(np.float32), feats, FEATURE_NAMES)

    def upgrade_state(self) -> None:
        """Attributes of a specialist pickled by etalage 0.1 (``--trust-pickle``) under today's names."""
        renames = {"class_indices": "class_indices_", "tfidf": "tfidf_", "clf": "clf_", "_only": "only_class_",
                   "_train_tf": "train_tf_", "_train_labels": "train_labels_", "_box_mean": "box_mean_",
                   "_box_std": "box_std_", "encoder_spec": "encoder"}
        for old, new in renames.items():
            if old in self.__dict__:
                setattr(self, new, self.__dict__.pop(old))
        for key, value in (("only_class_", None), ("weight_", 1.0), ("oof_top1_", {}), ("image_scaler_", None),
                           ("image_clf_", None), ("image", "off"), ("image_C", 0.05), ("fuse_folds", 3)):
            self.__dict__.setdefault(key, value)
        self.needs = ("text",)
        self._text_encoder = self._picture_encoder = None
