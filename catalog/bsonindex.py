"""Offset index over a Cdiscount BSON dump: where each product and each picture lies in the file.

Every later stage reads products through this index, so a product of a 58 GB ``train.bson`` is
one read at a known offset, never a scan. Building the index walks the chain of document
lengths in Python (one ``unpack_from`` per product) and then reads the fields of all documents
at once with numpy gathers on the Kaggle layout (``_id`` int32, ``imgs`` array of
``{picture: binary}``, optional ``category_id`` int32). A document in any other layout (int64
ids, extra fields, other field order) falls back to a per-document walker, which is also what
turns malformed input into a message naming the offset, product and field.

Files (beside the dump, or in a cache folder when its folder is read-only: see ``catalog.derived``):
``FILE.bson.idx.npz`` holds ``products`` and ``pictures`` (structured arrays, dtypes below) and
``meta`` (JSON: format version, size and mtime of the BSON file it describes); for a dump whose
documents carry a ``title`` string (``etalage pack`` of a listing with titles, written last in the
document), also ``titles``: where each product's title lies in the file. A dump without titles
(Cdiscount's) gets the same index as before, so its index is neither rebuilt nor bigger.
``FILE.bson.md5.npz`` (see :func:`hash_pictures`) holds the MD5 of every picture, aligned with
``pictures``, and the same stamp. A derived file that is stale (the dump changed), truncated or
inconsistent with the dump is never trusted: it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.catalog.derived import derived_candidates, derived_path
from etalage.errors import DataError
from etalage.files import save_npz_atomic
from etalage.forking import map_forked
from etalage.progress import bar as progress_bar
from etalage.resources import usable_cpus

INDEX_VERSION = 1
MD5_VERSION = 1
NO_CATEGORY = -1

PRODUCT_DTYPE = np.dtype([
    ("product_id", "<i8"),
    ("offset", "<i8"),       # byte offset of the document in the BSON file
    ("length", "<i4"),       # document length in bytes
    ("n_pictures", "<i2"),
    ("category_id", "<i8"),  # NO_CATEGORY (-1) in test.bson
    ("first_picture", "<i8"),  # row of the product's first picture in `pictures`
])
PICTURE_DTYPE = np.dtype([
    ("offset", "<i8"),  # byte offset of the JPEG bytes in the BSON file
    ("length", "<i4"),
])
TITLE_DTYPE = np.dtype([
    ("offset", "<i8"),  # byte offset of the title's UTF-8 bytes in the BSON file
    ("length", "<i4"),  # their length (no terminating zero); 0: the product has no title
])

_INT32 = struct.Struct("<i")
_ID_PREFIX = b"\x10_id\x00"
_IMGS_PREFIX = b"\x04imgs\x00"
_PICTURE_PREFIX = b"\x05picture\x00"
_CATEGORY_ELEMENT = b"\x10category_id\x00"
_TITLE_PREFIX = b"\x02title\x00"
_FIXED_SIZES = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8,
                0x13: 16, 0x7F: 0, 0xFF: 0}
_ELEMENT_TYPES = set(_FIXED_SIZES) | {0x00, 0x02, 0x03, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F}
_CHUNK_DOCS = 16_384  # documents per vectorised step; their pages are released after it (RSS bound)
HASH_RANGE_BYTES = 256 << 20


def index_path_for(bson_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where ``build_index`` writes the index of ``bson_path`` (``catalog.derived``)."""
    return derived_path(bson_path, f"{Path(bson_path).name}.idx.npz", cache_dir)


def md5_path_for(bson_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where ``hash_pictures`` writes the picture MD5s of ``bson_path`` (``catalog.derived``)."""
    return derived_path(bson_path, f"{Path(bson_path).name}.md5.npz", cache_dir)


def file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class BsonIndex:
    """Products and pictures of one BSON file (see module docstring for the dtypes)."""

    bson_path: Path
    products: np.ndarray
    pictures: np.ndarray
    titles: np.ndarray | None = None  # TITLE_DTYPE per product; None: no document has a title

    def __len__(self) -> int:
        return len(self.products)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.products)) and bool((self.products["category_id"] != NO_CATEGORY).all())

    @classmethod
    def load(cls, bson_path: str | Path, cache_dir: str | Path | None = None) -> BsonIndex:
        """Load the index of ``bson_path``; a missing, stale or damaged index names ``etalage index``."""
        bson_path = Path(bson_path)
        if not bson_path.exists():
            raise DataError(f"{bson_path}: no such file")

        def check(path: Path, z) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | str:
            meta, products, pictures = json.loads(str(z["meta"])), z["products"], z["pictures"]
            titles = z["titles"] if "titles" in z.files else None
            if meta.get("version") != INDEX_VERSION or meta.get("bson") != file_stamp(bson_path):
                return f"{path}: index is stale (the BSON file changed)"
            if not _consistent(bson_path, products, pictures) or (titles is not None and len(titles) != len(products)):
                return f"{path}: index does not match the file's documents"
            return products, pictures, titles

        products, pictures, titles = _load_derived(bson_path, "idx.npz", "index", check, "etalage index", cache_dir)
        return cls(bson_path, products, pictures, titles)

    @classmethod
    def open(cls, bson_path: str | Path, known_category_ids: np.ndarray | None = None, progress: bool = False,
             cache_dir: str | Path | None = None) -> BsonIndex:
        """The index of ``bson_path``: loaded when up to date, else built (the one way every stage
        indexes a dump). ``known_category_ids`` (sorted): a category outside them is an error.
        ``cache_dir``: where derived files go (``catalog.derived``)."""
        try:
            idx = cls.load(bson_path, cache_dir)
        except DataError:
            if not Path(bson_path).exists():
                raise
            return build_index(bson_path, progress, known_category_ids, cache_dir)
        if known_category_ids is not None:
            check_categories(Path(bson_path), idx.products, known_category_ids)
        return idx


def _consistent(bson_path: Path, products: np.ndarray, pictures: np.ndarray) -> bool:
    """A cheap content check beyond the file stamp: array lengths agree, and the first and last
    documents start where the index says, with the length it says."""
    if len(products) == 0 or len(pictures) != int(products["n_pictures"].sum(dtype=np.int64)):
        return False
    try:
        with bson_path.open("rb") as fh:
            for row in (products[0], products[-1]):
                fh.seek(int(row["offset"]))
                head = fh.read(4)
                if len(head) != 4 or _INT32.unpack(head)[0] != int(row["length"]):
                    return False
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# building


def build_index(bson_path: str | Path, progress: bool = False, known_category_ids: np.ndarray | None = None,
                cache_dir: str | Path | None = None) -> BsonIndex:
    """Index ``bson_path`` and write ``FILE.bson.idx.npz`` atomically.

    ``known_category_ids`` (sorted int64), when given, makes an id outside the taxonomy an error
    naming the product. Malformed input raises ``DataError`` and writes nothing.
    """
    bson_path = Path(bson_path)
    try:
        fh = bson_path.open("rb")
    except OSError as exc:
        raise DataError(f"{bson_path}: cannot open: {exc.strerror or exc}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise DataError(f"{bson_path}: empty file, not a BSON dump")
        # Not closed explicitly: numpy views of the map may outlive this frame in a traceback,
        # and closing a map with live views raises BufferError; it is unmapped when collected.
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        products, pictures, titles = _scan(mm, size, bson_path, progress)
    if len(products) == 0:
        raise DataError(f"{bson_path}: no documents")
    check_unique_ids(bson_path, products)
    if known_category_ids is not None:
        check_categories(bson_path, products, known_category_ids)
    meta = json.dumps({"version": INDEX_VERSION, "bson": file_stamp(bson_path)})
    if not titles["length"].any():
        titles = None  # a dump without titles keeps the index it always had
    extra = {} if titles is None else {"titles": titles}
    save_npz_atomic(index_path_for(bson_path, cache_dir), products=products, pictures=pictures, meta=np.array(meta),
                    **extra)
    return BsonIndex(bson_path, products, pictures, titles)


def check_unique_ids(bson_path: Path, products: np.ndarray) -> None:
    """A ``DataError`` naming the products whose ``_id`` occurs more than once: every later stage
    (predictions, submissions, id neighbours) identifies a product by its id."""
    ids = products["product_id"]
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        shown = ", ".join(str(int(d)) for d in dup[:5]) + (f" and {len(dup) - 5} more" if len(dup) > 5 else "")
        first = products[np.flatnonzero(ids == dup[0])[1]]
        raise DataError(f"{bson_path}: duplicate _id {shown} (the second {int(dup[0])} at offset "
                        f"{int(first['offset'])}); every product needs its own id")


def check_categories(bson_path: Path, products: np.ndarray, known_category_ids: np.ndarray) -> None:
    """A ``DataError`` naming the first product whose category_id is not in ``known_category_ids``."""
    cats = products["category_id"]
    labelled = cats != NO_CATEGORY
    pos = np.searchsorted(known_category_ids, cats).clip(0, len(known_category_ids) - 1)
    bad = labelled & (known_category_ids[pos] != cats)
    if bad.any():
        row = products[np.flatnonzero(bad)[0]]
        raise DataError(f"{bson_path}: product {row['product_id']} (offset {row['offset']}): "
                        f"category_id {row['category_id']} is not in the taxonomy")


def _scan(mm: mmap.mmap, size: int, path: Path, progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    buf = np.frombuffer(mm, dtype=np.uint8)
    product_parts, picture_parts, title_parts = [], [], []
    n_pictures_so_far = 0
    pos = 0
    with progress_bar(total=size, unit="B", unit_scale=True, desc=f"index {path.name}", enabled=progress) as bar:
        while pos < size:
            starts, lengths, end = _follow_lengths(mm, pos, size, path)
            if (buf[starts + lengths - 1] != 0).any():
                bad = int(starts[np.flatnonzero(buf[starts + lengths - 1] != 0)[0]])
                raise DataError(f"{path}: offset {bad}: not a BSON document (no terminating zero byte)")
            prods, pics, titles = _fields_of_chunk(mm, buf, starts, lengths, path)
            prods["first_picture"] += n_pictures_so_far
            n_pictures_so_far += len(pics)
            product_parts.append(prods)
            picture_parts.append(pics)
            title_parts.append(titles)
            bar.update(end - pos)
            _release(mm, pos, end)
            pos = end
    products = np.concatenate(product_parts) if product_parts else np.zeros(0, PRODUCT_DTYPE)
    pictures = np.concatenate(picture_parts) if picture_parts else np.zeros(0, PICTURE_DTYPE)
    titles = np.concatenate(title_parts) if title_parts else np.zeros(0, TITLE_DTYPE)
    return products, pictures, titles


def _release(mm: mmap.mmap, start: int, end: int) -> None:
    """Drop the pages of [start, end) from this process's mapping once scanned: they stay in the page
    cache, but a 58 GB dump no longer counts towards the scanner's resident memory."""
    page = mmap.PAGESIZE
    a, b = (start // page) * page, (end // page) * page
    if b > a and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED, a, b - a)


def _follow_lengths(mm, pos: int, size: int, path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Offsets and lengths of up to ``_CHUNK_DOCS`` documents from ``pos``: the only per-product
    Python work on the fast path (one ``unpack_from`` each)."""
    unpack = _INT32.unpack_from
    starts, lengths = [], []
    for _ in range(_CHUNK_DOCS):
        if pos >= size:
            break
        if size - pos < 5:
            raise DataError(f"{path}: offset {pos}: truncated document ({size - pos} trailing bytes)")
        (length,) = unpack(mm, pos)
        if pos + length > size or length < 5:
            if length < 5 or mm[pos + 4] not in _ELEMENT_TYPES:
                raise DataError(f"{path}: offset {pos}: not a BSON document (length field {length}, "
                                f"element type byte 0x{mm[pos + 4]:02x})")
            raise DataError(f"{path}: offset {pos}: truncated document (length {length}, "
                            f"only {size - pos} bytes left)")
        starts.append(pos)
        lengths.append(length)
        pos += length
    return np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64), pos


def _gather_int32(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    b = buf[at[:, None] + np.arange(4)].astype(np.int64)
    v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)
    return np.where(v >= 2**31, v - 2**32, v)


def _matches(buf: np.ndarray, at: np.ndarray, pattern: bytes) -> np.ndarray:
    pat = np.frombuffer(pattern, dtype=np.uint8)
    at = np.minimum(at, len(buf) - len(pat))  # keep gathers in bounds; a clipped match is re-checked
    return (buf[at[:, None] + np.arange(len(pat))] == pat).all(axis=1)


def _trailing_title(buf: np.ndarray, at: np.ndarray, ends: np.ndarray, fast: np.ndarray) -> np.ndarray:
    """Length of the string of a ``title`` element that starts at ``at`` and fills the document up to its
    terminator (``ends - 1``), terminating zero included; 0 where there is no such element."""
    rest = ends - 1 - at
    found = fast & (rest >= 12) & _matches(buf, np.where(fast, at, 0), _TITLE_PREFIX)
    length = np.where(found, _gather_int32(buf, np.where(found, at + 7, 0)), 0)
    found &= (length >= 1) & (11 + length == rest)
    found &= buf[np.where(found, at + 10 + length, 0)] == 0
    return np.where(found, length, 0)


def _title_rows(title_at: np.ndarray, title_len: np.ndarray) -> np.ndarray:
    """``TITLE_DTYPE`` rows of title elements at ``title_at`` with strings of ``title_len`` bytes (zero
    included; an empty string, or none, is no title)."""
    titles = np.zeros(len(title_at), TITLE_DTYPE)
    titled = title_len > 1
    if not titled.any():
        return titles
    titles["offset"] = np.where(titled, title_at + 11, 0)
    titles["length"] = np.where(titled, title_len - 1, 0)
    return titles


def _fields_of_chunk(mm, buf, starts, lengths, path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``_id``, pictures, ``category_id`` and ``title`` of many documents at once (Kaggle layout, an
    optional title last)."""
    n = len(starts)
    ends = starts + lengths
    fast = lengths >= 26
    fast &= _matches(buf, starts + 4, _ID_PREFIX) & _matches(buf, starts + 13, _IMGS_PREFIX)
    arr = starts + 19
    arr_len = np.where(fast, _gather_int32(buf, np.minimum(arr, len(buf) - 4)), 0)
    arr_end = arr + arr_len
    fast &= (arr_len >= 5) & (arr_end <= ends - 1)
    tail = ends - 1 - arr_end  # bytes between the imgs array and the document's terminator
    with_cat = fast & (tail >= 17) & _matches(buf, np.where(fast, arr_end, 0), _CATEGORY_ELEMENT)
    title_at = arr_end + np.where(with_cat, 17, 0)
    plain = title_at == ends - 1   # Kaggle's layout: nothing after the category (checked first: the common case)
    title_len = np.zeros(n, np.int64)
    if (fast & ~plain).any():
        title_len = _trailing_title(buf, title_at, ends, fast & ~plain)
    fast &= plain | (title_len > 0)
    # Walk the picture slots "0", "1", ... of every fast document in lockstep.
    pic_off = np.zeros((n, 10), np.int64)
    pic_len = np.zeros((n, 10), np.int64)
    count = np.zeros(n, np.int64)
    cursor = arr + 4
    active = fast.copy()
    for j in range(10):
        at_end = active & (cursor == arr_end - 1)
        active &= ~at_end
        if not active.any():
            break
        if j == 9:  # ten or more pictures: leave to the general walker
            fast &= ~active
            break
        ok = active & (cursor + 3 + 18 <= arr_end - 1)
        ok &= _matches(buf, np.where(ok, cursor, 0), bytes([0x03, 0x30 + j, 0]))
        sub = cursor + 3
        ok &= _matches(buf, np.where(ok, sub + 4, 0), _PICTURE_PREFIX)
        sub_len = np.where(ok, _gather_int32(buf, np.where(ok, sub, 0)), 0)
        bin_len = np.where(ok, _gather_int32(buf, np.where(ok, sub + 13, 0)), 0)
        ok &= (bin_len >= 0) & (sub_len == bin_len + 19) & (sub + sub_len <= arr_end - 1)
        fast &= ~(active & ~ok)
        active &= ok
        pic_off[active, j] = sub[active] + 18
        pic_len[active, j] = bin_len[active]
        count[active] += 1
        cursor = np.where(active, sub + sub_len, cursor)
    fast &= count > 0

    prods = np.zeros(n, PRODUCT_DTYPE)
    prods["offset"] = starts
    prods["length"] = lengths
    prods["product_id"] = np.where(fast, _gather_int32(buf, np.where(fast, starts + 9, 0)), 0)
    prods["category_id"] = np.where(with_cat & fast, _gather_int32(buf, np.where(with_cat, arr_end + 13, 0)),
                                    NO_CATEGORY)
    prods["n_pictures"] = count
    titles = _title_rows(title_at, np.where(fast, title_len, 0))
    slow_pictures = {}
    for i in np.flatnonzero(~fast):
        pid, cat, pics, title = _walk_document(mm, int(starts[i]), int(lengths[i]), path)
        prods["product_id"][i] = pid
        prods["category_id"][i] = cat
        prods["n_pictures"][i] = len(pics)
        titles[i] = title
        slow_pictures[int(i)] = pics
    counts = prods["n_pictures"].astype(np.int64)
    prods["first_picture"] = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pics = np.zeros(int(counts.sum()), PICTURE_DTYPE)
    # Fast documents: flatten the (n, 10) slot table row-major, which keeps file order.
    slot = np.arange(10)[None, :] < count[:, None]
    slot &= fast[:, None]
    fast_rows = np.repeat(prods["first_picture"], np.where(fast, counts, 0)) + ranks_within(
        np.where(fast, counts, 0))
    pics["offset"][fast_rows] = pic_off[slot]
    pics["length"][fast_rows] = pic_len[slot]
    for i, plist in slow_pictures.items():
        first = prods["first_picture"][i]
        for k, (off, ln) in enumerate(plist):
            pics[first + k] = (off, ln)
    return prods, pics, titles


def ranks_within(counts: np.ndarray) -> np.ndarray:
    """[2, 0, 3] -> [0, 1, 0, 1, 2]: position of each item within its group."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts


def _walk_document(mm, start: int, length: int, path: Path
                   ) -> tuple[int, int, list[tuple[int, int]], tuple[int, int]]:
    """General walker for one document: returns (product id, category id, [(offset, length)] of its
    pictures, (offset, length) of its title's bytes, (0, 0) without one)."""
    end = start + length - 1
    where = f"{path}: offset {start}"
    fields = _elements(mm, start + 4, end, where)
    if "_id" not in fields:
        raise DataError(f"{where}: document has no _id field")
    typ, at = fields["_id"]
    if typ == 0x10:
        pid = _INT32.unpack_from(mm, at)[0]
    elif typ == 0x12:
        pid = struct.unpack_from("<q", mm, at)[0]
    else:
        raise DataError(f"{where}: _id is BSON type 0x{typ:02x}, expected an integer")
    where = f"{path}: product {pid} (offset {start})"
    if "imgs" not in fields:
        raise DataError(f"{where}: document has no imgs field")
    typ, at = fields["imgs"]
    if typ != 0x04:
        raise DataError(f"{where}: imgs is BSON type 0x{typ:02x}, expected an array")
    arr_len = _INT32.unpack_from(mm, at)[0]
    pictures = []
    for key, (etyp, eat) in _elements(mm, at + 4, at + arr_len - 1, f"{where}: imgs").items():
        if etyp != 0x03:
            raise DataError(f"{where}: imgs[{key}] is BSON type 0x{etyp:02x}, expected a document")
        sub_len = _INT32.unpack_from(mm, eat)[0]
        sub = _elements(mm, eat + 4, eat + sub_len - 1, f"{where}: imgs[{key}]")
        if "picture" not in sub or sub["picture"][0] != 0x05:
            raise DataError(f"{where}: imgs[{key}] has no binary picture field")
        bat = sub["picture"][1]
        pictures.append((bat + 5, _INT32.unpack_from(mm, bat)[0]))
    if not pictures:
        raise DataError(f"{where}: imgs is empty (a product needs at least one picture)")
    cat = NO_CATEGORY
    if "category_id" in fields:
        typ, at = fields["category_id"]
        if typ == 0x10:
            cat = _INT32.unpack_from(mm, at)[0]
        elif typ == 0x12:
            cat = struct.unpack_from("<q", mm, at)[0]
        else:
            raise DataError(f"{where}: category_id is BSON type 0x{typ:02x}, expected an integer")
    title = (0, 0)
    if "title" in fields:
        typ, at = fields["title"]
        if typ != 0x02:
            raise DataError(f"{where}: title is BSON type 0x{typ:02x}, expected a string")
        size = _INT32.unpack_from(mm, at)[0]
        title = (at + 4, size - 1) if size > 1 else (0, 0)
    return pid, cat, pictures, title


def _elements(mm, pos: int, end: int, where: str) -> dict[str, tuple[int, int]]:
    """Element name -> (type, value offset) for the elements in [pos, end) (end = terminator)."""
    out = {}
    while pos < end:
        typ = mm[pos]
        name_end = mm.find(b"\x00", pos + 1, end)
        if name_end < 0:
            raise DataError(f"{where}: malformed element name at offset {pos}")
        name = mm[pos + 1:name_end].decode("utf-8", "replace")
        at = name_end + 1
        if typ in _FIXED_SIZES:
            size = _FIXED_SIZES[typ]
        elif typ in (0x02, 0x0D, 0x0E):
            size = 4 + _INT32.unpack_from(mm, at)[0]
        elif typ in (0x03, 0x04):
            size = _INT32.unpack_from(mm, at)[0]
        elif typ == 0x05:
            size = 5 + _INT32.unpack_from(mm, at)[0]
        else:
            raise DataError(f"{where}: field {name!r} has unsupported BSON type 0x{typ:02x} at offset {pos}")
        if size < 0 or at + size > end:
            raise DataError(f"{where}: field {name!r} overruns its document at offset {pos}")
        out[name] = (typ, at)
        pos = at + size
    if pos != end or mm[end] != 0:
        raise DataError(f"{where}: malformed document end at offset {end}")
    return out


# ---------------------------------------------------------------------------------------------
# picture hashes


def hash_pictures(bson_path: str | Path, workers: int | None = None, progress: bool = False,
                  index: BsonIndex | None = None, cache_dir: str | Path | None = None) -> np.ndarray:
    """MD5 of every picture's JPEG bytes, ``(n_pictures, 16)`` uint8, saved to ``FILE.bson.md5.npz``
    with the dump's stamp.

    Exact-duplicate matching (the 2017 winners' hash signal) needs these for train and test.
    Pictures are hashed straight from memory-mapped ranges (no copy), split over ``workers`` processes.
    """
    bson_path = Path(bson_path)
    index = index or BsonIndex.open(bson_path, cache_dir=cache_dir)
    pics = index.pictures
    workers = max(1, min(workers or usable_cpus(), 64))
    if int(pics["length"].sum(dtype=np.int64)) < HASH_RANGE_BYTES // 4:
        workers = 1  # a small dump (a server's batch of listings) is hashed faster than processes start
    out = np.zeros((len(pics), 16), np.uint8)
    # Ranges of at most ~256 MB: each is mapped, hashed and unmapped, so a worker's resident memory
    # stays bounded whatever the dump's size (58 GB for the real training file).
    n_jobs = max(workers * 8, int(pics["length"].sum(dtype=np.int64) // HASH_RANGE_BYTES) + 1)
    bounds = np.linspace(0, len(pics), n_jobs + 1).astype(np.int64)
    jobs = [(str(bson_path), int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    with progress_bar(total=len(pics), unit="pic", desc=f"md5 {bson_path.name}", enabled=progress) as bar:
        def done(a: int, b: int, digests: bytes) -> None:
            out[a:b] = np.frombuffer(digests, np.uint8).reshape(-1, 16)
            bar.update(b - a)

        def hasher():
            return lambda job: (job[1], job[2], _hash_range(job[0], pics, job[1], job[2]))

        for a, b, digests in map_forked(hasher, jobs, workers):
            done(a, b, digests)
    meta = json.dumps({"version": MD5_VERSION, "bson": file_stamp(bson_path), "pictures": len(pics)})
    save_npz_atomic(md5_path_for(bson_path, cache_dir), md5=out, meta=np.array(meta))
    return out


def load_md5(bson_path: str | Path, cache_dir: str | Path | None = None) -> np.ndarray:
    """Picture MD5s ``(n_pictures, 16)`` uint8 written by :func:`hash_pictures` (``etalage hash``); a
    missing, stale or damaged file names the command that rebuilds it."""
    bson_path = Path(bson_path)

    def check(path: Path, z) -> np.ndarray | str:
        meta, md5 = json.loads(str(z["meta"])), z["md5"]
        if meta.get("version") != MD5_VERSION or meta.get("bson") != file_stamp(bson_path) or \
                md5.shape != (meta.get("pictures"), 16):
            return f"{path}: picture hashes are stale (the BSON file changed)"
        return md5

    return _load_derived(bson_path, "md5.npz", "picture hashes", check, "etalage hash", cache_dir)


def _load_derived(bson_path: Path, suffix: str, what: str, check, command: str, cache_dir=None):
    """The first up-to-date derived file ``FILE.bson.SUFFIX`` among the places it may be
    (``catalog.derived``): ``check(path, npz)`` returns the content, or why it is stale. A missing,
    stale, truncated or foreign file raises ``DataError`` naming ``command`` (callers rebuild)."""
    problem = f"no {what}"
    for path in derived_candidates(bson_path, f"{bson_path.name}.{suffix}", cache_dir):
        if not path.exists():
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                found = check(path, z)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is one case: rebuild it
            problem = f"{path}: unreadable {what} ({type(exc).__name__})"
            continue
        if not isinstance(found, str):
            return found
        problem = found
    raise DataError(f"{bson_path}: {problem}; run `{command} {bson_path}`")


def picture_md5(bson_path: str | Path, index: BsonIndex | None = None, progress: bool = False,
                cache_dir: str | Path | None = None) -> np.ndarray:
    """The picture MD5s of ``bson_path``: loaded when up to date, else computed (and saved)."""
    try:
        md5 = load_md5(bson_path, cache_dir)
    except DataError:
        return hash_pictures(bson_path, index=index, progress=progress, cache_dir=cache_dir)
    if index is not None and len(md5) != len(index.pictures):
        return hash_pictures(bson_path, index=index, progress=progress, cache_dir=cache_dir)
    return md5


def _hash_range(path: str, pics: np.ndarray, a: int, b: int) -> bytes:
    md5 = hashlib.md5
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            offs = pics["offset"][a:b].tolist()
            lens = pics["length"][a:b].tolist()
            return b"".join(md5(view[o:o + n]).digest() for o, n in zip(offs, lens, strict=True))
        finally:
            view.release()
