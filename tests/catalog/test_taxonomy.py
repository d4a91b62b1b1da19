import numpy as np
import pytest

from etalage.catalog.taxonomy import Taxonomy
from etalage.errors import TaxonomyError


def test_real_taxonomy_counts(shared_data):
    tax = Taxonomy.load(shared_data / "category_names.csv")
    assert (tax.n_classes, tax.n_level2, tax.n_level1) == (5270, 483, 49)
    assert len(tax.classes_under("LIBRAIRIE")) == 162
    assert len(tax.classes_under("MUSIQUE")) == 29
    assert np.all(np.diff(tax.category_ids) > 0), "class index follows ascending category id"


def test_lookups_both_ways(shared_data):
    tax = Taxonomy.load(shared_data / "category_names.csv")
    for idx in (0, 17, 5269):
        cid = tax.category_id_of(idx)
        assert tax.index_of(cid) == idx
    ids = tax.category_ids[[5, 3, 4000]]
    assert tax.indices_of(ids).tolist() == [5, 3, 4000]
    books = tax.classes_under("LIBRAIRIE")
    assert all(tax.names_of(int(c))[0] == "LIBRAIRIE" for c in books)
    with pytest.raises(TaxonomyError, match="category_id 12345 is not in the taxonomy"):
        tax.index_of(12345)
    with pytest.raises(TaxonomyError, match="no level-1 category named 'NOPE'"):
        tax.classes_under("NOPE")


def test_index_is_stable_under_row_order(tmp_path):
    rows = [(30, "B", "b1", "x"), (10, "A", "a1", "y"), (20, "A", "a2", "z")]
    a = Taxonomy.from_rows(rows)
    b = Taxonomy.from_rows(list(reversed(rows)))
    assert a.category_ids.tolist() == b.category_ids.tolist() == [10, 20, 30]
    assert a.level1_of.tolist() == [0, 0, 1]
    a.save(tmp_path / "t.csv")
    c = Taxonomy.load(tmp_path / "t.csv")
    assert c.category_ids.tolist() == [10, 20, 30] and c.level3_names == a.level3_names


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("id,a,b,c\n1,x,y,z\n", "line 1: expected header"),
    ("category_id,category_level1,category_level2,category_level3\nabc,x,y,z\n", "line 2: category_id 'abc'"),
    ("category_id,category_level1,category_level2,category_level3\n1,x,y\n", "line 2: expected 4 fields"),
    ("category_id,category_level1,category_level2,category_level3\n1,x,y,z\n1,x,y,w\n", "appears more than once"),
    ("category_id,category_level1,category_level2,category_level3\n", "no categories"),
])
def test_malformed_category_file(tmp_path, content, message):
    path = tmp_path / "category_names.csv"
    path.write_text(content)
    with pytest.raises(TaxonomyError, match=message):
        Taxonomy.load(path)


def test_unreadable_category_file(tmp_path):
    with pytest.raises(TaxonomyError, match="cannot read"):
        Taxonomy.load(tmp_path / "missing.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("category_id,category_level1,category_level2,category_level3\n1,\xe9,y,z\n".encode("latin-1"))
    with pytest.raises(TaxonomyError, match="not UTF-8"):
        Taxonomy.load(bad)
