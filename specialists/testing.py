"""Helpers for plugin authors' tests: make readings by hand and check a specialist the way etalage
will use it (as scikit-learn's ``check_estimator`` does for estimators).

    from etalage.specialists.testing import check_specialist
    from my_package import PhoneSpecialist

    def test_plugin():
        check_specialist(PhoneSpecialist)      # raises AssertionError naming what is wrong
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from etalage.specialists.base import EVERY_GROUP, Specialist
from etalage.specialists.guard import PluginFault, validate_output
from etalage.specialists.readings import (
    make_reading,  # also for plugin authors: etalage.specialists.testing.make_reading
)

WORDS = ("amour maison jardin histoire cuisine voyage guerre soleil nuit hiver mer montagne ville chemin forest river "
         "castle dragon secret silence memory light shadow star sky earth fire water wind stone queen king prince")


def _training_set(spec: Specialist, taxonomy, n_per_class: int, seed: int):
    """Readings whose words (on the picture and in the title) and picture colours depend on the class, so
    any sensible specialist can learn."""
    rng = np.random.default_rng(seed)
    classes = spec.classes(taxonomy)
    vocab = WORDS.split()
    readings, labels = [], []
    for k, c in enumerate(classes):
        own = [vocab[(3 * k + j) % len(vocab)] for j in range(3)]
        colour = np.array([(53 * k) % 256, (97 * k) % 256, (151 * k) % 256], np.uint8)
        for _ in range(n_per_class):
            text = " ".join(rng.choice(own, 3)) + f" {rng.choice(vocab)}"
            pic = np.clip(colour + rng.integers(-10, 10, (180, 180, 3)), 0, 255).astype(np.uint8)
            readings.append(make_reading(text, len(readings), [pic], title=text))
            labels.append(int(c))
    return readings, np.array(labels, np.int32)


def check_specialist(cls: type[Specialist], taxonomy=None, name: str | None = None, **options) -> Specialist:
    """Fit ``cls`` on a small learnable set and check what etalage relies on: ``fit`` returns self;
    ``predict`` passes the pipeline's guard (shapes, classes of its groups, finite values, declared
    feature names) on several products, one product and none; a product without text, pictures or title
    does not break it; it saves and loads as data only, giving the same scores; it learned something (top-1
    above chance on its training set). ``taxonomy`` defaults to the synthetic one (which has LIBRAIRIE,
    MUSIQUE and a dozen other real level-1 names). Returns the fitted specialist; raises
    ``AssertionError`` naming the failed check."""
    from etalage.synth import default_taxonomy

    taxonomy = taxonomy or default_taxonomy()
    assert isinstance(cls, type) and issubclass(cls, Specialist), f"{cls!r} is not a Specialist subclass"
    assert cls.groups, "groups is empty: name the level-1 categories the specialist scores (or EVERY_GROUP)"
    for group in cls.groups:
        assert group == EVERY_GROUP or group in taxonomy.level1_names, \
            f"group {group!r} is not a level-1 name of the taxonomy"
    spec = cls(**options)
    if not cls.__dict__.get("name") and not spec.name:
        spec.name = name or cls.__name__.lower()
    readings, labels = _training_set(spec, taxonomy, 6, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fitted = spec.fit(readings, labels, taxonomy)
    assert fitted is spec, "fit must return self (the fitted specialist)"

    def guarded(rs):
        try:
            return validate_output(spec, spec.predict(rs), len(rs), taxonomy)
        except PluginFault as exc:
            raise AssertionError(f"predict on {len(rs)} product(s): {exc}") from None

    out = guarded(readings)
    guarded(readings[:1])
    guarded([])
    guarded([make_reading("", 99, [])])
    top = out.class_indices[out.scores.argmax(1)]
    chance = 1 / max(1, len(out.class_indices))
    assert (top == labels).mean() > chance, f"top-1 {(top == labels).mean():.2f} on its own training set is not " \
                                            f"above chance ({chance:.2f})"
    with tempfile.TemporaryDirectory() as tmp:
        spec.save(Path(tmp) / "spec")
        again = type(spec).load(Path(tmp) / "spec")
    assert np.allclose(again.predict(readings).scores, out.scores, atol=1e-5), "scores change after save and load"
    return spec
