"""Example third-party specialists, as docs/plugins.md shows them (etalage's tests install this package).

``KeywordSpecialist`` reads: it votes for the class whose training products shared the most words.
``ColourSpecialist`` looks: it compares a product's mean picture colour with each class's.
The rest are faulty on purpose, for the tests of what a plugin can and cannot break.
"""

from collections import Counter

import numpy as np

from etalage.specialists import Specialist, SpecialistOutput


class KeywordSpecialist(Specialist):
    groups = ("MUSIQUE",)
    feature_names = ("keyword_top",)

    def __init__(self, smoothing: float = 1e-3):
        self.smoothing = smoothing

    def fit(self, readings, labels, taxonomy):
        self.class_indices_ = self.classes(taxonomy)
        votes = {}
        for reading, label in zip(readings, labels, strict=True):
            for word in reading.text.lower().split():
                votes.setdefault(word, Counter())[int(label)] += 1
        self.votes_ = {w: dict(c) for w, c in votes.items()}
        return self

    def predict(self, readings):
        col = {int(c): j for j, c in enumerate(self.class_indices_)}
        scores = np.full((len(readings), len(col)), self.smoothing, np.float32)
        for i, reading in enumerate(readings):
            for word in reading.text.lower().split():
                for label, n in self.votes_.get(word, {}).items():
                    scores[i, col[label]] += n
        scores /= scores.sum(1, keepdims=True)
        return SpecialistOutput(self.class_indices_, scores, scores.max(1, keepdims=True), self.feature_names)


class ColourSpecialist(Specialist):
    groups = ("MUSIQUE",)
    needs = ("pictures",)
    feature_names = ("colour_distance",)

    def fit(self, readings, labels, taxonomy):
        self.class_indices_ = self.classes(taxonomy)
        colours = np.stack([self._colour(r) for r in readings])
        labels = np.asarray(labels)
        self.centres_ = np.stack([colours[labels == c].mean(0) if (labels == c).any() else np.full(3, 128.0)
                                  for c in self.class_indices_])
        return self

    @staticmethod
    def _colour(reading):
        pics = reading.pictures or [np.full((8, 8, 3), 128, np.uint8)]
        return np.mean([p.reshape(-1, 3).mean(0) for p in pics], axis=0)

    def predict(self, readings):
        colours = np.stack([self._colour(r) for r in readings]) if readings else np.zeros((0, 3))
        dist = np.linalg.norm(colours[:, None, :] - self.centres_[None], axis=2)
        scores = np.exp(-dist / 20)
        scores /= scores.sum(1, keepdims=True)
        return SpecialistOutput(self.class_indices_, scores.astype(np.float32),
                                dist.min(1, keepdims=True).astype(np.float32), self.feature_names)


class OldContractSpecialist(KeywordSpecialist):
    """Written for etalage 0.1: saves and loads itself, and fit returns nothing."""

    def fit(self, readings, labels, taxonomy):
        super().fit(readings, labels, taxonomy)

    def save(self, folder):
        import json
        from pathlib import Path

        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, "old.json").write_text(json.dumps({"classes": self.class_indices_.tolist(),
                                                        "votes": self.votes_}))

    @classmethod
    def load(cls, folder):
        import json
        from pathlib import Path

        raw = json.loads(Path(folder, "old.json").read_text())
        obj = cls()
        obj.class_indices_ = np.array(raw["classes"], np.int32)
        obj.votes_ = {w: {int(k): v for k, v in c.items()} for w, c in raw["votes"].items()}
        return obj


class FlakySpecialist(KeywordSpecialist):
    """Fails at prediction time while ETALAGE_EXAMPLE_FAIL=1 (a service it needs is down, say)."""

    def predict(self, readings):
        import os

        if os.environ.get("ETALAGE_EXAMPLE_FAIL") == "1":
            raise ConnectionError("the keyword service is down")
        return super().predict(readings)


class ExplodingSpecialist(KeywordSpecialist):
    """Fails at prediction time."""

    def predict(self, readings):
        raise RuntimeError("boom")


class WideSpecialist(KeywordSpecialist):
    """Returns one score column too many."""

    def predict(self, readings):
        out = super().predict(readings)
        return SpecialistOutput(out.class_indices, np.hstack([out.scores, out.scores[:, :1]]), out.features,
                                out.feature_names)


class ForeignSpecialist(KeywordSpecialist):
    """Claims a class outside the taxonomy."""

    def predict(self, readings):
        out = super().predict(readings)
        return SpecialistOutput(out.class_indices + 10_000, out.scores, out.features, out.feature_names)


class NanSpecialist(KeywordSpecialist):
    """Scores NaN."""

    def predict(self, readings):
        out = super().predict(readings)
        return SpecialistOutput(out.class_indices, out.scores * np.nan, out.features, out.feature_names)


class BadGateSpecialist(KeywordSpecialist):
    """Its gate raises."""

    def gate(self, ranking, taxonomy):
        raise KeyError("no such group")


class RenamedSpecialist(KeywordSpecialist):
    """Declares a name other than its entry point's."""

    name = "something-else"
