"""Random access to the products of a BSON dump through its offset index.

A ``Catalog`` is what every stage holds: ``catalog[i]`` is the i-th product in file order, with
its id, category, JPEG bytes and title (catalogue listings have one; Cdiscount's dumps do not), read
with ``os.pread`` at the offsets of the index. It is safe in DataLoader workers: each process opens
the file itself, and the descriptor is never pickled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog.bsonindex import NO_CATEGORY, BsonIndex, picture_md5, ranks_within
from etalage.catalog.pictures import CorruptPicture, DecodeStats, decode_picture
from etalage.errors import DataError


@dataclass(frozen=True)
class Product:
    product_id: int
    category_id: int | None
    pictures: list[bytes]
    title: str | None = None


class Catalog:
    """Products of one BSON file, in file order."""

    def __init__(self, index: BsonIndex, cache_dir: str | Path | None = None):
        self.index = index
        self.path = index.bson_path
        self.cache_dir = cache_dir
        self._fd: int | None = None
        self._pid = -1
        self._position_of: dict[int, int] | None = None
        self._md5: np.ndarray | None = None

    @classmethod
    def open(cls, bson_path: str | Path, taxonomy=None, md5: bool = False, progress: bool = False,
             cache_dir: str | Path | None = None) -> Catalog:
        """Open ``bson_path``: its index is loaded, or built when missing, stale or damaged (the one way
        every stage indexes a dump). ``taxonomy``: a category outside it is an error naming the product;
        ``md5``: also make sure the picture hashes exist (computed now, with a progress bar);
        ``cache_dir``: where derived files go (``catalog.derived``; ``Compute.cache_dir``).

        >>> catalog = Catalog.open("train.bson")
        >>> product = catalog[0]          # id, category, JPEG bytes
        >>> pictures = catalog.decode(0)  # uint8 RGB arrays
        """
        known = None if taxonomy is None else taxonomy.category_ids
        catalog = cls(BsonIndex.open(bson_path, known, progress=progress, cache_dir=cache_dir), cache_dir)
        if md5:
            catalog._md5 = picture_md5(catalog.path, catalog.index, progress=progress, cache_dir=cache_dir)
        return catalog

    @property
    def md5(self) -> np.ndarray:
        """(n_pictures, 16) uint8: the MD5 of every picture in file order (``etalage hash``), loaded or
        computed on first use."""
        if self._md5 is None:
            self._md5 = picture_md5(self.path, self.index, cache_dir=self.cache_dir)
        return self._md5

    # pickling: workers reopen the file themselves; the picture MD5s travel when loaded (a worker on
    # another machine may not have their derived file: the cache folder is per machine)
    def __getstate__(self) -> dict:
        return {"index": self.index, "cache_dir": self.cache_dir, "md5": self._md5}

    def __setstate__(self, state: dict) -> None:
        Catalog.__init__(self, state["index"], state.get("cache_dir"))
        self._md5 = state.get("md5")

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

    @property
    def titled(self) -> np.ndarray:
        """(n_products,) bool: which products have a title (none in a dump without titles)."""
        if self.index.titles is None:
            return np.zeros(len(self), bool)
        return self.index.titles["length"] > 0

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
        (and in ``Catalog.md5``), and the index into ``positions`` of each one's product."""
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

    def title(self, position: int) -> str | None:
        """The product's title, None when it has none."""
        if self.index.titles is None:
            return None
        offset, length = (int(v) for v in self.index.titles[position])
        return os.pread(self._file(), length, offset).decode("utf-8", "replace") if length else None

    def titles(self, positions=None) -> list[str | None]:
        """The titles of the products at ``positions`` (default: all), None where a product has none."""
        positions = range(len(self)) if positions is None else positions
        if self.index.titles is None:
            return [None] * len(positions)
        return [self.title(int(p)) for p in positions]

    def __getitem__(self, position: int) -> Product:
        if not -len(self) <= position < len(self):
            raise IndexError(f"product position {position} out of range ({len(self)} products)")
        position %= len(self)
        row = self.index.products[position]
        cat = int(row["category_id"])
        return Product(int(row["product_id"]), None if cat == NO_CATEGORY else cat, self.picture_bytes(position),
                       self.title(position))

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

    # -- chunks read ahead -----------------------------------------------------------------------
    def chunk_extent(self, rows: tuple[int, int]) -> tuple[int, int]:
        """(first byte, end byte) of the pictures of products ``rows`` in the dump: one read covers them
        (products lie one after the other in a BSON dump, their pictures inside them)."""
        a, b = rows
        prods = self.index.products
        first = int(prods["first_picture"][a])
        last = int(prods["first_picture"][b - 1]) + int(prods["n_pictures"][b - 1])
        if last <= first:
            return 0, 0
        pics = self.index.pictures[first:last]
        return int(pics["offset"].min()), int((pics["offset"] + pics["length"]).max())

    def read_chunk(self, rows: tuple[int, int]) -> ChunkBytes:
        """The bytes of the pictures of products ``rows``, in one read (a cluster's read tasks hand them
        to the workers that decode, so that those never wait on storage)."""
        return read_extent(self.path, rows, self.chunk_extent(rows))

    def with_chunk(self, chunk: ChunkBytes) -> Catalog:
        """This catalogue with the products of ``chunk`` read from memory (``read_chunk``'s bytes); every
        other product, and the decoding itself, as usual, so both ways decode alike."""
        return PreReadCatalog(self, chunk)


def read_extent(path: str | Path, rows: tuple[int, int], extent: tuple[int, int]) -> ChunkBytes:
    """Bytes ``extent`` = (first, end) of the dump at ``path``, as the pictures of products ``rows``
    (``Catalog.chunk_extent``): what a read task needs, without the index."""
    lo, hi = extent
    pieces, at = [], lo
    fd = os.open(path, os.O_RDONLY)
    try:
        while at < hi:
            piece = os.pread(fd, min(hi - at, 1 << 30), at)
            if not piece:
                raise DataError(f"{path}: ends before byte {hi} (the index is stale; run `etalage index`)")
            pieces.append(piece)
            at += len(piece)
    finally:
        os.close(fd)
    return ChunkBytes(rows, lo, b"".join(pieces))


@dataclass(frozen=True)
class ChunkBytes:
    """The pictures of products ``rows`` of a dump, read at once: the bytes from file offset ``base``."""

    rows: tuple[int, int]
    base: int
    blob: bytes


class PreReadCatalog(Catalog):
    """A ``Catalog`` whose products in ``chunk.rows`` come from memory (``Catalog.with_chunk``)."""

    def __init__(self, catalog: Catalog, chunk: ChunkBytes):
        super().__init__(catalog.index, catalog.cache_dir)
        self._md5 = catalog._md5
        self.chunk = chunk
        self._view = memoryview(chunk.blob)

    def picture_bytes(self, position: int) -> list[bytes]:
        a, b = self.chunk.rows
        if not a <= position < b:
            return super().picture_bytes(position)
        row = self.index.products[position]
        first, count = int(row["first_picture"]), int(row["n_pictures"])
        pics = self.index.pictures[first:first + count]
        base = self.chunk.base
        return [bytes(self._view[int(o) - base:int(o) - base + int(n)])
                for o, n in zip(pics["offset"], pics["length"], strict=True)]

    def __getstate__(self) -> dict:  # travels as the plain catalogue: the bytes stay where they were read
        return Catalog.__getstate__(self)

    def __setstate__(self, state: dict) -> None:
        Catalog.__setstate__(self, state)
        self.chunk = ChunkBytes((0, 0), 0, b"")
        self._view = memoryview(b"")
