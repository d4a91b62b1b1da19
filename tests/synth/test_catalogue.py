import csv
import hashlib
from collections import defaultdict

import bson
import numpy as np
import pytest

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.pictures import decode_picture
from etalage.synth import SynthConfig, write_synthetic_catalogue


def _ids(path):
    with open(path, newline="") as fh:
        return [int(r["_id"]) for r in csv.DictReader(fh)]


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_synthetic_catalogue(a, SynthConfig(products=60, seed=11, workers=1))
    write_synthetic_catalogue(b, SynthConfig(products=60, seed=11, workers=2))
    write_synthetic_catalogue(c, SynthConfig(products=60, seed=12, workers=1))
    for name in ("train.bson", "test.bson", "test_labels.csv", "category_names.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.bson").read_bytes() != (c / "train.bson").read_bytes()


def test_files_have_the_kaggle_shape(synth_dir):
    train = Catalog.open(synth_dir / "train.bson")
    test = Catalog.open(synth_dir / "test.bson")
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    assert train.has_labels and not test.has_labels
    assert {"LIBRAIRIE", "MUSIQUE"} <= set(tax.level1_names)
    tax.indices_of(train.category_ids)  # every category is in the taxonomy
    counts = np.bincount(np.concatenate([train.n_pictures, test.n_pictures]))
    assert counts[0] == 0 and len(counts) == 5 and counts[1] == counts.max(), "1-4 pictures, mostly one"
    assert np.all(np.diff(train.product_ids) > 0), "files are in _id order"
    with open(synth_dir / "test.bson", "rb") as fh:
        assert all("category_id" not in d for d in bson.decode_file_iter(fh))
    assert _ids(synth_dir / "test_labels.csv") == test.product_ids.tolist()
    assert _ids(synth_dir / "sample_submission.csv") == test.product_ids.tolist()
    pic = decode_picture(train[0].pictures[0])
    assert pic.shape == (180, 180, 3)
    sizes = np.bincount(tax.indices_of(train.category_ids))
    assert sizes.max() >= 8 * max(sizes[sizes > 0].min(), 1), "long-tailed class sizes"


def _class_of_picture(cat):
    classes = defaultdict(set)
    for i in range(len(cat)):
        p = cat[i]
        for pic in p.pictures:
            classes[hashlib.md5(pic).hexdigest()].add(p.category_id)
    return classes


def test_duplicates_stay_in_class_and_placeholders_span_classes(tmp_path):
    write_synthetic_catalogue(tmp_path, SynthConfig(products=300, seed=2, duplicate_rate=0.3, placeholder_rate=0.1,
                                                    workers=2))
    classes = _class_of_picture(Catalog.open(tmp_path / "train.bson"))
    spans = sorted((len(v) for v in classes.values()), reverse=True)
    assert spans[0] >= 5, "placeholders are shared by many classes"
    assert sum(1 for s in spans if s > 1) <= 3, "only the three placeholders cross classes"
    test = Catalog.open(tmp_path / "test.bson")
    shared = sum(any(hashlib.md5(p).hexdigest() in classes for p in test[i].pictures) for i in range(len(test)))
    assert shared / len(test) > 0.2, "test products share pictures with training ones"


def _mean_run(labels):
    changes = np.count_nonzero(labels[1:] != labels[:-1])
    return len(labels) / (changes + 1)


def test_id_runs_follow_the_knob(tmp_path):
    runs = {}
    for k in (1.0, 20.0):
        out = tmp_path / f"r{k}"
        write_synthetic_catalogue(out, SynthConfig(products=400, seed=4, id_run_length=k, test_fraction=0.0,
                                                   workers=2))
        runs[k] = _mean_run(Catalog.open(out / "train.bson").category_ids)
    assert runs[20.0] > 5 * runs[1.0]


def test_real_taxonomy_subset(tmp_path, shared_data):
    tax = Taxonomy.load(shared_data / "category_names.csv")
    write_synthetic_catalogue(tmp_path, SynthConfig(products=80, seed=1, classes=25, workers=1), taxonomy=tax)
    cats = Catalog.open(tmp_path / "train.bson").category_ids
    assert len(np.unique(cats)) <= 25
    tax.indices_of(cats)
    assert Taxonomy.load(tmp_path / "category_names.csv").n_classes == 5270


def test_bad_config():
    with pytest.raises(ValueError, match="noise must be in"):
        SynthConfig(noise=2.0).check()
    with pytest.raises(ValueError, match="products must be"):
        SynthConfig(products=0).check()


def test_neighbouring_ids_share_a_class_about_as_often_as_independence(tmp_path):
    """As in Cdiscount's real sample (17% of neighbours share a class, what independence gives there):
    with the default settings the id order carries no short-range class information."""
    write_synthetic_catalogue(tmp_path, SynthConfig(products=2000, seed=7, workers=2))
    train = Catalog.open(tmp_path / "train.bson")
    key_ids, key_cats = np.loadtxt(tmp_path / "test_labels.csv", delimiter=",", skiprows=1, dtype=np.int64).T
    ids = np.concatenate([train.product_ids, key_ids])
    cats = np.concatenate([train.category_ids, key_cats])[np.argsort(ids)]
    agreement = float((cats[1:] == cats[:-1]).mean())
    shares = np.unique(cats, return_counts=True)[1] / len(cats)
    independence = float((shares ** 2).sum())
    assert agreement <= 1.5 * independence, (agreement, independence)
    runs = SynthConfig(products=2000, seed=7, id_run_length=8.0, workers=2)
    write_synthetic_catalogue(tmp_path / "runs", runs)
    run_cats = Catalog.open(tmp_path / "runs" / "train.bson").category_ids
    assert (run_cats[1:] == run_cats[:-1]).mean() > 3 * independence, "the knob still makes runs"


def test_real_covers_stand_for_books_and_albums(tmp_path, shared_data):
    from etalage.synth.real_covers import GENRE_CLASSES

    cfg = SynthConfig(products=300, seed=2, workers=2, book_covers=str(shared_data / "real-covers" / "books-dev"),
                      music_covers=str(shared_data / "real-covers" / "albums-dev"))
    summary = write_synthetic_catalogue(tmp_path, cfg)
    tax = Taxonomy.load(tmp_path / "category_names.csv")
    for group in ("LIBRAIRIE", "MUSIQUE"):
        names = {tax.names_of(c) for c in tax.classes_under(group)}
        assert names == {v for v in GENRE_CLASSES.values() if v[0] == group}, "real Cdiscount classes"
    train = Catalog.open(tmp_path / "train.bson")
    l1 = tax.level1_of[tax.indices_of(train.category_ids)]
    covers = [i for i in range(len(train)) if tax.level1_names[l1[i]] in ("LIBRAIRIE", "MUSIQUE")]
    assert summary["real_covers"] >= len(covers) > 20
    pictures = [train[i].pictures for i in covers]
    assert all(len(p) == 1 for p in pictures), "one cover per product"
    assert len({hashlib.md5(p[0]).hexdigest() for p in pictures}) == len(pictures), "no cover used twice"
    assert decode_picture(pictures[0][0]).shape == (180, 180, 3)


def test_titles_are_noisy_class_words_from_a_stream_of_their_own(tmp_path):
    plain, titled = tmp_path / "plain", tmp_path / "titled"
    write_synthetic_catalogue(plain, SynthConfig(products=200, seed=5, workers=1))
    summary = write_synthetic_catalogue(titled, SynthConfig(products=200, seed=5, workers=1, titles=0.8))
    for name in ("train.bson", "test.bson"):
        a, b = Catalog.open(plain / name), Catalog.open(titled / name)
        assert a.index.titles is None, "no titles unless asked"
        assert [p.pictures for p in a] == [p.pictures for p in b], "the pictures are the same bytes"
        assert (a.product_ids == b.product_ids).all() and (a.category_ids == b.category_ids).all()
    train = Catalog.open(titled / "train.bson")
    share = train.titled.mean()
    assert 0.65 < share < 0.95, f"about 80% of products titled, got {share:.2f}"
    assert summary["titles"] == train.titled.sum() + Catalog.open(titled / "test.bson").titled.sum()
    # the class's words make the title: products of one class share words far more than of two classes
    words = {}
    for title, cat in zip(train.titles(), train.category_ids.tolist(), strict=True):
        if title:
            words.setdefault(cat, []).append(set(title.lower().split()))
    big = sorted(words, key=lambda c: -len(words[c]))[:2]
    same = np.mean([len(x & y) > 0 for x in words[big[0]] for y in words[big[0]] if x is not y])
    other = np.mean([len(x & y) > 0 for x in words[big[0]] for y in words[big[1]]])
    assert same > other + 0.2, (same, other)


def test_synth_titles_option(tmp_path):
    from etalage.cli import main

    assert main(["synth", "--out", str(tmp_path / "a"), "--products", "60", "--workers", "1", "--titles", "-q"]) == 0
    assert main(["synth", "--out", str(tmp_path / "b"), "--products", "60", "--workers", "1", "--titles", "1",
                 "-q"]) == 0
    assert 0.5 < Catalog.open(tmp_path / "a" / "train.bson").titled.mean() < 1
    assert Catalog.open(tmp_path / "b" / "train.bson").titled.all()
