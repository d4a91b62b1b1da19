"""The category tree (``category_names.csv``): maps Cdiscount category ids to the dense class
indices every model and prediction file uses, and classes to their level-1 and level-2 parents.

The class index is the position of a category id in ascending id order, so it is stable for a
given file whatever the row order, and two runs on the same taxonomy agree on every index.
Level-1 and level-2 indices are positions of the names in sorted order. The real file has 483
level-2 names over 486 (level-1, level-2) pairs: a level-2 is identified by its name, as the
competition's "483 level-2 categories" count does.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etalage.errors import TaxonomyError

COLUMNS = ("category_id", "category_level1", "category_level2", "category_level3")


@dataclass(frozen=True)
class Taxonomy:
    """Category ids, names and parents, indexed by class (ascending category id).

    Arrays: ``category_ids`` int64 (n_classes,), ``level1_of`` / ``level2_of`` int32 (n_classes,)
    giving each class's parent indices into ``level1_names`` / ``level2_names``.
    """

    category_ids: np.ndarray
    level1_names: tuple[str, ...]
    level2_names: tuple[str, ...]
    level3_names: tuple[str, ...]
    level1_of: np.ndarray
    level2_of: np.ndarray
    source: str = ""
    _index_of_id: dict[int, int] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_rows(cls, rows: list[tuple[int, str, str, str]], source: str = "") -> Taxonomy:
        """Build from ``(category_id, level1, level2, level3)`` rows in any order."""
        if not rows:
            raise TaxonomyError(f"{source or 'taxonomy'}: no categories")
        rows = sorted(rows, key=lambda r: r[0])
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        dup = ids[1:][ids[1:] == ids[:-1]]
        if dup.size:
            raise TaxonomyError(f"{source or 'taxonomy'}: category_id {int(dup[0])} appears more than once")
        level1_names = tuple(sorted({r[1] for r in rows}))
        level2_names = tuple(sorted({r[2] for r in rows}))
        l1 = {name: i for i, name in enumerate(level1_names)}
        l2 = {name: i for i, name in enumerate(level2_names)}
        return cls(
            category_ids=ids,
            level1_names=level1_names,
            level2_names=level2_names,
            level3_names=tuple(r[3] for r in rows),
            level1_of=np.array([l1[r[1]] for r in rows], dtype=np.int32),
            level2_of=np.array([l2[r[2]] for r in rows], dtype=np.int32),
            source=source,
            _index_of_id={int(c): i for i, c in enumerate(ids)},
        )

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        """Read ``category_names.csv`` (UTF-8, with or without a byte-order mark, header
        ``category_id,category_level1,...``)."""
        from etalage.catalog.csvrows import csv_rows, parse_int

        path = Path(path)
        lines = csv_rows(path, "category file", TaxonomyError)
        if not lines:
            raise TaxonomyError(f"{path}: empty file, expected header {','.join(COLUMNS)}")
        header = [h.strip() for h in lines[0][1]]
        if tuple(header[:4]) != COLUMNS:
            raise TaxonomyError(f"{path}: line 1: expected header {','.join(COLUMNS)}, got {','.join(header)}")
        rows = []
        for line_no, rec in lines[1:]:
            if len(rec) < 4:
                raise TaxonomyError(f"{path}: line {line_no}: expected 4 fields, got {len(rec)}")
            cid = parse_int(rec[0], path, line_no, "category_id", TaxonomyError)
            if not all(rec[1:4]):
                raise TaxonomyError(f"{path}: line {line_no}: empty category name")
            rows.append((cid, rec[1], rec[2], rec[3]))
        return cls.from_rows(rows, source=str(path))

    def save(self, path: str | Path) -> None:
        """Write as ``category_names.csv`` (atomically)."""
        from etalage.files import atomic_write

        with atomic_write(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for i, cid in enumerate(self.category_ids):
                writer.writerow([int(cid), self.level1_names[self.level1_of[i]],
                                 self.level2_names[self.level2_of[i]], self.level3_names[i]])

    # -- sizes -------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.category_ids)

    @property
    def n_level1(self) -> int:
        return len(self.level1_names)

    @property
    def n_level2(self) -> int:
        return len(self.level2_names)

    def __len__(self) -> int:
        return self.n_classes

    def __contains__(self, category_id) -> bool:
        """Whether ``category_id`` is one of the file's categories."""
        return int(category_id) in self._index_of_id

    # -- lookups -----------------------------------------------------------------------------
    def index_of(self, category_id: int) -> int:
        """Class index of a category id; ``TaxonomyError`` if the id is not in the file."""
        try:
            return self._index_of_id[int(category_id)]
        except KeyError:
            raise TaxonomyError(f"category_id {category_id} is not in the taxonomy {self.source}".rstrip()) from None

    def indices_of(self, category_ids: np.ndarray) -> np.ndarray:
        """Vectorised ``index_of`` (int32); the first unknown id raises ``TaxonomyError``."""
        category_ids = np.asarray(category_ids, dtype=np.int64)
        pos = np.searchsorted(self.category_ids, category_ids).clip(0, self.n_classes - 1)
        bad = self.category_ids[pos] != category_ids
        if bad.any():
            self.index_of(int(category_ids[bad][0]))
        return pos.astype(np.int32)

    def category_id_of(self, index: int) -> int:
        return int(self.category_ids[index])

    def level1_index(self, name: str) -> int:
        try:
            return self.level1_names.index(name)
        except ValueError:
            raise TaxonomyError(f"no level-1 category named {name!r}; known: {', '.join(self.level1_names)}") from None

    def classes_under(self, level1_name: str) -> np.ndarray:
        """Class indices (int32, ascending) whose level-1 parent is ``level1_name``."""
        return np.flatnonzero(self.level1_of == self.level1_index(level1_name)).astype(np.int32)

    def names_of(self, index: int) -> tuple[str, str, str]:
        """(level-1, level-2, level-3) names of a class."""
        return (self.level1_names[self.level1_of[index]], self.level2_names[self.level2_of[index]],
                self.level3_names[index])


def taxonomy_beside(data: str | Path, explicit: str | Path | None = None, required: bool = False) -> Taxonomy | None:
    """The taxonomy a command uses for ``data``: the one given (``--taxonomy``), else
    ``category_names.csv`` beside ``data`` (where synth, pack and the Kaggle download put it), else None;
    with ``required``, a ``TaxonomyError`` naming the flag instead of None."""
    if explicit:
        return Taxonomy.load(explicit)
    beside = Path(data).parent / "category_names.csv"
    if beside.exists():
        return Taxonomy.load(beside)
    if required:
        raise TaxonomyError(f"{data}: pass --taxonomy category_names.csv (none beside the file)")
    return None
