"""Every call into a plugin goes through here: a faulty specialist costs its own contribution, never
the pipeline.

``gate`` and ``predict`` run inside a guard that validates what comes back (shapes, class indices
within the taxonomy and the plugin's own classes, finite values, the declared feature names); any
exception or failed check becomes one warning naming the plugin and the check, and the caller goes on
without that plugin for that chunk (``None`` comes back). ``check_fitted`` runs the same checks on a
few training readings right after ``fit``, where a failure is an error: a broken plugin is refused
before any long stage.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from etalage.errors import ConfigError
from etalage.specialists.base import ProductReading, Specialist, SpecialistOutput

log = logging.getLogger(__name__)


class PluginFault(Exception):
    """What a plugin did wrong (the message names the check)."""


def validate_output(spec: Specialist, out, n: int, taxonomy) -> SpecialistOutput:
    """``out`` when it is a well-formed answer for ``n`` products, else ``PluginFault``."""
    if not isinstance(out, SpecialistOutput):
        raise PluginFault(f"predict returned {type(out).__name__}, not a SpecialistOutput")
    classes = np.asarray(out.class_indices)
    scores, feats = np.asarray(out.scores), np.asarray(out.features)
    if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
        raise PluginFault(f"class_indices must be a 1-d integer array, got shape {classes.shape} {classes.dtype}")
    if scores.shape != (n, len(classes)):
        raise PluginFault(f"scores have shape {scores.shape}, expected ({n}, {len(classes)}) (products x classes)")
    if len(classes) and (classes.min() < 0 or classes.max() >= taxonomy.n_classes):
        raise PluginFault(f"class index {int(classes.max() if classes.max() >= taxonomy.n_classes else classes.min())} "
                          f"is outside the taxonomy's {taxonomy.n_classes} classes")
    own = set(spec.classes(taxonomy).tolist())
    foreign = [int(c) for c in classes if int(c) not in own]
    if foreign:
        raise PluginFault(f"class {foreign[0]} is not under its groups {', '.join(spec.groups)}")
    if len(set(classes.tolist())) != len(classes):
        raise PluginFault("class_indices repeat a class")
    if not np.isfinite(scores).all():
        raise PluginFault("scores hold NaN or infinite values")
    if tuple(out.feature_names) != tuple(spec.feature_names):
        raise PluginFault(f"returned features {list(out.feature_names)} but declares feature_names "
                          f"{list(spec.feature_names)}")
    if feats.shape != (n, len(spec.feature_names)):
        raise PluginFault(f"features have shape {feats.shape}, expected ({n}, {len(spec.feature_names)})")
    if not np.isfinite(feats).all():
        raise PluginFault("features hold NaN or infinite values")
    return SpecialistOutput(classes.astype(np.int32), scores.astype(np.float32), feats.astype(np.float32),
                            tuple(out.feature_names))


def _warn(spec: Specialist, what: str, exc: BaseException) -> None:
    detail = str(exc) if isinstance(exc, PluginFault) else f"{type(exc).__name__}: {exc}"
    message = f"specialist {spec.name!r} failed in {what} and is skipped there: {detail}"
    warnings.warn(message, stacklevel=3)
    log.debug(message)


def guarded_gate(spec: Specialist, ranking, taxonomy) -> np.ndarray | None:
    """``spec.gate`` checked to be one boolean per product; None (warned) when it fails."""
    try:
        mask = np.asarray(spec.gate(ranking, taxonomy))
        if mask.shape != (len(ranking),) or mask.dtype != bool:
            raise PluginFault(f"gate returned shape {mask.shape} {mask.dtype}, expected ({len(ranking)},) bool")
        return mask
    except Exception as exc:  # noqa: BLE001 - a plugin's failure is contained
        _warn(spec, "gate", exc)
        return None


def guarded_predict(spec: Specialist, readings: list[ProductReading], taxonomy) -> SpecialistOutput | None:
    """``spec.predict`` validated (``validate_output``); None (warned) when it fails."""
    try:
        return validate_output(spec, spec.predict(readings), len(readings), taxonomy)
    except Exception as exc:  # noqa: BLE001 - a plugin's failure is contained
        _warn(spec, "predict", exc)
        return None


def check_fitted(spec: Specialist, readings: list[ProductReading], taxonomy) -> None:
    """Right after ``fit``: ``predict`` on a few training readings must pass every check, else a
    ``ConfigError`` naming the plugin (before any long stage runs it)."""
    sample = readings[: min(8, len(readings))]
    try:
        validate_output(spec, spec.predict(sample), len(sample), taxonomy)
    except Exception as exc:  # noqa: BLE001
        detail = str(exc) if isinstance(exc, PluginFault) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"specialist {spec.name!r} fails on its own training products: {detail}") from None
