"""Random access to the products of a BSON dump through its offset index.

A ``Catalog`` is what every stage holds: ``catalog[i]`` is the i-th product in file order, with
its id, category and JPEG bytes, sliced from a memory map. It is safe in DataLoader workers:
the map is opened lazily in each process and never pickled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from etalage.catalog.bsonindex import NO_CATEGORY, BsonIndex, ranks_within
from etalage.catalog.pictures import CorruptPicture, DecodeStats, decode_picture

from etalage.errors import DataError


@dataclass(frozen=True)
class Product:
    product_id: int
    category_id: int | None
    pictures: list[bytes]


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; a malformed spec raises ``ValueError``."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {spec!r}: need 0 <= i < n")
    return i, n


class Catalog:
    """Products of one BSON file, in file order."""

    def __init__(self, index: BsonIndex):
        self.index = index
        self.path = index.bson_path
        self._fd: int | None = None
        self._pid = -1
        self._position_of: dict[int, int] | None = None

    @classmethod
    def open(cls, bson_path: str | Path, progress: bool = False) -> Catalog:
        """Open ``bson_path``, building its index first when missing or stale."""
        return cls(BsonIndex.open(bson_path, progress=progress))

    # pickling: workers reopen the file themselves
    def __getstate__(self) -> dict:
        return {"index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["index"])

    def _file(self) -> int:
        """This process's descriptor of the dump. Pictures are read with ``os.pread`` rather than
        through a memory map: a map's touched pages count as the reader's resident memory, which
        for a 14.5 GB test dump read end to end would be the whole file."""
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- sizes and columns -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index.products)

    @property
    def product_ids(self) -> np.ndarray:
        return self.index.products["product_id"]

    @property
    def category_ids(self) -> np.ndarray:
        return self.index.products["category_id"]

    @property
    def n_pictures(self) -> np.ndarray:
        return self.index.products["n_pictures"]

    @property
    def has_labels(self) -> bool:
        return self.index.has_labels

    def require_labels(self) -> None:
        if not self.has_labels:
            missing = self.product_ids[self.category_ids == NO_CATEGORY]
            raise DataError(f"{self.path}: product {int(missing[0])} has no category_id "
                            f"(a training file needs one on every product)")

    def position_of(self, product_id: int) -> int:
        if self._position_of is None:
            self._position_of = {int(p): i for i, p in enumerate(self.product_ids)}
        try:
            return self._position_of[int(product_id)]
        except KeyError:
            raise DataError(f"{self.path}: no product with _id {product_id}") from None

    def shard(self, i: int, n: int) -> range:
        """Positions of shard ``i`` of ``n``: contiguous, in file order, sizes differ by at most one."""
        bounds = np.linspace(0, len(self), n + 1).astype(np.int64)
        return range(int(bounds[i]), int(bounds[i + 1]))

    def picture_rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pictures of the products at ``positions``: their rows in the file's picture table
        (and in ``FILE.bson.md5.npy``), and the index into ``positions`` of each one's product."""
        positions = np.asarray(positions, np.int64)
        counts = self.index.products["n_pictures"][positions].astype(np.int64)
        first = self.index.products["first_picture"][positions].astype(np.int64)
        return np.repeat(first, counts) + ranks_within(counts), np.repeat(np.arange(len(positions)), counts)

    # -- reading ---------------------------------------------------------------------------------
    def picture_bytes(self, position: int) -> list[bytes]:
        row = self.index.products[position]
        first, count = int(row["first_picture"]), int(row["n_pictures"])
        fd = self._file()
        pics = self.index.pictures[first:first + count]
        return [os.pread(fd, int(n), int(o)) for o, n in zip(pics["offset"], pics["length"], strict=True)]

    def __getitem__(self, position: int) -> Product:
        if not -len(self) <= position < len(self):
            raise IndexError(f"product position {position} out of range ({len(self)} products)")
        position %= len(self)
        row = self.index.products[position]
        cat = int(row["category_id"])
        return Product(int(row["product_id"]), None if cat == NO_CATEGORY else cat, self.picture_bytes(position))

    def get(self, product_id: int) -> Product:
        return self[self.position_of(product_id)]

    def __iter__(self) -> Iterator[Product]:
        for i in range(len(self)):
            yield self[i]

    def decode(self, position: int, stats: DecodeStats | None = None) -> list[np.ndarray]:
        """The product's pictures as uint8 RGB arrays; corrupt ones are skipped and counted."""
        out = []
        pid = int(self.index.products[position]["product_id"])
        for k, data in enumerate(self.picture_bytes(position)):
            try:
                out.append(decode_picture(data))
            except CorruptPicture:
                if stats is not None:
                    stats.record_corrupt(pid, k)
                continue
            if stats is not None:
                stats.decoded += 1
        return out
