"""How a job uses the machine it runs on: one value, made once at the top (the CLI, a notebook) and
handed down, instead of the same five settings threaded through every signature."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Compute:
    """``device``: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``. ``batch_size``: products per core
    batch. ``workers``: decoding (or reading) processes; None: the default of the device (none on a CPU, most
    cores on CUDA). ``trust_pickle``: load model files that hold more than tensors (they can run code: only
    files you made yourself). ``progress``: progress bars on a terminal. ``cache_dir``: where files derived
    from read-only inputs go (indexes, picture hashes, the default OCR cache); None: beside the input when
    its folder is writable, else the user cache folder (``ETALAGE_CACHE_DIR`` also sets it).

    >>> from etalage import Compute
    >>> fast = Compute(device="cuda", batch_size=256)
    >>> quiet = fast.but(progress=False)
    """

    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    trust_pickle: bool = False
    progress: bool = True
    cache_dir: Path | None = None

    def but(self, **changes) -> Compute:
        """A copy with ``changes`` (e.g. ``compute.but(workers=0)`` inside a worker that must not fork)."""
        return replace(self, **changes)
