"""The chunk protocol of per-product stage outputs: every stage (core predictions, specialist scores,
fused rankings) writes ``DIR/part-START-END.npz`` over the same chunks of products, so that shards
line up across stages, a killed job redoes at most one chunk, and ``--shard i/n`` splits every stage
the same way (whole chunks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from etalage.errors import ConfigError, StageOutputError

DEFAULT_CHUNK = 4096  # products per part


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; a malformed spec is a ``ConfigError``."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"shard {spec!r}: need 0 <= i < n")
    return i, n


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


def part_done(folder: str | Path, rows: tuple[int, int]) -> bool:
    """Whether the part of ``rows`` in ``folder`` is finished (a whole npz file, as ``list_parts`` counts)."""
    import zipfile

    path = part_path(folder, *rows)
    return path.exists() and zipfile.is_zipfile(path)


def list_parts(folder: str | Path) -> dict[tuple[int, int], Path]:
    """(start, end) -> path of the finished parts in ``folder``. A part that is not a whole npz file (a
    disk that filled up, a copy cut short) is not finished: it is left out, so the stage redoes it."""
    import zipfile

    out = {}
    for p in Path(folder).glob("part-*.npz"):
        try:
            _, a, b = p.stem.split("-")
            key = (int(a), int(b))
        except ValueError:
            continue
        if zipfile.is_zipfile(p):
            out[key] = p
    return out


def load_parts(folder: str | Path, wanted: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """The arrays of the parts ``wanted``, concatenated in that order (every one must exist)."""
    parts = list_parts(folder)
    arrays: dict[str, list[np.ndarray]] = {}
    for c in wanted:
        with np.load(parts[c], allow_pickle=False) as z:
            for k in z.files:
                arrays.setdefault(k, []).append(z[k])
    return {k: np.concatenate(v) for k, v in arrays.items()}


def load_chunked(folder: str | Path, rows: tuple[int, int] | None, what: str,
                 command: Callable[[dict | None], str]) -> tuple[dict, dict[str, np.ndarray]]:
    """A chunked stage output: ``folder/meta.json`` (with ``n_products`` and ``chunk``) and the arrays
    of every part (or of the one chunk ``rows``). A missing folder or part is a ``StageOutputError``
    naming ``what`` it holds and the command that produces it (``command(meta)``; meta may be None)."""
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
