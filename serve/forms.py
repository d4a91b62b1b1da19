"""Multipart requests -> checked ``Listing``s: every field named, counted and bounded before a model sees it.

One product (``POST /v1/classify``): files in the repeated field ``picture`` (1-4, in order), optional
``title`` and ``id``. Several (``POST /v1/classify/batch``): the same fields suffixed with the product's
number from 0, ``picture.0``, ``title.0``, ``id.0``, ``picture.1``, ... Every picture is decoded once
here by the catalogue's bounded decoder, so a truncated JPEG, a file that is no picture or a
decompression bomb is refused with its field named, and only decodable pictures reach the batch.
"""

from __future__ import annotations

import asyncio
import re

from etalage.catalog.pictures import CorruptPicture, decode_picture
from etalage.serve.model import Listing
from etalage.serve.settings import MAX_PICTURES, ServeSettings, size_text

SINGLE_FIELDS = ("picture", "title", "id")
BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)
BATCH_FIELD = re.compile(r"^(picture|title|id)\.(\d{1,4})$")


class BadRequest(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line message naming the field at fault."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_complete(content_type: str, tail: bytes) -> None:
    """A multipart body must end with its closing boundary: the parser takes a body cut after any whole part
    as if it were all, which would answer for a listing without the pictures or title that were lost."""
    m = BOUNDARY.search(content_type)
    if m and b"--" + m.group(1).encode("latin-1") + b"--" not in tail:
        raise BadRequest(400, "the multipart body ends before its closing boundary: the request was cut short")


def _is_file(value) -> bool:
    return hasattr(value, "filename") and hasattr(value, "read")


class _Product:
    """One product's fields as they arrive, in order."""

    def __init__(self, label: str):
        self.label = label  # how errors name it: "" (one product) or "product 3"
        self.pictures: list = []
        self.title: str | None = None
        self.product_id: str | None = None


def _add_field(product: _Product, kind: str, field: str, value) -> None:
    if kind == "picture":
        if not _is_file(value):
            raise BadRequest(400, f"field {field!r} must be a file (multipart file part with a filename)")
        product.pictures.append((field, value))
        return
    if _is_file(value):
        raise BadRequest(400, f"field {field!r} must be text, not a file")
    if (product.title if kind == "title" else product.product_id) is not None:
        raise BadRequest(400, f"field {field!r} given twice")
    if kind == "title":
        product.title = value
    else:
        product.product_id = value


def products_of_form(form, batch: bool) -> list[_Product]:
    """The form's fields grouped by product (checked names; pictures still unread)."""
    products: dict[int, _Product] = {}
    for field, value in form.multi_items():
        if batch:
            m = BATCH_FIELD.match(field)
            if not m:
                raise BadRequest(400, f"unknown field {field!r}: a batch takes picture.N, title.N and id.N "
                                      "(N = the product's number from 0)")
            kind, index = m.group(1), int(m.group(2))
        elif field in SINGLE_FIELDS:
            kind, index = field, 0
        else:
            raise BadRequest(400, f"unknown field {field!r}: expected picture (1-{MAX_PICTURES} files), title, id")
        if index not in products:
            products[index] = _Product(f"product {index}" if batch else "")
        _add_field(products[index], kind, field, value)
    if not products:
        raise BadRequest(400, "no picture: send 1-4 files in the field 'picture'" if not batch else
                              "no product: send files in picture.0, picture.1, ...")
    if batch and sorted(products) != list(range(len(products))):
        missing = sorted(set(range(max(products) + 1)) - set(products))[0]
        raise BadRequest(400, f"products must be numbered 0, 1, 2, ... without gaps: no field for product {missing}")
    return [products[i] for i in sorted(products)]


async def read_listing(product: _Product, settings: ServeSettings) -> Listing:
    """One product's fields checked and its picture files read (bounded)."""
    where = f"{product.label}: " if product.label else ""
    if not product.pictures:
        raise BadRequest(400, f"{where}no picture: send 1-{MAX_PICTURES} files in the field 'picture'")
    if len(product.pictures) > MAX_PICTURES:
        raise BadRequest(400, f"{where}{len(product.pictures)} pictures; at most {MAX_PICTURES} per product")
    pictures = []
    for n, (field, upload) in enumerate(product.pictures, 1):
        data = await upload.read(settings.max_picture_bytes + 1)
        if len(data) > settings.max_picture_bytes:
            raise BadRequest(413, f"{where}picture {n} ({field}) is over {size_text(settings.max_picture_bytes)}")
        if not data:
            raise BadRequest(400, f"{where}picture {n} ({field}) is empty")
        pictures.append(data)
    title = None
    if product.title is not None:
        title = " ".join(product.title.split()) or None
        if title and len(title) > settings.max_title_chars:
            raise BadRequest(400, f"{where}the title is {len(title)} characters; at most {settings.max_title_chars}")
    return Listing(pictures=pictures, title=title, product_id=_product_id(product.product_id, where))


def _product_id(text: str | None, where: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise BadRequest(400, f"{where}id {text[:40]!r} is not an integer") from None
    if not 0 <= value < 2**63:
        raise BadRequest(400, f"{where}id {value} is out of range (0 to 2**63-1)")
    return value


async def check_pictures(listings: list[Listing], labels: list[str], decoding: asyncio.Semaphore) -> None:
    """Every picture decoded once by the bounded decoder (in threads, ``decoding`` of them at once: each can
    take up to 50 MB): the first that cannot be decoded refuses the request, named."""
    async def check(where: str, n: int, data: bytes) -> None:
        async with decoding:
            try:
                await asyncio.to_thread(decode_picture, data)
            except CorruptPicture as exc:
                reason = " ".join(str(exc).split())[:200]
                raise BadRequest(400, f"{where}picture {n} is not a readable picture ({reason})") from None

    await asyncio.gather(*(check(f"{label}: " if label else "", n, data)
                           for listing, label in zip(listings, labels, strict=True)
                           for n, data in enumerate(listing.pictures, 1)))
