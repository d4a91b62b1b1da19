"""Rewrite this folder's sample of the GroceryStore photos from the dev part kept in ../shared/data.

Deterministic: the same source gives the same files. Ten fine classes from the three level-1 groups (with
look-alike pairs: two apples, orange and satsumas, two yellow vegetables), 24 training photos each, taken
evenly along the class's photos of the dataset's own train part (they come in shooting sessions, so evenly
spaced picks span the sessions), and every photo of its official val part as the test set (5 or 6 per class:
other sessions, the honest test). Photos are copied byte for byte, with their names.

    python examples/grocery/make_sample.py [--source ../shared/data/real-products/grocery-dev]
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1].parent / "shared" / "data" / "real-products" / "grocery-dev"
CLASSES = ("Golden-Delicious", "Granny-Smith", "Orange", "Satsumas", "Bravo-Orange-Juice", "Oatly-Oat-Milk",
           "Arla-Mild-Vanilla-Yoghurt", "Yellow-Onion", "Yellow-Bell-Pepper", "Sweet-Potato")
TRAIN_PER_CLASS = 24
COLUMNS = ["_id", "category_id", "picture", "title"]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r[k] for k in columns} for r in rows)


def evenly(rows: list[dict], n: int) -> list[dict]:
    """``n`` rows spread evenly over ``rows`` (all of them when there are fewer)."""
    if len(rows) <= n:
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


def sample(source: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(train rows, test rows, taxonomy rows) of the chosen classes, in the listing's order."""
    taxonomy = [r for r in read_csv(source / "category_names.csv") if r["category_level3"] in CLASSES]
    if len(taxonomy) != len(CLASSES):
        raise SystemExit(f"{source / 'category_names.csv'}: expected the classes {', '.join(CLASSES)}")
    ids = {r["category_id"] for r in taxonomy}
    listing = [r for r in read_csv(source / "listing.csv") if r["category_id"] in ids]
    train, test = [], []
    for cid in sorted(ids):
        rows = sorted((r for r in listing if r["category_id"] == cid), key=lambda r: r["picture"])
        train += evenly([r for r in rows if r["picture"].startswith("train-")], TRAIN_PER_CLASS)
        test += [r for r in rows if r["picture"].startswith("val-")]
    by_id = {r["_id"]: i for i, r in enumerate(listing)}
    return (sorted(train, key=lambda r: by_id[r["_id"]]), sorted(test, key=lambda r: by_id[r["_id"]]), taxonomy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="the grocery-dev folder (listing.csv, images/)")
    args = parser.parse_args()
    train, test, taxonomy = sample(args.source)
    images = HERE / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    for r in train + test:
        shutil.copyfile(args.source / "images" / r["picture"], images / r["picture"])
    write_csv(HERE / "train.csv", train, COLUMNS)
    write_csv(HERE / "test.csv", test, COLUMNS)
    write_csv(HERE / "category_names.csv", taxonomy, list(taxonomy[0]))
    print(f"{HERE}: {len(train)} training and {len(test)} test photos of {len(taxonomy)} classes")


if __name__ == "__main__":
    main()
