"""Reading the CSV files a user hands etalage (taxonomy, submissions, answer keys, listings) with one
behaviour everywhere: UTF-8 with or without a byte-order mark, and every problem one ``DataError``
naming the file and line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from etalage.errors import DataError

INT64 = (-(2**63), 2**63 - 1)


def csv_rows(path: str | Path, what: str, error=DataError) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty row of ``path``; ``error`` (a ``DataError`` subclass or
    the like) for a file that cannot be read or is not UTF-8, naming the line of the bad byte."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise error(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
                    ) from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise error(f"{path}: not a CSV file ({exc})") from None
    return [(n, r) for n, r in enumerate(rows, start=1) if r and any(c.strip() for c in r)]


def parse_int(value: str, path: Path, line: int, field: str, error=DataError) -> int:
    """An integer field that fits int64, or ``error`` naming the file, line and field."""
    try:
        v = int(value.strip())
    except ValueError:
        raise error(f"{path}: line {line}: {field} {value!r} is not an integer") from None
    if not INT64[0] <= v <= INT64[1]:
        raise error(f"{path}: line {line}: {field} {value} is out of range (64-bit integers)")
    return v
