import numpy as np
import pytest

from etalage.catalog import Catalog, Taxonomy
from etalage.core.predict import CorePredictor
from etalage.errors import ConfigError
from etalage.fusion.table import CORE_FEATURE_NAMES, CandidateTable, candidates, core_features


@pytest.fixture(scope="module")
def ranking(tiny_run, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion_pred")
    return CorePredictor(tiny_run, workers=0).predict_catalog(Catalog.open(synth_dir / "test.bson"), out, topk=5,
                                                              picture_topk=3, progress=False)


def test_candidates_and_core_features(ranking, synth_dir):
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    n = len(ranking)
    extra_owner = np.array([0, 0, 1])
    extra_cls = np.array([ranking.topk_class[0, 0], 44 if 44 not in ranking.topk_class[0] else 43,
                          ranking.topk_class[1, 2]])
    owner, cls = candidates(ranking, extra_owner, extra_cls)
    assert np.all(np.diff(owner) >= 0), "rows of a product are contiguous"
    assert len(owner) == n * 5 + 1, "duplicates of the top-K are merged; one new class added"
    f = core_features(ranking, owner, cls, tax)
    assert set(f) == set(CORE_FEATURE_NAMES)
    table = CandidateTable(owner, cls, f)
    assert len(np.unique(table.owner)) == n, "every product has candidates"
    top = f["core_rank"] == 0
    assert np.allclose(f["core_prob"][top], ranking.topk_prob[:, 0].astype(np.float32))
    assert np.allclose(f["core_margin_to_top1"][top], 0)
    new = (owner == 0) & ~np.isin(cls, ranking.topk_class[0])
    assert new.sum() == 1 and f["core_prob"][new][0] == 0 and f["core_rank"][new][0] == 5
    assert np.all(f["picture_prob_max"] >= f["picture_prob_min"] - 1e-6)
    assert np.allclose(f["level1_mass"][top], ranking.level1_prob.astype(np.float32)[
        np.arange(n), tax.level1_of[ranking.topk_class[:, 0]]])
    assert np.all(f["level2_mass_topk"] >= f["core_prob"] - 1e-6)
    assert table.matrix(CORE_FEATURE_NAMES).shape == (len(owner), len(CORE_FEATURE_NAMES))
    with pytest.raises(ConfigError, match="hash_max_share"):
        table.matrix(("hash_max_share",))


def test_specialist_features_match_a_direct_lookup():
    from etalage.fusion.table import specialist_candidates, specialist_features
    from etalage.ocr.features import OCR_SUMMARY_NAMES
    from etalage.specialists.runner import SpecialistRanking

    rng = np.random.default_rng(0)
    n_products, k = 30, 4
    outs = []
    for name, pool in (("books", np.arange(10, 20)), ("music", np.arange(20, 26))):
        rows = np.sort(rng.choice(n_products, 12, replace=False))
        top = np.stack([rng.choice(pool, k, replace=False) for _ in rows]).astype(np.int32)
        score = -np.sort(-rng.random((len(rows), k)), axis=1).astype(np.float32)
        outs.append(SpecialistRanking(name, rows, top, score, rng.random((len(rows), 2)).astype(np.float32),
                                      ("a", "b"), rng.random((len(rows), 3)).astype(np.float32)))
    outs.append(SpecialistRanking("empty", np.zeros(0, np.int64), np.zeros((0, k), np.int32),
                                  np.zeros((0, k), np.float32), np.zeros((0, 1), np.float32), ("c",),
                                  np.zeros((0, 3), np.float32)))
    c_owner, c_cls = specialist_candidates(outs, k=2)
    assert len(c_owner) == 24 * 2 and set(c_cls) <= set(range(10, 26))
    owner = np.repeat(np.arange(n_products), 26)
    cls = np.tile(np.arange(26), n_products)
    f = specialist_features(outs, owner, cls, n_products)
    assert {"specialist_score", "specialist_rank", "books_a", "music_b", "empty_c", *OCR_SUMMARY_NAMES} <= set(f)
    for i in range(len(owner)):
        p, c = owner[i], cls[i]
        looked = [o for o in outs if p in o.rows]
        if not looked:
            assert np.isnan(f["specialist_score"][i]) and np.isnan(f["ocr_text_length"][i])
            continue
        best, rank = 0.0, float(k)
        for o in looked:
            j = int(np.flatnonzero(o.rows == p)[0])
            hit = np.flatnonzero(o.topk_class[j] == c)
            if len(hit):
                best, rank = max(best, o.topk_score[j, hit[0]]), min(rank, float(hit[0]))
        assert f["specialist_score"][i] == pytest.approx(best) and f["specialist_rank"][i] == rank
        own = [o for o in looked if o.name == "books"]
        if own:
            j = int(np.flatnonzero(own[0].rows == p)[0])
            hit = np.flatnonzero(own[0].topk_class[j] == c)
            assert f["books_score"][i] == pytest.approx(own[0].topk_score[j, hit[0]] if len(hit) else 0.0)
        else:
            assert np.isnan(f["books_score"][i])
        books = outs[0]
        if p in books.rows:
            assert f["books_a"][i] == books.features[np.flatnonzero(books.rows == p)[0], 0]
        else:
            assert np.isnan(f["books_a"][i])
    assert np.isnan(f["empty_c"]).all()


def test_group_score_sums_a_specialists_votes_in_the_candidates_group():
    from etalage.fusion.table import specialist_features
    from etalage.specialists.runner import SpecialistRanking

    level1_of = np.array([0, 0, 0, 1, 1, 2])          # classes 0-2 books, 3-4 music, 5 other
    media = SpecialistRanking("media", np.array([0, 2]), np.array([[3, 0, 4, -1], [1, 2, 0, 3]], np.int32),
                              np.array([[0.5, 0.3, 0.15, 0], [0.6, 0.2, 0.1, 0.05]], np.float32),
                              np.zeros((2, 0), np.float32), (), np.zeros((2, 3), np.float32))
    owner = np.repeat(np.arange(3), 6)
    cls = np.tile(np.arange(6), 3)
    f = specialist_features([media], owner, cls, 3, level1_of)
    group = f["media_group_score"].reshape(3, 6)
    assert group[0].tolist() == pytest.approx([0.3, 0.3, 0.3, 0.65, 0.65, 0.0]), "album first, book second"
    assert np.isnan(group[1]).all(), "not looked at: missing"
    assert group[2].tolist() == pytest.approx([0.9, 0.9, 0.9, 0.05, 0.05, 0.0])
    assert "media_group_score" not in specialist_features([media], owner, cls, 3), "only with the taxonomy"


def test_the_ocr_summary_comes_from_the_specialists_that_read():
    from etalage.fusion.table import specialist_features
    from etalage.specialists.runner import SpecialistRanking

    reader = SpecialistRanking("media", np.array([0, 1]), np.array([[0, 1], [1, 0]], np.int32),
                               np.full((2, 2), 0.5, np.float32), np.zeros((2, 0), np.float32), (),
                               np.array([[12, 3, 0.9], [0, 0, 0]], np.float32))
    titles = SpecialistRanking("title", np.array([1, 2]), np.array([[1, 0], [0, 1]], np.int32),
                               np.full((2, 2), 0.5, np.float32), np.zeros((2, 0), np.float32), (),
                               np.full((2, 3), np.nan, np.float32))
    f = specialist_features([reader, titles], np.arange(3), np.zeros(3, np.int32), 3)
    assert f["ocr_text_length"][:2].tolist() == [12, 0], "a product read with no text keeps its zeros"
    assert np.isnan(f["ocr_text_length"][2]), "looked at only by a specialist that does not read: missing"
