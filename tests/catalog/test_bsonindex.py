import hashlib

import bson
import numpy as np
import pytest

from etalage.catalog.bsonindex import BsonIndex, build_index, hash_pictures, index_path_for, load_md5
from etalage.catalog.catalog import Catalog
from etalage.errors import DataError


def _docs(path):
    with open(path, "rb") as fh:
        return list(bson.decode_file_iter(fh))


@pytest.mark.parametrize("name", ["train.bson", "test.bson"])
def test_index_matches_bson_decoder(synth_dir, name):
    docs = _docs(synth_dir / name)
    cat = Catalog(BsonIndex.load(synth_dir / name))
    assert len(cat) == len(docs)
    for i, d in enumerate(docs):
        p = cat[i]
        assert p.product_id == d["_id"]
        assert p.category_id == d.get("category_id")
        assert p.pictures == [img["picture"] for img in d["imgs"]]
    assert cat.has_labels == (name == "train.bson")


def _write(path, docs):
    path.write_bytes(b"".join(bson.encode(d) for d in docs))
    return path


def test_other_layouts_take_the_general_walker(tmp_path):
    docs = [
        {"_id": 2**40, "imgs": [{"picture": b"abc"}], "category_id": 7},          # int64 id
        {"imgs": [{"picture": b"x", "w": 3}, {"picture": b"yz"}], "_id": 5},       # other order, extra field
        {"_id": 6, "name": "lamp", "imgs": [{"picture": b"q"}], "category_id": 2**35},
        {"_id": 8, "imgs": [{"picture": b"kk"}]},                                  # the fast path again
    ]
    cat = Catalog(build_index(_write(tmp_path / "odd.bson", docs)))
    assert [cat[i].product_id for i in range(4)] == [2**40, 5, 6, 8]
    assert [cat[i].category_id for i in range(4)] == [7, None, 2**35, None]
    assert [cat[i].pictures for i in range(4)] == [[b"abc"], [b"x", b"yz"], [b"q"], [b"kk"]]


BAD_DOCS = [
    ([{"imgs": [{"picture": b"a"}], "category_id": 1}], "document has no _id"),
    ([{"_id": 1, "category_id": 1}], "product 1 .*no imgs field"),
    ([{"_id": 3, "imgs": [], "category_id": 1}], "product 3 .*imgs is empty"),
    ([{"_id": 4, "imgs": [{"pic": b"a"}], "category_id": 1}], r"product 4 .*imgs\[0\] has no binary picture"),
    ([{"_id": "x", "imgs": [{"picture": b"a"}]}], "_id is BSON type 0x02"),
]


@pytest.mark.parametrize("docs, message", BAD_DOCS)
def test_malformed_documents_name_product_and_field(tmp_path, docs, message):
    path = _write(tmp_path / "bad.bson", [{"_id": 0, "imgs": [{"picture": b"ok"}], "category_id": 1}] + docs)
    with pytest.raises(DataError, match=message):
        build_index(path)
    assert not index_path_for(path).exists()


def test_truncated_and_non_bson_files(tmp_path, synth_dir):
    data = (synth_dir / "train.bson").read_bytes()
    trunc = tmp_path / "trunc.bson"
    trunc.write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError, match=r"trunc.bson: offset \d+: truncated document"):
        build_index(trunc)
    text = tmp_path / "notes.bson"
    text.write_text("this is a text file, not a dump\n" * 10)
    with pytest.raises(DataError, match="offset 0: not a BSON document"):
        build_index(text)
    empty = tmp_path / "empty.bson"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        build_index(empty)
    assert not list(tmp_path.glob("*.idx*")), "no index, not even a temporary file, is left behind"


def test_unknown_category_against_taxonomy(tmp_path):
    path = _write(tmp_path / "t.bson", [{"_id": 1, "imgs": [{"picture": b"a"}], "category_id": 10},
                                        {"_id": 2, "imgs": [{"picture": b"a"}], "category_id": 99}])
    with pytest.raises(DataError, match="product 2 .*category_id 99 is not in the taxonomy"):
        build_index(path, known_category_ids=np.array([10, 20]))
    build_index(path, known_category_ids=np.array([10, 20, 99]))


def test_stale_index_is_detected(tmp_path):
    path = _write(tmp_path / "s.bson", [{"_id": 1, "imgs": [{"picture": b"a"}], "category_id": 1}])
    build_index(path)
    BsonIndex.load(path)
    _write(path, [{"_id": i, "imgs": [{"picture": b"a"}], "category_id": 1} for i in (1, 2)])
    with pytest.raises(DataError, match="stale"):
        BsonIndex.load(path)
    assert len(BsonIndex.open(path)) == 2, "open() rebuilds a stale index"


def test_damaged_derived_files_are_rebuilt_never_trusted(tmp_path):
    path = _write(tmp_path / "d.bson", [{"_id": i, "imgs": [{"picture": bytes([i]) * 9}], "category_id": 1}
                                        for i in range(3)])
    idx = build_index(path)
    md5 = hash_pictures(path, workers=1)
    index_file = index_path_for(path)
    index_file.write_bytes(index_file.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match="unreadable index"):
        BsonIndex.load(path)
    assert np.array_equal(BsonIndex.open(path).products, idx.products)
    # the dump edited in place with the same picture count: the old hashes describe other pictures
    import os

    _write(path, [{"_id": i, "imgs": [{"picture": bytes([i + 7]) * 9}], "category_id": 1} for i in range(3)])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="stale"):
        load_md5(path)
    fresh = Catalog.open(path, md5=True).md5
    assert not np.array_equal(fresh, md5) and np.array_equal(load_md5(path), fresh)


def test_duplicate_ids_are_rejected_by_name(tmp_path):
    path = _write(tmp_path / "dup.bson", [{"_id": i, "imgs": [{"picture": b"a"}], "category_id": 1}
                                          for i in (5, 6, 5, 7, 6)])
    with pytest.raises(DataError, match=r"duplicate _id 5, 6 \(the second 5 at offset \d+\)"):
        build_index(path)
    assert not index_path_for(path).exists(), "nothing written"


def test_md5_matches_hashlib_with_any_worker_count(synth_dir, tmp_path):
    path = tmp_path / "train.bson"
    path.write_bytes((synth_dir / "train.bson").read_bytes())
    one = hash_pictures(path, workers=1)
    two = hash_pictures(path, workers=2)
    assert np.array_equal(one, two)
    assert np.array_equal(load_md5(path), two)
    cat = Catalog.open(path)
    expect = [hashlib.md5(p).digest() for i in range(len(cat)) for p in cat.picture_bytes(i)]
    assert [bytes(r) for r in one] == expect


def test_a_dump_without_titles_keeps_its_index_as_it_was(synth_dir):
    with np.load(index_path_for(synth_dir / "train.bson")) as z:
        assert sorted(z.files) == ["meta", "pictures", "products"], "no titles entry: same file as before"
    cat = Catalog.open(synth_dir / "train.bson")
    assert cat.index.titles is None and cat[0].title is None and not cat.titled.any()


def test_titles_in_other_layouts_and_bad_titles(tmp_path):
    docs = [
        {"_id": 2**40, "imgs": [{"picture": b"abc"}], "category_id": 7, "title": "Lamp"},   # int64 id: walker
        {"_id": 5, "title": "Vase, blue", "imgs": [{"picture": b"x"}]},                   # title first: walker
        {"_id": 6, "imgs": [{"picture": b"q"}], "title": ""},                            # empty: no title
        {"_id": 8, "imgs": [{"picture": b"kk"}], "category_id": 3, "title": "Ваза 花瓶"},  # fast path, UTF-8
    ]
    cat = Catalog(build_index(_write(tmp_path / "t.bson", docs)))
    assert cat.titles() == ["Lamp", "Vase, blue", None, "Ваза 花瓶"]
    assert [cat[i].category_id for i in range(4)] == [7, None, None, 3]
    assert [cat[i].pictures for i in range(4)] == [[b"abc"], [b"x"], [b"q"], [b"kk"]]
    _write(tmp_path / "bad.bson", [{"_id": 1, "imgs": [{"picture": b"a"}], "title": 12}])
    with pytest.raises(DataError, match="product 1 .*title is BSON type 0x10, expected a string"):
        build_index(tmp_path / "bad.bson")
