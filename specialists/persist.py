"""Fitted specialists on disk as data only: a folder that someone sends you cannot run code.

``specialist.json`` is the manifest: format version, the plugin's name, class and distribution, the
etalage and plugin versions it was fitted with, and its constructor parameters (JSON). The learned
attributes (``*_``) go to ``state.skops``: skops rebuilds numpy arrays, scipy matrices, plain
containers and scikit-learn estimators without unpickling, and refuses any other type unless it is
trusted (``TRUSTED_TYPES`` here, plus the plugin's own ``trusted_types``). A folder from etalage 0.1
(``specialist.joblib``, a pickle, of a specialist whose inputs have changed since) is refused with the
command that refits it.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import warnings
from pathlib import Path

from etalage.errors import ConfigError, StageOutputError, UnsafeFileError
from etalage.files import atomic_write, write_json_atomic

FORMAT = 1
MANIFEST, STATE = "specialist.json", "state.skops"
# Types beyond skops's defaults (numpy, builtins, scikit-learn estimators) that specialists may hold.
TRUSTED_TYPES = ("scipy.sparse._csr.csr_matrix", "scipy.sparse._csc.csc_matrix", "scipy.sparse._coo.coo_matrix",
                 "collections.Counter", "collections.defaultdict", "collections.OrderedDict")


def etalage_version() -> str:
    from etalage import __version__

    return __version__


def plugin_distribution(cls: type) -> tuple[str, str]:
    """(distribution name, version) of the package that provides ``cls`` ('?' when unknown)."""
    top = cls.__module__.split(".")[0]
    for dist in md.packages_distributions().get(top, []):
        try:
            return dist, md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "?", "?"


def save_specialist(spec, folder: str | Path) -> None:
    import skops.io as sio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = spec.get_params()
    try:
        json.dumps(params)
    except TypeError as exc:
        raise ConfigError(f"specialist {spec.name!r}: constructor parameters must be plain JSON values ({exc})"
                          ) from None
    dist, version = plugin_distribution(type(spec))
    manifest = {"format": FORMAT, "name": spec.name, "class": f"{type(spec).__module__}:{type(spec).__qualname__}",
                "distribution": dist, "plugin_version": version, "etalage_version": etalage_version(),
                "params": params, "groups": list(spec.groups), "feature_names": list(spec.feature_names),
                "state": STATE}
    with atomic_write(folder / STATE, "wb") as fh:
        fh.write(sio.dumps(spec.learned_state()))
    write_json_atomic(folder / MANIFEST, manifest)


def load_specialist(cls: type, folder: str | Path):
    import skops.io as sio

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    refit = f"refit it with `etalage specialists fit --out {folder.parent} --names {cls.name or folder.name}`"
    if (folder / "specialist.joblib").exists() and not (folder / STATE).exists():
        raise UnsafeFileError(f"{folder}: a specialist saved as a pickle by etalage 0.1; loading it could run code "
                              f"and its inputs have changed since: {refit}")
    if not manifest_path.exists() or not (folder / STATE).exists():
        raise StageOutputError(f"{folder}: no saved specialist; {refit}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, OSError) as exc:
        raise StageOutputError(f"{manifest_path}: unreadable manifest ({exc}); {refit}") from None
    if manifest.get("format") != FORMAT:
        raise StageOutputError(f"{folder}: saved in format {manifest.get('format')!r}, this etalage reads {FORMAT}; "
                               f"{refit}")
    if cls.name and manifest.get("name") != cls.name:
        raise ConfigError(f"{folder}: holds specialist {manifest.get('name')!r}, not {cls.name!r}")
    _warn_versions(cls, folder, manifest)
    data = (folder / STATE).read_bytes()
    trusted = list(TRUSTED_TYPES) + list(getattr(cls, "trusted_types", ()))
    untrusted = [t for t in sio.get_untrusted_types(data=data) if t not in trusted]
    if untrusted:
        raise UnsafeFileError(f"{folder / STATE}: refused: it holds types outside the trusted list "
                              f"({', '.join(untrusted[:5])}); {refit}, or add them to the plugin's trusted_types")
    try:
        state = sio.loads(data, trusted=trusted)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is one case
        raise StageOutputError(f"{folder / STATE}: unreadable ({type(exc).__name__}: {exc}); {refit}") from None
    try:
        obj = cls(**manifest.get("params", {}))
    except TypeError as exc:
        raise ConfigError(f"{folder}: saved parameters do not fit {cls.__qualname__} ({exc}); {refit}") from None
    for key, value in state.items():
        setattr(obj, key, value)
    return obj


def _warn_versions(cls: type, folder: Path, manifest: dict) -> None:
    ours = etalage_version()
    if manifest.get("etalage_version", "").split(".")[:2] != ours.split(".")[:2]:
        warnings.warn(f"{folder}: fitted with etalage {manifest.get('etalage_version')}, this is {ours}; refit if "
                      f"its results look wrong", stacklevel=3)
    _, version = plugin_distribution(cls)
    if manifest.get("plugin_version") not in ("?", version):
        warnings.warn(f"{folder}: fitted with {manifest.get('distribution')} {manifest.get('plugin_version')}, "
                      f"installed is {version}; refit if its results look wrong", stacklevel=3)

