"""Progress bars for long work: tqdm on a terminal, nothing in a log file.

A bar redrawn with ``\\r`` into a file or a CI log fills it with frames, so bars show only when
stderr is a terminal; ``ETALAGE_PROGRESS=1`` forces them on (``0`` off). Every long loop of the
library goes through ``bar``; ``enabled=False`` (the CLI's ``-q``) always wins.
"""

from __future__ import annotations

import os
import sys


def bars_wanted(enabled: bool = True) -> bool:
    if not enabled:
        return False
    forced = os.environ.get("ETALAGE_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


def bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm(iterable, **kwargs)``, disabled unless wanted (see module docstring)."""
    from tqdm import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not bars_wanted(enabled), **kwargs)
