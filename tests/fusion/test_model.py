"""Fusion end to end on the session catalogue: trained on the core's held-out products, it must
beat the core on the test set, where product-id runs and duplicate pictures carry signal."""

import numpy as np
import pytest

from etalage.catalog import Catalog, Taxonomy
from etalage.catalog.submission import read_id_category_csv
from etalage.core.predict import CorePredictor
from etalage.errors import ConfigError
from etalage.fusion.model import Evidence, FusionModel, assemble, feature_groups
from etalage.fusion.signals import TrainingSignals
from etalage.fusion.table import CORE_FEATURE_NAMES, CandidateTable


def _pictures(catalog, md5, rows_positions):
    first = catalog.index.products["first_picture"]
    counts = catalog.n_pictures[rows_positions].astype(np.int64)
    owner = np.repeat(np.arange(len(rows_positions)), counts)
    pic_rows = np.concatenate([np.arange(first[p], first[p] + c) for p, c in zip(rows_positions, counts, strict=True)])
    return md5[pic_rows], owner


@pytest.mark.parametrize("kind", ["ranker", "binary"])
def test_fusion_beats_the_core_on_test(kind, tiny_run, synth_dir, tmp_path):
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    train = Catalog.open(synth_dir / "train.bson")
    test = Catalog.open(synth_dir / "test.bson")
    labels = tax.indices_of(train.category_ids)
    train_md5 = _md5(train, tmp_path)
    signals = TrainingSignals.build(train.product_ids, labels, train_md5, train.n_pictures, tax.n_classes, [5, 20])
    predictor = CorePredictor(tiny_run, workers=0)
    val = np.sort(np.load(tiny_run / "val_positions.npy"))
    rank_train = predictor.predict_catalog(train, tmp_path / "p_train", topk=5, picture_topk=3, progress=False)
    rank_val = rank_train.take(val)
    md5_v, owner_v = _pictures(train, train_md5, val)
    table_v = assemble(rank_val, tax, signals, Evidence(md5_v, owner_v), own_classes=labels[val])
    names = tuple(CORE_FEATURE_NAMES) + signals.feature_names
    groups = feature_groups(tuple(table_v.features))
    assert groups["core"] == list(CORE_FEATURE_NAMES) and groups["id"][-1] == "class_frequency"
    assert set(groups["hash"]) == {"hash_pictures_with_class", "hash_max_share", "hash_min_classes"}
    assert "specialist_score" in groups["specialists"] and np.isnan(table_v.features["specialist_score"]).all(), \
        "no specialist looked: missing, not zero"
    model = FusionModel.fit(table_v, labels[val], names, kind=kind, valid_fraction=0.25)
    rank_test = predictor.predict_catalog(test, tmp_path / "p_test", topk=5, picture_topk=3, progress=False)
    test_md5 = _md5(test, tmp_path)
    md5_t, owner_t = _pictures(test, test_md5, np.arange(len(test)))
    table_t = assemble(rank_test, tax, signals, Evidence(md5_t, owner_t))
    truth = tax.indices_of(read_id_category_csv(synth_dir / "test_labels.csv")[1])
    fused = model.predict(table_t, len(test))
    core_acc = (rank_test.top1() == truth).mean()
    fused_acc = (fused == truth).mean()
    print(f"{kind}: core {core_acc:.3f} fusion {fused_acc:.3f}")
    assert fused_acc > core_acc, f"fusion {fused_acc:.3f} vs core {core_acc:.3f}"
    classes, scores = model.rank(table_t, len(test), 3)
    assert np.array_equal(classes[:, 0], fused) and np.all(np.diff(scores, axis=1) <= 0)
    importance = model.importance()
    assert set(importance) == set(names) and max(importance.values()) > 0
    model.save(tmp_path / "fusion")
    again = FusionModel.load(tmp_path / "fusion", expected_features=tuple(table_t.features))
    assert np.array_equal(again.predict(table_t, len(test)), fused)
    with pytest.raises(ConfigError, match="needs features the table lacks"):
        FusionModel.load(tmp_path / "fusion", expected_features=CORE_FEATURE_NAMES)
    core_only = CandidateTable(table_t.owner, table_t.classes, {n: table_t.features[n] for n in CORE_FEATURE_NAMES})
    with pytest.raises(ConfigError, match="etalage fusion fit"):
        again.predict(core_only, len(test))


def _md5(catalog, tmp_path):
    import hashlib

    return np.array([np.frombuffer(hashlib.md5(p).digest(), np.uint8) for i in range(len(catalog))
                     for p in catalog.picture_bytes(i)])
