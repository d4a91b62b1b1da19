"""How fast ``etalage pack`` turns a listing and its pictures into a Cdiscount-shaped dump, against a plain
``bson.encode`` loop writing the same pictures' bytes as the same documents, in the same run (real
photos: ../shared/data/real-products/fashion-dev, 29,943 60x80 JPEGs, and grocery-dev, 2,936 photos).

pack also decodes every picture once (to refuse unreadable ones before writing) and, with ``--size``,
letterboxes and re-encodes it; the baseline only reads and encodes bytes. Both read the files from the
page cache (a warm-up pass first). Writes ``benchmarks/results/pack.json``.

    python benchmarks/bench_pack.py
"""

from __future__ import annotations

import csv
import json
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "real-products"


def baseline(listing: Path, images: Path, out: Path) -> tuple[float, int, int]:
    """A plain loop: read each product's picture files, ``bson.encode`` the document, write it."""
    import bson

    with listing.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    t0 = time.perf_counter()
    n_bytes = 0
    with out.open("wb") as fh:
        products: dict[str, list] = {}
        order = []
        for r in rows:
            if r["_id"] not in products:
                products[r["_id"]] = [int(r["category_id"])]
                order.append(r["_id"])
            products[r["_id"]].append((images / r["picture"]).read_bytes())
        for pid in order:
            cat, *pics = products[pid]
            doc = bson.encode({"_id": int(pid), "imgs": [{"picture": p} for p in pics], "category_id": cat})
            fh.write(doc)
            n_bytes += len(doc)
    return time.perf_counter() - t0, len(rows), n_bytes


def main() -> int:
    from etalage.catalog.pack import PackOptions, pack_listing
    from etalage.files import write_json_atomic

    results = {"machine": f"{platform.machine()}, 2 cores", "sets": {}}
    for name in ("fashion-dev", "grocery-dev"):
        src = SHARED / name
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            baseline(src / "listing.csv", src / "images", tmp / "warm.bson")  # page cache warm
            base_s, pictures, base_bytes = baseline(src / "listing.csv", src / "images", tmp / "base.bson")
            row = {"pictures": pictures, "baseline_s": base_s, "baseline_pictures_per_s": pictures / base_s,
                   "baseline_mb_per_s": base_bytes / 1e6 / base_s}
            for label, size in (("as_given", None), ("size_180", 180)):
                rep = pack_listing(src / "listing.csv", src / "images", tmp / label / "out.bson", PackOptions(size=size),
                                   progress=False)
                row[label] = {"seconds": rep.seconds, "pictures_per_s": rep.pictures_per_s, "mb_per_s": rep.mb_per_s,
                              "ratio_to_baseline": base_s / rep.seconds, "re_encoded": rep.converted}
            results["sets"][name] = row
            print(name, json.dumps(row, indent=1))
    write_json_atomic(ROOT / "benchmarks" / "results" / "pack.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
