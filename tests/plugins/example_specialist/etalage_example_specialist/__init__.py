"""A minimal specialist: votes for the class whose training products shared the most words."""

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from etalage.specialists import Specialist, SpecialistOutput


class KeywordSpecialist(Specialist):
    name = "keywords"
    groups = ("MUSIQUE",)
    feature_names = ("keyword_top",)

    def fit(self, readings, labels, taxonomy):
        self.class_indices = self.classes(taxonomy)
        self.votes = defaultdict(Counter)
        for reading, label in zip(readings, labels, strict=True):
            for word in reading.text.lower().split():
                self.votes[word][int(label)] += 1

    def predict(self, readings):
        col = {int(c): j for j, c in enumerate(self.class_indices)}
        scores = np.full((len(readings), len(col)), 1e-3, np.float32)
        for i, reading in enumerate(readings):
            for word in reading.text.lower().split():
                for label, n in self.votes.get(word, {}).items():
                    scores[i, col[label]] += n
        scores /= scores.sum(1, keepdims=True)
        return SpecialistOutput(self.class_indices, scores, scores.max(1, keepdims=True), ("keyword_top",))

    def save(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, "keywords.json").write_text(json.dumps(
            {"classes": self.class_indices.tolist(), "votes": {w: dict(c) for w, c in self.votes.items()}}))

    @classmethod
    def load(cls, folder):
        raw = json.loads(Path(folder, "keywords.json").read_text())
        obj = cls()
        obj.class_indices = np.array(raw["classes"], np.int32)
        obj.votes = {w: Counter({int(k): v for k, v in c.items()}) for w, c in raw["votes"].items()}
        return obj


class ExplodingSpecialist(KeywordSpecialist):
    """Fails at prediction time: the pipeline must report it by name and go on."""

    name = "exploding"

    def predict(self, readings):
        raise RuntimeError("boom")
