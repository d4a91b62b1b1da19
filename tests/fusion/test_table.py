import numpy as np
import pytest
from etalage.catalog import Catalog, Taxonomy
from etalage.core.predict import CorePredictor
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
    assert table.groups.sum() == len(owner) and len(table.groups) == n
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
    with pytest.raises(KeyError, match="hash_max_share"):
        table.matrix(("hash_max_share",))
