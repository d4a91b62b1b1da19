"""`etalage pack`: any listing + pictures into a Cdiscount-shaped dump that every command reads, and each
bad input as one line with nothing written."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.pack import PackOptions, pack_listing
from etalage.catalog.pictures import decode_picture
from etalage.catalog.submission import read_id_category_csv
from etalage.cli import main
from etalage.errors import DataError

TAXONOMY = ("category_id,category_level1,category_level2,category_level3\n"
            "100,Apparel,Topwear,Tshirts\n101,Apparel,Topwear,Shirts\n102,Footwear,Shoes,Sandals\n")


def _picture(path, w, h, colour, fmt="JPEG"):
    img = Image.new("RGB", (w, h), colour)
    img.paste((0, 0, 0), (w // 4, h // 4, w // 2, h // 2))
    img.save(path, format=fmt)


@pytest.fixture
def catalogue(tmp_path):
    """A listing of 3 products (one with two pictures, one PNG), its pictures and taxonomy."""
    images = tmp_path / "images"
    images.mkdir()
    _picture(images / "a1.jpg", 60, 80, (200, 10, 10))
    _picture(images / "a2.jpg", 60, 80, (10, 200, 10))
    _picture(images / "b.png", 90, 40, (10, 10, 200), "PNG")
    _picture(images / "c.jpg", 180, 180, (120, 120, 0))
    (tmp_path / "category_names.csv").write_text(TAXONOMY)
    listing = tmp_path / "listing.csv"
    listing.write_text("_id,category_id,picture,title\n"
                       "7,100,a1.jpg,Red tee\n7,100,a2.jpg,Red tee\n3,102,b.png,\"Sandals, blue\"\n"
                       "12,101,c.jpg,Shirt\n")
    return tmp_path, listing, images


def _write(listing, text):
    listing.write_text("_id,category_id,picture,title\n" + text)


def test_pack_round_trip_as_given(catalogue, tmp_path):
    root, listing, images = catalogue
    rep = pack_listing(listing, images, tmp_path / "out" / "train.bson", progress=False)
    assert (rep.products, rep.pictures, rep.converted) == (3, 4, 1)
    cat = Catalog.open(tmp_path / "out" / "train.bson")
    assert cat.product_ids.tolist() == [7, 3, 12], "listing order"
    assert cat.category_ids.tolist() == [100, 102, 101]
    assert cat.n_pictures.tolist() == [2, 1, 1]
    assert cat[0].pictures[0] == (images / "a1.jpg").read_bytes(), "JPEGs stored as given"
    png = cat[1].pictures[0]
    assert png[:3] == b"\xff\xd8\xff" and decode_picture(png).shape == (40, 90, 3), "PNG converted to JPEG"
    assert Taxonomy.load(tmp_path / "out" / "category_names.csv").n_classes == 3, "taxonomy beside the dump"


def test_pack_size_letterboxes_on_white(catalogue, tmp_path):
    _, listing, images = catalogue
    pack_listing(listing, images, tmp_path / "t.bson", PackOptions(size=180), progress=False)
    pics = [decode_picture(b) for p in Catalog.open(tmp_path / "t.bson") for b in p.pictures]
    assert all(p.shape == (180, 180, 3) for p in pics)
    tee = pics[0].astype(int)
    assert (tee[:, :20] > 245).all(), "60x80 letterboxed: white bands left and right"
    assert abs(tee[150, 120] - [200, 10, 10]).max() < 40, "the picture itself, scaled into the middle"


def test_pack_test_dump_and_answer_key(catalogue, tmp_path):
    _, listing, images = catalogue
    rep = pack_listing(listing, images, tmp_path / "test.bson", PackOptions(labels=False), progress=False)
    assert rep.labels_out == tmp_path / "test_labels.csv"
    cat = Catalog.open(tmp_path / "test.bson")
    assert not cat.has_labels
    ids, cats = read_id_category_csv(rep.labels_out)
    assert ids.tolist() == [7, 3, 12] and cats.tolist() == [100, 102, 101]


BAD = {
    "missing picture": ("7,100,nope.jpg,x\n", "line 2: picture", "not found"),
    "unreadable picture": ("7,100,broken.jpg,x\n", "line 2: picture", "not a readable picture"),
    "category outside the taxonomy": ("7,100,a1.jpg,x\n9,555,c.jpg,y\n", "line 3: category_id 555", "taxonomy"),
    "rows of a product apart": ("7,100,a1.jpg,x\n3,102,b.png,y\n7,100,a2.jpg,x\n", "line 4: _id 7",
                                "put the rows of a product together"),
    "two categories for one product": ("7,100,a1.jpg,x\n7,101,a2.jpg,x\n", "line 3: _id 7", "one category"),
    "id not an integer": ("x7,100,a1.jpg,x\n", "line 2: _id 'x7'", "not an integer"),
    "picture over the size limits": ("7,100,huge.png,x\n", "line 2: picture", "over the limit"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_pack_bad_rows_are_one_line_and_write_nothing(catalogue, tmp_path, case, capsys):
    root, listing, images = catalogue
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    if case == "picture over the size limits":
        Image.new("RGB", (5000, 4000), (255, 255, 255)).save(images / "huge.png", optimize=False)
    text, where, why = BAD[case]
    _write(listing, text)
    out = tmp_path / "out" / "bad.bson"
    code = main(["pack", "--listing", str(listing), "--images", str(images), "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert str(listing) in err and where in err and why in err, err
    assert not out.exists()
    assert not (out.parent.exists() and list(out.parent.glob(".*.tmp"))), "no temporary file left"


def test_pack_listing_without_needed_columns(catalogue, tmp_path):
    _, listing, images = catalogue
    listing.write_text("_id,picture\n7,a1.jpg\n")
    with pytest.raises(DataError, match=r"line 1: no column category_id.*--no-labels"):
        pack_listing(listing, images, tmp_path / "x.bson", progress=False)
    listing.write_text("id,category_id,file\n7,100,a1.jpg\n")
    with pytest.raises(DataError, match="no column _id, picture"):
        pack_listing(listing, images, tmp_path / "x.bson", progress=False)


def test_pack_skip_bad_counts_and_goes_on(catalogue, tmp_path):
    _, listing, images = catalogue
    _write(listing, "7,100,a1.jpg,x\n7,100,gone.jpg,x\n8,555,c.jpg,y\n3,102,b.png,z\n")
    rep = pack_listing(listing, images, tmp_path / "s.bson", PackOptions(skip_bad=True), progress=False)
    assert (rep.products, rep.pictures, rep.skipped_rows) == (2, 2, 2)
    assert any("gone.jpg" in p for p in rep.problems) and any("555" in p for p in rep.problems)
    assert Catalog.open(tmp_path / "s.bson").product_ids.tolist() == [7, 3]


def test_pack_refuses_a_different_taxonomy_beside_the_dump(catalogue, tmp_path):
    _, listing, images = catalogue
    out = tmp_path / "elsewhere"
    out.mkdir()
    (out / "category_names.csv").write_text(TAXONOMY.replace("Sandals", "Flip Flops"))
    with pytest.raises(DataError, match="different taxonomy"):
        pack_listing(listing, images, out / "t.bson", progress=False)
    assert not (out / "t.bson").exists()


def test_packed_jpeg_bytes_decode_like_the_source(catalogue, tmp_path):
    """What a model sees from a packed dump is what the listing's pictures hold."""
    _, listing, images = catalogue
    pack_listing(listing, images, tmp_path / "p.bson", progress=False)
    got = decode_picture(Catalog.open(tmp_path / "p.bson")[2].pictures[0])
    want = np.asarray(Image.open(io.BytesIO((images / "c.jpg").read_bytes())).convert("RGB"))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("labels", [True, False])
def test_pack_keeps_titles_and_the_index_reads_them_on_its_fast_path(catalogue, tmp_path, labels, monkeypatch):
    import etalage.catalog.bsonindex as bsonindex
    from etalage.catalog.info import describe_dump

    _, listing, images = catalogue
    _write(listing, "7,100,a1.jpg,Red tée\n7,100,a2.jpg,not the first row\n3,102,b.png,\"Sandals, blue\"\n"
                    "12,101,c.jpg,  \n")
    rep = pack_listing(listing, images, tmp_path / "t.bson", PackOptions(labels=labels), progress=False)
    assert rep.titled == 2, "an empty title is no title"
    docs = bson_docs(tmp_path / "t.bson")
    assert [d.get("title") for d in docs] == ["Red tée", "Sandals, blue", None]
    assert list(docs[0]) == (["_id", "imgs", "category_id", "title"] if labels else ["_id", "imgs", "title"])

    def no_walker(*args):
        raise AssertionError("a packed dump with titles left the fast path")

    monkeypatch.setattr(bsonindex, "_walk_document", no_walker)
    cat = Catalog(bsonindex.build_index(tmp_path / "t.bson"))
    assert cat.titles() == ["Red tée", "Sandals, blue", None]
    assert cat.titled.tolist() == [True, True, False]
    assert cat.title(1) == "Sandals, blue" and cat[0].title == "Red tée" and cat[2].title is None
    assert cat.titles([2, 0]) == [None, "Red tée"]
    assert Catalog.open(tmp_path / "t.bson").titles() == cat.titles(), "the loaded index has them too"
    assert describe_dump(tmp_path / "t.bson").titled == 2


def bson_docs(path):
    import bson

    with open(path, "rb") as fh:
        return list(bson.decode_file_iter(fh))


def test_a_listing_without_titles_packs_a_dump_that_reads_as_before(catalogue, tmp_path, capsys):
    _, listing, images = catalogue
    listing.write_text("_id,category_id,picture\n7,100,a1.jpg\n3,102,b.png\n")
    rep = pack_listing(listing, images, tmp_path / "n.bson", progress=False)
    assert rep.titled == 0
    assert all(list(d) == ["_id", "imgs", "category_id"] for d in bson_docs(tmp_path / "n.bson"))
    cat = Catalog.open(tmp_path / "n.bson")
    assert cat.index.titles is None and cat.titles() == [None, None] and not cat.titled.any()
    assert main(["info", str(tmp_path / "n.bson"), "-q"]) == 0
    assert "with a title          0" in capsys.readouterr().out
