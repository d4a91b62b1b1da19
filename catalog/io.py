"""File-writing helpers shared by every stage: nothing is ever left half-written."""

from __future__ import annotations

import contextlib
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


# ---------------------------------------------------------------------------------------------
# chunked stage outputs: every per-product stage (core predictions, specialist scores, fused
# rankings) writes DIR/part-START-END.npz over the same chunks, so shards line up across stages


def chunk_ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    """[(0, chunk), (chunk, 2 * chunk), ..., (.., n)]."""
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def shard_chunk_ranges(n: int, chunk: int, shard: tuple[int, int]) -> list[tuple[int, int]]:
    """The chunks of shard ``i/n`` (whole chunks, contiguous, the same for every stage)."""
    chunks = chunk_ranges(n, chunk)
    i, k = shard
    bounds = np.linspace(0, len(chunks), k + 1).astype(int)
    return chunks[bounds[i]:bounds[i + 1]]


def part_path(folder: str | Path, start: int, end: int) -> Path:
    return Path(folder) / f"part-{start:09d}-{end:09d}.npz"


def list_parts(folder: str | Path) -> dict[tuple[int, int], Path]:
    """(start, end) -> path of the finished parts in ``folder``."""
    out = {}
    for p in Path(folder).glob("part-*.npz"):
        _, a, b = p.stem.split("-")
        out[(int(a), int(b))] = p
    return out


def load_parts(folder: str | Path, wanted: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """The arrays of the parts ``wanted``, concatenated in that order (every one must exist)."""
    parts = list_parts(folder)
    arrays: dict[str, list[np.ndarray]] = {}
    for c in wanted:
        with np.load(parts[c]) as z:
            for k in z.files:
                arrays.setdefault(k, []).append(z[k])
    return {k: np.concatenate(v) for k, v in arrays.items()}


def load_chunked(folder: str | Path, rows: tuple[int, int] | None, what: str, command
                 ) -> tuple[dict, dict[str, np.ndarray]]:
    """A chunked stage output: ``folder/meta.json`` (with ``n_products`` and ``chunk``) and the arrays
    of every part (or of the one chunk ``rows``). A missing folder or part is a ``StageOutputError``
    naming ``what`` it holds and the command that produces it (``command(meta)``; meta may be None)."""
    import json

    from etalage.errors import StageOutputError

    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise StageOutputError(f"{folder}: no {what}; run `{command(None)}`")
    meta = json.loads(meta_path.read_text())
    parts = list_parts(folder)
    wanted = [rows] if rows is not None else chunk_ranges(meta["n_products"], meta["chunk"])
    missing = [c for c in wanted if c not in parts]
    if missing:
        a, b = missing[0]
        raise StageOutputError(f"{folder}: {what} for products {a}-{b} are missing ({len(missing)} of {len(wanted)} "
                               f"chunks); run `{meta.get('producer') or command(meta)}` (all shards) to finish")
    return meta, load_parts(folder, wanted)


def claim_folder(stamp_path: str | Path, stamp: dict, ignore: tuple[str, ...] = ()) -> None:
    """Write ``stamp`` (the settings a folder's outputs are made with) to ``stamp_path``, or, when one
    is there, check it matches (keys in ``ignore`` aside): outputs of two jobs never mix."""
    import json

    from etalage.errors import ConfigError

    stamp_path = Path(stamp_path)
    if stamp_path.exists():
        old = json.loads(stamp_path.read_text())
        diff = [k for k in stamp if k not in ignore and old.get(k) != stamp[k]]
        if diff:
            raise ConfigError(f"{stamp_path.parent} holds outputs made with other settings ({', '.join(diff)} "
                              f"differ); choose another folder or delete it")
        return
    with atomic_write(stamp_path, "w") as fh:
        json.dump(stamp, fh, indent=2)
