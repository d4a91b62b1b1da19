"""Writing files so that nothing is ever left half-written, and stamping folders with the settings
their outputs were made with (so outputs of two jobs never mix)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


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
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)


def claim_folder(stamp_path: str | Path, stamp: dict, ignore: tuple[str, ...] = ()) -> None:
    """Write ``stamp`` (the settings a folder's outputs are made with) to ``stamp_path``, or, when one
    is there, check it matches (keys in ``ignore`` aside): outputs of two jobs never mix."""
    from etalage.errors import ConfigError

    stamp_path = Path(stamp_path)
    if stamp_path.exists():
        old = json.loads(stamp_path.read_text())
        diff = [k for k in stamp if k not in ignore and old.get(k) != stamp[k]]
        if diff:
            raise ConfigError(f"{stamp_path.parent} holds outputs made with other settings ({', '.join(diff)} "
                              f"differ); choose another folder or delete it")
        return
    write_json_atomic(stamp_path, stamp)


class Folder:
    """A folder of outputs with a fixed layout (``RunDir``, ``WorkDir``, ``FusionDir``): subclasses name
    its files as properties, so no stage builds those paths by hand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.path == self.path

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.path))
