"""Packing any catalogue into Cdiscount's shape: a listing CSV (one row per picture) and a folder of
pictures become a BSON dump that every other command reads unchanged.

The listing has a header with at least ``_id`` and ``picture`` (a path relative to the pictures folder),
``category_id`` for a labelled dump, and optionally ``title`` (a product's title is on its first row;
test dumps keep it too: a catalogue team's new products come with titles); other columns are ignored.
Rows sharing an ``_id`` are one product's pictures, in listing order, and must follow each other.
Documents are written in Kaggle's layout and field order (``_id``, ``imgs: [{picture}]``,
``category_id``) with ``title`` last (left out when empty), so the dump is indexed on the fast path
whenever its ids fit 32 bits, as Cdiscount's do.

Pictures are stored as given when they are JPEGs (every one is decoded once to prove it reads), other
formats are converted to JPEG, and ``size`` letterboxes every picture to size x size on white (the
Cdiscount shape: 180). A bad row (missing or unreadable picture, category outside the taxonomy, rows of a
product apart, a picture or product over the limits) is a ``DataError`` naming the listing's line and
the fix, and nothing is written; ``skip_bad`` counts and skips such rows instead. The dump, its answer key
and the taxonomy beside it are written atomically.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from etalage.catalog.csvrows import INT64, csv_rows
from etalage.catalog.pictures import CorruptPicture, decode_picture, letterbox
from etalage.catalog.taxonomy import Taxonomy, taxonomy_beside
from etalage.errors import DataError
from etalage.files import atomic_write
from etalage.forking import map_forked
from etalage.progress import bar as progress_bar
from etalage.resources import usable_cpus

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("_id", "picture")
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # BSON's document limit (MongoDB refuses larger ones)
JPEG_QUALITY = 90                      # re-encoded pictures: Cdiscount's look, artefacts barely visible
PRODUCTS_PER_TASK = 64


@dataclass
class ListingProduct:
    """One product of a listing: its id, category (None in a test listing), pictures by line and title."""

    product_id: int
    category_id: int | None
    pictures: list[tuple[int, str]]   # (listing line, picture path as written)
    title: str | None = None          # None: no title column, or an empty title on the product's first row


@dataclass
class PackReport:
    out: Path
    labels_out: Path | None
    taxonomy_out: Path | None
    products: int
    pictures: int
    bytes_written: int
    seconds: float
    converted: int = 0                     # pictures re-encoded (another format, or --size)
    skipped_rows: int = 0
    skipped_products: int = 0
    problems: list[str] = field(default_factory=list)  # the first skipped rows' messages
    titled: int = 0                        # products written with a title

    @property
    def pictures_per_s(self) -> float:
        return self.pictures / max(self.seconds, 1e-9)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / max(self.seconds, 1e-9)


class BadRow(Exception):
    """A listing row that cannot be packed: its line and what is wrong (becomes a ``DataError``)."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def read_product_listing(path: str | Path, labels: bool | None, taxonomy: Taxonomy | None, skip_bad: bool = False,
                         problems: list[str] | None = None) -> tuple[list[ListingProduct], bool]:
    """The listing's products in order, and whether it has categories. ``labels``: True, ``category_id``
    is required; None, read when the column is there; False, ignored. Categories are checked against
    ``taxonomy``. With ``skip_bad``, bad rows are appended to ``problems`` (``line N: ...``) and left out."""
    path = Path(path)
    rows = csv_rows(path, "listing")
    needed = REQUIRED_COLUMNS + (("category_id",) if labels else ())
    if not rows:
        raise DataError(f"{path}: empty listing; expected a header with {', '.join(needed)}")
    header = [h.strip() for h in rows[0][1]]
    missing = [c for c in needed if c not in header]
    if missing:
        hint = " (or pack a test dump with --no-labels)" if missing == ["category_id"] else ""
        raise DataError(f"{path}: line 1: no column {', '.join(missing)}; the header needs "
                        f"{', '.join(needed)} (got {','.join(header)}){hint}")
    categories = labels is not False and "category_id" in header
    titles = "title" in header
    col = {name: header.index(name) for name in header}
    products: list[ListingProduct] = []
    first_line: dict[int, int] = {}
    for line, rec in rows[1:]:
        try:
            if len(rec) < len(header):
                raise BadRow(line, f"expected {len(header)} fields as the header, got {len(rec)}")
            pid = _int_field(line, rec[col["_id"]], "_id")
            cat = _int_field(line, rec[col["category_id"]], "category_id") if categories else None
            if cat is not None and taxonomy is not None and cat not in taxonomy:
                raise BadRow(line, f"category_id {cat} is not in the taxonomy {taxonomy.source}; fix the row or "
                                   f"pass the right --taxonomy")
            picture = rec[col["picture"]].strip()
            if not picture:
                raise BadRow(line, "empty picture field")
            current = products[-1] if products else None
            if current is not None and current.product_id == pid:
                if cat != current.category_id:
                    raise BadRow(line, f"_id {pid} has category_id {cat} here but {current.category_id} on line "
                                       f"{first_line[pid]}; a product has one category")
                current.pictures.append((line, picture))
                continue
            if pid in first_line:
                raise BadRow(line, f"_id {pid} continues the product of line {first_line[pid]} after other "
                                   f"products; put the rows of a product together (sort the listing by _id)")
        except BadRow as exc:
            if not skip_bad:
                raise DataError(f"{path}: line {exc.line}: {exc.message}") from None
            if problems is not None:
                problems.append(f"line {exc.line}: {exc.message}")
            continue
        first_line[pid] = line
        title = rec[col["title"]].strip() if titles else ""
        products.append(ListingProduct(pid, cat, [(line, picture)], title or None))
    if not products:
        raise DataError(f"{path}: no product to pack" + (f" ({problems[0]})" if problems else ""))
    return products, categories


def _int_field(line: int, value: str, name: str) -> int:
    try:
        v = int(value.strip())
    except ValueError:
        raise BadRow(line, f"{name} {value!r} is not an integer") from None
    if not INT64[0] <= v <= INT64[1]:
        raise BadRow(line, f"{name} {value} is out of range (64-bit integers)")
    return v


def prepare_picture(file: Path, size: int | None, quality: int = JPEG_QUALITY) -> tuple[bytes, bool]:
    """The bytes to store for one picture and whether they were re-encoded; ``ValueError`` saying why a
    picture cannot be packed (missing, unreadable, over the limits)."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"picture {file} not found") from None
    except OSError as exc:
        raise ValueError(f"picture {file} cannot be read ({exc.strerror or exc})") from None
    try:
        pixels = decode_picture(data)  # bounded: refuses decompression bombs and oversized pictures
    except CorruptPicture as exc:
        raise ValueError(f"picture {file} is not a readable picture ({exc})") from None
    if size is None and data[:3] == b"\xff\xd8\xff":
        return data, False
    if size is not None:
        pixels = letterbox(pixels, size)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), True


def _encode_products(job: tuple[list[ListingProduct], Path, int | None, int, bool]) -> list:
    """Worker: BSON documents of a few products; a bad picture is returned as ``BadRow`` (the parent
    decides between failing and skipping)."""
    import bson

    products, images, size, quality, labels = job
    out = []
    for prod in products:
        pictures, problems, converted = [], [], 0
        for line, name in prod.pictures:
            try:
                data, recoded = prepare_picture(images / name, size, quality)
            except ValueError as exc:
                problems.append(BadRow(line, str(exc)))
                continue
            pictures.append(data)
            converted += recoded
        doc = {"_id": prod.product_id, "imgs": [{"picture": p} for p in pictures]}
        if labels:
            doc["category_id"] = prod.category_id
        if prod.title:
            doc["title"] = prod.title
        encoded = bson.encode(doc) if pictures else b""
        if len(encoded) > MAX_DOCUMENT_BYTES:
            problems.append(BadRow(prod.pictures[0][0], f"product {prod.product_id} takes {len(encoded):,} bytes, "
                                   f"over BSON's document limit of {MAX_DOCUMENT_BYTES:,}; pass --size 180 or use "
                                   f"fewer or smaller pictures"))
            encoded = b""
        out.append((prod, encoded, len(pictures), converted, problems))
    return out


@dataclass
class PackOptions:
    """How ``pack_listing`` packs. ``taxonomy``: the categories a labelled listing may use (default:
    ``category_names.csv`` beside the listing); it is also written beside the dump when that folder has none,
    where every later command looks for it. ``size``: letterbox every picture to size x size on white (None: as
    given); ``quality``: JPEG quality of re-encoded pictures. ``labels=False``: a test dump without
    ``category_id``, and its answer key ``labels_out`` (default ``OUT_labels.csv``) for ``etalage score``, when the
    listing has categories. ``skip_bad``: count and skip bad rows instead of stopping at the first. ``workers``:
    picture processes (default: every usable core)."""

    taxonomy: str | Path | None = None
    size: int | None = None
    quality: int = JPEG_QUALITY
    labels: bool = True
    labels_out: str | Path | None = None
    skip_bad: bool = False
    workers: int | None = None


def pack_listing(listing: str | Path, images: str | Path, out: str | Path, options: PackOptions | None = None,
                 progress: bool = True) -> PackReport:
    """Write ``out`` (a Cdiscount-shaped BSON dump) from ``listing`` and the pictures under ``images``
    (``PackOptions``); returns counts and speed.

    >>> pack_listing("listing.csv", "images/", "train.bson", PackOptions(size=180))
    """
    from etalage.catalog.bsonindex import BsonIndex

    o = options or PackOptions()
    taxonomy, size, quality, labels, labels_out, skip_bad, workers = (o.taxonomy, o.size, o.quality, o.labels,
                                                                      o.labels_out, o.skip_bad, o.workers)
    listing, images, out = Path(listing), Path(images), Path(out)
    if not images.is_dir():
        raise DataError(f"{images}: no such folder of pictures (--images)")
    if size is not None and not 8 <= size <= 2048:
        raise DataError(f"--size {size}: expected a side between 8 and 2048 pixels")
    tax = taxonomy_beside(listing, taxonomy)
    if labels and tax is None:
        raise DataError(f"{listing}: no taxonomy to check its categories against (none beside it); pass "
                        f"--taxonomy category_names.csv")
    if labels_out is not None and labels:
        raise DataError("--labels-out goes with --no-labels (the answer key of a test dump)")
    check_taxonomy_beside(out, tax)
    problems: list[str] = []
    products, has_categories = read_product_listing(listing, True if labels else None, tax, skip_bad, problems)
    key_wanted = not labels and has_categories
    if labels_out is not None and not key_wanted:
        raise DataError(f"--labels-out: {listing} has no category_id column to write an answer key from")
    skipped_rows = len(problems)
    t0 = time.perf_counter()
    key_path = Path(labels_out) if labels_out else (out.with_name(out.stem + "_labels.csv") if key_wanted else None)
    jobs = [(products[i:i + PRODUCTS_PER_TASK], images, size, quality, labels)
            for i in range(0, len(products), PRODUCTS_PER_TASK)]
    n_products = n_pictures = n_bytes = converted = skipped_products = titled = 0
    key_rows: list[tuple[int, int]] = []
    with atomic_write(out, "wb") as fh, progress_bar(total=sum(len(p.pictures) for p in products), unit="picture",
                                                     desc=f"pack {out.name}", enabled=progress) as bar:
        for results in map_forked(lambda: _encode_products, jobs, workers or usable_cpus()):
            for prod, encoded, n_pics, recoded, bad_rows in results:
                bar.update(len(prod.pictures))
                for row in bad_rows:
                    if not skip_bad:
                        raise DataError(f"{listing}: line {row.line}: {row.message}")
                    problems.append(f"line {row.line}: {row.message}")
                skipped_rows += len(bad_rows)
                if not encoded:
                    skipped_products += 1
                    continue
                fh.write(encoded)
                n_products += 1
                n_pictures += n_pics
                n_bytes += len(encoded)
                converted += recoded
                titled += prod.title is not None
                if key_wanted:
                    key_rows.append((prod.product_id, prod.category_id))
        if n_products == 0:
            raise DataError(f"{listing}: every row was bad ({problems[0] if problems else 'no pictures'}); nothing "
                            f"to pack")
    seconds = time.perf_counter() - t0
    if key_path is not None:
        with atomic_write(key_path, "w", newline="") as kf:
            kf.write("_id,category_id\n")
            kf.writelines(f"{p},{c}\n" for p, c in key_rows)
    tax_out = None
    if tax is not None and not (out.parent / "category_names.csv").exists():
        tax_out = out.parent / "category_names.csv"
        tax.save(tax_out)
    BsonIndex.open(out)  # the dump reads back through the one indexing path (and its index is ready)
    if skipped_rows:
        log.warning("%s: skipped %d bad rows (%d products), e.g. %s", listing, skipped_rows, skipped_products,
                    problems[0])
    return PackReport(out, key_path, tax_out, n_products, n_pictures, n_bytes, seconds, converted, skipped_rows,
                      skipped_products, problems[:20], titled)


def check_taxonomy_beside(out: Path, tax: Taxonomy | None) -> None:
    """The taxonomy goes beside the dump as ``category_names.csv`` (where train, submit and score look);
    a different one already there is an error before anything is written, not a silent mix."""
    beside = out.parent / "category_names.csv"
    if tax is None or not beside.exists():
        return
    there = Taxonomy.load(beside)
    if not np.array_equal(there.category_ids, tax.category_ids) or there.level3_names != tax.level3_names:
        raise DataError(f"{beside}: a different taxonomy is already beside {out.name}; pack into another folder "
                        f"or remove it")


@dataclass
class NewProduct:
    """One product as a seller lists it, to be classified: its encoded pictures (1-4, in order), its title
    (None: none), its id (the id prior reads it)."""

    product_id: int
    pictures: list[bytes]
    title: str | None = None


def write_products(out: str | Path, products: list[NewProduct]) -> Path:
    """A test dump (no categories) of ``products`` in Kaggle's layout, written atomically: what `etalage serve`
    classifies goes through the same reading as a packed dump, so it gets the same answer. Pictures are stored
    as given (checked by the caller); an empty title is left out, as ``pack`` does."""
    import bson

    out = Path(out)
    with atomic_write(out, "wb") as fh:
        for p in products:
            doc = {"_id": int(p.product_id), "imgs": [{"picture": bytes(b)} for b in p.pictures]}
            if p.title and p.title.strip():
                doc["title"] = p.title.strip()
            fh.write(bson.encode(doc))
    return out
