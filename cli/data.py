"""Data commands (no torch): synth, pack, index, hash, info, score."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from etalage.cli.options import leaf


def register(sub, handlers: dict) -> None:
    _add_synth(sub, handlers)
    _add_pack(sub, handlers)
    _add_index_and_hash(sub, handlers)
    _add_info_and_score(sub, handlers)


def _add_synth(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("synth",), cmd_synth,
             "write a synthetic Cdiscount-shaped catalogue (tests, demo, benchmarks)",
             "Write DIR/train.bson, DIR/test.bson (no category_id), DIR/category_names.csv, DIR/sample_submission.csv "
             "and DIR/test_labels.csv (the answer key). Pictures are 180x180 JPEGs: shapes and textures for generic "
             "classes, book and CD covers whose printed words decide the class (or real covers: --book-covers, "
             "--music-covers). Deterministic per seed.")
    synth_options(p)


def _add_pack(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("pack",), cmd_pack,
             "pack any catalogue (a listing CSV and its pictures) into a Cdiscount-shaped BSON dump",
             "Write FILE.bson in Kaggle's layout (_id, imgs: [{picture}], category_id; and title, from a title column, "
             "kept in test dumps too) from a listing with a header (_id, category_id, picture, optional title; other "
             "columns ignored), one row per picture: rows sharing an _id are one "
             "product's pictures in listing order and must be together. JPEGs are stored as given (each decoded "
             "once to check it), other formats converted to JPEG; --size S letterboxes every picture to SxS on "
             "white (Cdiscount's shape: 180). The taxonomy is written beside the dump as category_names.csv, "
             "where train, submit and score look. --no-labels writes a test dump without categories and its answer "
             "key for `etalage score`. A bad row is one line naming it and nothing is written; --skip-bad counts "
             "and skips bad rows instead.")
    p.add_argument("--listing", required=True, metavar="L.csv", help="CSV with a header of at least _id,category_id,picture (title: the product's, on "
                        "its first row; other columns ignored): one row per picture, a product's rows together")
    p.add_argument("--images", required=True, metavar="DIR", help="folder the picture column is relative to")
    p.add_argument("--out", required=True, metavar="FILE.bson", help="the dump to write")
    p.add_argument("--taxonomy", metavar="category_names.csv",
                   help="categories the listing may use (default: the one beside the listing)")
    p.add_argument("--size", type=int, help="letterbox every picture to SIZE x SIZE on white (default: as given)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of converted or resized pictures")
    p.add_argument("--no-labels", action="store_true", help="a test dump: no category_id (answer key apart)")
    p.add_argument("--labels-out", metavar="KEY.csv", help="with --no-labels: the answer key (default: "
                                                           "FILE_labels.csv beside the dump)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad rows (counted, first ones shown) instead of "
                                                           "stopping at the first")
    p.add_argument("--workers", type=int, help="picture processes (default: every usable core)")



def _add_index_and_hash(sub, handlers: dict) -> None:
    for name, func, help_ in (
        ("index", cmd_index, "write the offset index FILE.bson.idx.npz (and with --md5 the picture hashes)"),
        ("hash", cmd_hash, "write FILE.bson.md5.npz: the MD5 of every picture (indexes first if needed)"),
    ):
        p = leaf(sub, handlers, (name,), func, help_, f"{help_}. Derived files go beside the dump, or to the cache "
                 f"folder when its folder is read-only (--cache-dir).", config=False)
        p.add_argument("files", nargs="+", metavar="FILE.bson", help="Cdiscount BSON dump(s)")
        p.add_argument("--taxonomy", help="category_names.csv: a category_id outside it is an error")
        p.add_argument("--workers", type=int, help="hashing processes (default: all cores)")
        if name == "index":
            p.add_argument("--md5", action="store_true", help="also hash every picture (a second pass)")
            p.add_argument("--check-categories", action="store_true",
                           help="check category ids against category_names.csv beside the file")



def _add_info_and_score(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("info",), cmd_info, "products, pictures per product, titles and level-1 distribution of "
             "a dump",
             config=False)
    p.add_argument("file", metavar="FILE.bson", help="Cdiscount BSON dump")
    p.add_argument("--taxonomy", help="category_names.csv (default: the one beside the file)")

    p = leaf(sub, handlers, ("score",), cmd_score, "product top-1 accuracy of a submission against an answer key",
             config=False)
    p.add_argument("--submission", required=True, help="_id,category_id CSV to score")
    p.add_argument("--labels", required=True, help="_id,category_id answer key (e.g. test_labels.csv)")
    p.add_argument("--taxonomy", help="category_names.csv for per-level-1 figures (default: the one beside the labels)")


def synth_options(p: ArgumentParser) -> None:
    from etalage.synth import SynthConfig

    d = SynthConfig()
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--products", type=int, default=2000, help="products in train and test together")
    p.add_argument("--seed", type=int, default=0, help="random seed (a seed gives the same bytes)")
    p.add_argument("--taxonomy", help="a real category_names.csv to draw classes from "
                                      "(default: a small built-in tree with LIBRAIRIE and MUSIQUE)")
    p.add_argument("--classes", type=int, help="use only this many classes of the taxonomy")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="share of products in test.bson")
    p.add_argument("--noise", type=float, default=d.noise, help="picture noise for generic classes, 0-1")
    p.add_argument("--text-strength", type=float, default=d.text_strength,
                   help="share of cover words from the class's own vocabulary, 0-1")
    p.add_argument("--id-run-length", type=float, default=d.id_run_length,
                   help="mean run of consecutive product ids sharing a class (1: ids carry no class, as in the "
                        "real sample)")
    p.add_argument("--id-drift", type=float, default=d.id_drift,
                   help="slow drift of the class mix over the id range, 0-1 (a prior wide id windows can use)")
    p.add_argument("--book-covers", metavar="DIR", help="real book covers (DIR/listing.csv + DIR/images, e.g. "
                                                        "../shared/data/real-covers/books-dev) as the LIBRAIRIE "
                                                        "pictures, genres as real Cdiscount classes")
    p.add_argument("--music-covers", metavar="DIR", help="real album covers (same layout) as the MUSIQUE pictures")
    p.add_argument("--duplicate-rate", type=float, default=d.duplicate_rate,
                   help="share of pictures that are exact copies of a class's stock pictures")
    p.add_argument("--placeholder-rate", type=float, default=d.placeholder_rate,
                   help="share of pictures replaced by placeholders shared across classes")
    p.add_argument("--tail", type=float, default=d.tail, help="Zipf exponent of class sizes (0 = balanced)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="JPEG quality of drawn pictures")
    p.add_argument("--workers", type=int, help="drawing processes (default: all cores)")
    p.add_argument("--titles", type=float, nargs="?", const=0.8, default=d.titles, metavar="SHARE",
                   help="give this share of products a noisy title (class words, brand and colour words), as a "
                        "catalogue listing has (--titles alone: 0.8; default: none, as in Cdiscount's dumps)")


def cmd_synth(args) -> int:
    import time

    from etalage.catalog.taxonomy import Taxonomy
    from etalage.synth import SynthConfig, write_synthetic_catalogue

    cfg = SynthConfig(products=args.products, seed=args.seed, test_fraction=args.test_fraction, noise=args.noise,
                      text_strength=args.text_strength, id_run_length=args.id_run_length,
                      duplicate_rate=args.duplicate_rate, placeholder_rate=args.placeholder_rate, tail=args.tail,
                      classes=args.classes, jpeg_quality=args.jpeg_quality, workers=args.workers,
                      id_drift=args.id_drift, book_covers=args.book_covers, music_covers=args.music_covers,
                      titles=args.titles)
    tax = Taxonomy.load(args.taxonomy) if args.taxonomy else None
    t0 = time.perf_counter()
    s = write_synthetic_catalogue(args.out, cfg, tax, progress=not args.quiet)
    real = f", {s['real_covers']} of them real covers" if s["real_covers"] else ""
    real += f", {s['titles']} titled products" if s["titles"] else ""
    print(f"wrote {s['train']} training and {s['test']} test products ({s['pictures']} pictures{real}, "
          f"{s['classes_used']} classes) to {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_pack(args) -> int:
    from etalage.catalog.pack import PackOptions, pack_listing

    options = PackOptions(args.taxonomy, args.size, args.quality, not args.no_labels, args.labels_out, args.skip_bad,
                          args.workers)
    rep = pack_listing(args.listing, args.images, args.out, options, progress=not args.quiet)
    print(f"{rep.out}: {rep.products:,} products, {rep.pictures:,} pictures ({rep.converted:,} re-encoded), "
          f"{rep.bytes_written / 1e6:.1f} MB in {rep.seconds:.1f}s ({rep.pictures_per_s:,.0f} pictures/s, "
          f"{rep.mb_per_s:.1f} MB/s)")
    if rep.labels_out is not None:
        print(f"{rep.labels_out}: answer key for `etalage score`")
    if rep.taxonomy_out is not None:
        print(f"{rep.taxonomy_out}: the taxonomy, beside the dump")
    if rep.skipped_rows:
        print(f"skipped {rep.skipped_rows} bad rows ({rep.skipped_products} products left out):")
        for line in rep.problems[:5]:
            print(f"  {line}")
    return 0


def cmd_index(args, md5: bool | None = None) -> int:
    from etalage.catalog.info import index_dump
    from etalage.catalog.taxonomy import taxonomy_beside

    md5 = args.md5 if md5 is None else md5
    for path in args.files:
        tax = taxonomy_beside(path, args.taxonomy) if getattr(args, "check_categories", False) or args.taxonomy \
            else None
        rep = index_dump(path, tax, md5=md5, workers=args.workers, progress=not args.quiet, cache_dir=args.cache_dir)
        print(f"{rep.index_file}: {rep.products} products, {rep.pictures} pictures in {rep.seconds:.2f}s")
        if rep.md5_file is not None:
            print(f"{rep.md5_file}: {rep.pictures} picture MD5s ({rep.distinct_pictures} distinct) in "
                  f"{rep.md5_seconds:.2f}s")
    return 0


def cmd_hash(args) -> int:
    return cmd_index(args, md5=True)


def cmd_info(args) -> int:
    from etalage.catalog.info import describe_dump
    from etalage.catalog.taxonomy import taxonomy_beside

    s = describe_dump(args.file, taxonomy_beside(args.file, args.taxonomy), progress=not args.quiet,
                      cache_dir=args.cache_dir)
    print(f"{s.path}")
    print(f"  products   {s.products:>12,}")
    print(f"  pictures   {s.pictures:>12,}  ({s.pictures / max(1, s.products):.2f} per product)")
    print("  pictures per product:")
    for k, c in s.pictures_per_product.items():
        print(f"    {k}: {c:>10,}  {100 * c / s.products:5.1f}%")
    print(f"  with a title {s.titled:>10,}  ({100 * s.titled / max(1, s.products):.1f}%)")
    if not s.labelled:
        print("  no category_id (a test file)")
        return 0
    print(f"  categories used {s.categories_used:,}")
    if not s.level1:
        print("  (level-1 distribution needs --taxonomy or category_names.csv beside the file)")
        return 0
    total = sum(s.level1.values())
    print("  level-1 distribution:")
    for name, n in s.level1.items():
        print(f"    {name:<40} {n:>10,}  {100 * n / total:5.1f}%")
    return 0


def cmd_score(args) -> int:
    from etalage.catalog.submission import score_submission
    from etalage.catalog.taxonomy import taxonomy_beside

    score = score_submission(args.submission, args.labels, taxonomy_beside(args.labels, args.taxonomy))
    print(f"product top-1 accuracy {score.accuracy:.4f} over {score.n} products")
    for name, (acc, n) in sorted(score.per_level1.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<40} {acc:.4f}  ({n})")
    return 0
