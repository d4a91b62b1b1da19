"""File-writing helpers shared by every stage: nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it over ``path`` only on success.

    A crash or exception inside the block leaves ``path`` as it was (absent or the old file),
    so readers never see a truncated index, prediction shard or submission.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would surprise readers of shared outputs
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def save_npz_atomic(path: str | Path, **arrays: Any) -> None:
    """``np.savez`` through ``atomic_write`` (the name must end in ``.npz``)."""
    import numpy as np

    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)
