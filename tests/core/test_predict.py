import numpy as np
import pytest

from etalage.catalog import Catalog
from etalage.core.predict import CorePredictor
from etalage.core.ranking import CoreRanking
from etalage.errors import ConfigError, StageOutputError


@pytest.fixture(scope="module")
def full(tiny_run, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "full"
    CorePredictor(tiny_run, workers=0, batch_size=16).predict_catalog(
        Catalog.open(synth_dir / "test.bson"), out, topk=5, picture_topk=3, chunk=32, embedding=True, progress=False)
    return CoreRanking.load(out)


def test_ranking_shapes_and_dtypes(full, synth_dir):
    cat = Catalog.open(synth_dir / "test.bson")
    n = len(cat)
    assert np.array_equal(full.product_ids, cat.product_ids)
    assert full.topk_class.shape == (n, 5) and full.topk_class.dtype == np.int32
    assert full.topk_prob.dtype == np.float16 and full.level1_prob.dtype == np.float16
    assert np.all(np.diff(full.topk_prob.astype(np.float32), axis=1) <= 1e-3), "best first"
    assert np.all(full.topk_prob.astype(np.float32).sum(1) <= 1.01)
    assert np.allclose(full.level1_prob.astype(np.float32).sum(1), 1, atol=0.01)
    assert np.array_equal(full.n_pictures, cat.n_pictures)
    has_pic = (full.picture_topk_class[:, :, 0] >= 0).sum(1)
    assert np.array_equal(has_pic, np.minimum(cat.n_pictures, 4))
    assert full.embedding.shape[0] == n and full.embedding.dtype == np.float16


def test_shards_and_resume_match_a_single_run(full, tiny_run, synth_dir, tmp_path):
    cat = Catalog.open(synth_dir / "test.bson")
    predictor = CorePredictor(tiny_run, workers=0, batch_size=16)
    kw = dict(topk=5, picture_topk=3, chunk=32, embedding=True, progress=False)
    assert predictor.predict_catalog(cat, tmp_path, shard=(0, 2), **kw) is None
    with pytest.raises(StageOutputError, match="are missing .*run `etalage predict --run"):
        CoreRanking.load(tmp_path)
    ranking = predictor.predict_catalog(cat, tmp_path, shard=(1, 2), **kw)
    assert np.array_equal(ranking.topk_class, full.topk_class)
    # a kill loses at most the chunk being written: only missing chunks are redone
    parts = sorted(tmp_path.glob("part-*.npz"))
    parts[1].unlink()
    stamps = {p: p.stat().st_mtime_ns for p in parts if p.exists()}
    again = predictor.predict_catalog(cat, tmp_path, **kw)
    assert np.array_equal(again.topk_class, full.topk_class)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    with pytest.raises(ConfigError, match="other settings .*topk"):
        predictor.predict_catalog(cat, tmp_path, **{**kw, "topk": 7})


def test_flip_tta_and_missing_outputs(tiny_run, synth_dir, tmp_path):
    cat = Catalog.open(synth_dir / "test.bson")
    r = CorePredictor(tiny_run, workers=0, tta="flip").predict_catalog(cat, tmp_path / "f", topk=3, progress=False)
    assert len(r) == len(cat)
    with pytest.raises(StageOutputError, match="no core predictions; run `etalage predict"):
        CoreRanking.load(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="no trained model"):
        CorePredictor(tmp_path)
