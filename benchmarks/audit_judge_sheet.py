"""Contact sheets of an audit's top suspects for a person to judge: per product its picture, the title from
the listing, the given and the suggested category with their probabilities (25 to a PNG), and
``judge_rows.csv``. With ``--flipped``, the products whose label a benchmark flipped are left out: what
remains are candidates for real errors of the source (``benchmarks/results/audit_fashion_judged.csv``).

    python bench/audit_judge_sheet.py AUDIT LISTING.csv IMAGES [--flipped FLIPPED_LISTING.csv] [--n 50]
"""
import argparse
import csv
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("audit", type=Path)
ap.add_argument("listing", type=Path, help="the original listing (_id,category_id,picture,title)")
ap.add_argument("images", type=Path)
ap.add_argument("--flipped", type=Path, help="the listing with the benchmark's flipped labels")
ap.add_argument("--n", type=int, default=50)
args = ap.parse_args()
audit, original_listing, images, n = args.audit, args.listing, args.images, args.n
flipped_listing = args.flipped
skip_flipped = flipped_listing is not None

orig = {r["_id"]: r for r in csv.DictReader(original_listing.open())}
flipped = set()
if skip_flipped:
    for r in csv.DictReader(flipped_listing.open()):
        if r["category_id"] != orig[r["_id"]]["category_id"]:
            flipped.add(r["_id"])
rows = [r for r in csv.DictReader((audit / "suspects.csv").open()) if r["product_id"] not in flipped][:n]
font = ImageFont.load_default()
W, H, cols = 300, 250, 5
for sheet in range(0, len(rows), 25):
    part = rows[sheet:sheet + 25]
    img = Image.new("RGB", (W * cols, H * ((len(part) + cols - 1) // cols)), "white")
    d = ImageDraw.Draw(img)
    for i, r in enumerate(part):
        x, y = (i % cols) * W, (i // cols) * H
        pic = Image.open(images / orig[r["product_id"]]["picture"]).convert("RGB")
        pic.thumbnail((110, 140))
        img.paste(pic, (x + 5, y + 5))
        d.text((x + 120, y + 5), f"#{sheet + i + 1} id {r['product_id']}", fill="black", font=font)
        given = r["given_category"].split(" / ")[-1]
        sugg = r["suggested_category"].split(" / ")[-1]
        d.text((x + 120, y + 25), f"given: {given}", fill="red", font=font)
        d.text((x + 120, y + 40), f"  p={float(r['given_probability']):.2f}", fill="red", font=font)
        d.text((x + 120, y + 60), f"sugg: {sugg}", fill="green", font=font)
        d.text((x + 120, y + 75), f"  p={float(r['suggested_probability']):.2f}", fill="green", font=font)
        for k, line in enumerate(textwrap.wrap(orig[r["product_id"]]["title"], 48)[:5]):
            d.text((x + 5, y + 150 + 14 * k), line, fill="blue", font=font)
        d.rectangle([x, y, x + W - 1, y + H - 1], outline="gray")
    out = audit / f"judge_{sheet // 25 + 1}.png"
    img.save(out)
    print(out)
with (audit / "judge_rows.csv").open("w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["n", "product_id", "title", "given", "suggested"])
    for i, r in enumerate(rows, 1):
        w.writerow([i, r["product_id"], orig[r["product_id"]]["title"], r["given_category"], r["suggested_category"]])
