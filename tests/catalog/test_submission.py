import numpy as np
import pytest

from etalage.catalog import Taxonomy
from etalage.catalog.submission import read_id_category_csv, score_submission, write_submission
from etalage.errors import DataError


def test_score_counts_correct_products_per_level1(synth_dir, tmp_path):
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    ids, cats = read_id_category_csv(synth_dir / "test_labels.csv")
    pred = cats.copy()
    wrong = np.arange(len(ids)) % 4 == 0
    pred[wrong] = np.where(cats[wrong] == tax.category_ids[0], tax.category_ids[1], tax.category_ids[0])
    write_submission(tmp_path / "s.csv", ids, pred, expected_ids=ids, taxonomy=tax)
    s = score_submission(tmp_path / "s.csv", synth_dir / "test_labels.csv", tax)
    assert s.n == len(ids)
    assert s.accuracy == pytest.approx(1 - wrong.mean())
    assert sum(n for _, n in s.per_level1.values()) == len(ids)
    l1 = tax.level1_of[tax.indices_of(cats)]
    g = int(l1[0])
    m = l1 == g
    assert s.per_level1[tax.level1_names[g]][0] == pytest.approx(1 - wrong[m].mean())


def test_submission_validation(tmp_path, synth_dir):
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    ids = np.array([1, 2, 3])
    good = np.repeat(tax.category_ids[0], 3)
    with pytest.raises(DataError, match="product 3 is missing"):
        write_submission(tmp_path / "s.csv", ids[:2], good[:2], expected_ids=ids)
    with pytest.raises(Exception, match="not in the taxonomy"):
        write_submission(tmp_path / "s.csv", ids, np.array([1, 2, 3]), expected_ids=ids, taxonomy=tax)
    assert not (tmp_path / "s.csv").exists()
    (tmp_path / "short.csv").write_text("_id,category_id\n1,5\n")
    (tmp_path / "labels.csv").write_text("_id,category_id\n1,5\n2,6\n")
    with pytest.raises(DataError, match="product 2 of .* has no prediction"):
        score_submission(tmp_path / "short.csv", tmp_path / "labels.csv")
    (tmp_path / "dup.csv").write_text("_id,category_id\n1,5\n1,6\n")
    with pytest.raises(DataError, match="product 1 appears more than once"):
        read_id_category_csv(tmp_path / "dup.csv")
    (tmp_path / "junk.csv").write_text("_id,category_id\n1,abc\n")
    with pytest.raises(DataError, match="line 2"):
        read_id_category_csv(tmp_path / "junk.csv")


def test_an_answer_key_is_aligned_with_the_products_by_id(tmp_path, synth_dir):
    from etalage.catalog.submission import align_by_id, answer_key_classes

    values, found = align_by_id(np.array([30, 10, 20]), np.array([3, 1, 2]), np.array([10, 40, 30]))
    assert values.tolist() == [1, 0, 3] and found.tolist() == [True, False, True]
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    c = tax.category_ids
    (tmp_path / "key.csv").write_text(f"_id,category_id\n30,{c[3]}\n10,{c[1]}\n")
    assert answer_key_classes(tmp_path / "key.csv", np.array([10, 20, 30]), tax).tolist() == [1, -1, 3]
    with pytest.raises(DataError, match="product 20 has no category_id"):
        answer_key_classes(tmp_path / "key.csv", np.array([10, 20, 30]), tax, complete=True)
