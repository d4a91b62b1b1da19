"""Cover listings in BookCover30's column order (quoted CSV, no header: id, file name, picture URL,
title, author, class id, class name): BookCover30 itself and the real book and album covers of
``../shared/data/real-covers``, read by the cover benchmark and by the synthetic catalogue's real-cover
mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from etalage.catalog.csvrows import csv_rows, parse_int
from etalage.errors import DataError


@dataclass
class Cover:
    key: str
    filename: str
    title: str
    author: str
    class_id: int
    class_name: str

    @property
    def text(self) -> str:
        return f"{self.title} {self.author}".strip()


def read_listing(path: str | Path) -> list[Cover]:
    path = Path(path)
    covers = []
    for line_no, row in csv_rows(path, "listing"):
        if len(row) != 7:
            raise DataError(f"{path}: line {line_no}: expected 7 fields (id, filename, picture URL, title, "
                            f"author, class id, class name), got {len(row)}")
        class_id = parse_int(row[5], path, line_no, "class id")
        covers.append(Cover(row[0], row[1], row[3], row[4], class_id, row[6]))
    if not covers:
        raise DataError(f"{path}: empty listing")
    return covers
