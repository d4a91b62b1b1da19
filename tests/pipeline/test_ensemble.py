"""The second level over several core runs: fold runs trained with `train --folds`, fusion fitted over two
fold sets out of fold with embedding neighbours, submitted whole and in shards; the rules that refuse runs
which cannot score the same products honestly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from etalage.catalog import Catalog
from etalage.catalog.submission import read_id_category_csv
from etalage.cli import main


@pytest.fixture(scope="module")
def ensemble_fusion(fold_sets, fitted_pipeline, synth_dir):
    specs = fitted_pipeline[0] / "specs"
    out = fold_sets / "fusion"
    assert main(["fusion", "fit", "--run", str(fold_sets / "a"), "--run", str(fold_sets / "b"), "--train",
                 str(synth_dir / "train.bson"), "--specialists", str(specs), "--ocr-cache",
                 str(fitted_pipeline[0] / "ocr.sqlite"), "--neighbours", "4", "--without", "id", "--out", str(out),
                 "--workers", "0", "-q"]) == 0
    return out, specs


def test_fold_runs_hold_out_every_training_product_once(fold_sets, synth_dir):
    n = len(Catalog.open(synth_dir / "train.bson"))
    vals = [np.load(fold_sets / "a" / f"fold{i}" / "val_positions.npy") for i in range(2)]
    assert sorted(np.concatenate(vals).tolist()) == list(range(n))
    assert all((fold_sets / "a" / f"fold{i}" / "model.pt").exists() for i in range(2))
    same = [np.load(fold_sets / "b" / f"fold{i}" / "val_positions.npy") for i in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(vals, same, strict=True)), "one split for both sets"


def test_fusion_learns_out_of_fold_from_all_but_the_specialists_products(ensemble_fusion, synth_dir):
    out, specs = ensemble_fusion
    fit = json.loads((out / "fit_report.json").read_text())
    n = len(Catalog.open(synth_dir / "train.bson"))
    trained = set()
    for name in ("books", "music"):
        trained |= set(np.load(specs / name / "train_positions.npy").tolist())
    assert fit["products"] == n - len(trained) and fit["share_of_training_products"] > 0.8
    features = json.loads((out / "fusion.json").read_text())["features"]
    for name in ("run_a_prob", "run_b_rank", "ens_geomean_prob", "ens_top1_votes", "emb_vote", "emb_best_cos"):
        assert name in features, name
    assert fit["signals_left_out"] == ["id"] and not [f for f in features if f.startswith("id_")], "--without id"
    assert "hash_max_share" in features, "the other signals stay"
    base = fit["baselines"]
    assert set(base["runs"]) == {"a", "b"} and 0 <= base["weighted_geomean"] <= 1
    assert set(fit["core_top1_by_model"]) == {"a", "b"}
    assert (out / "neighbours" / "run0.faiss").exists() and (out / "neighbours" / "run1.faiss").exists()


def test_ensemble_submission_whole_equals_shards(ensemble_fusion, fitted_pipeline, synth_dir, tmp_path):
    out, specs = ensemble_fusion
    common = ["--fusion", str(out), "--data", str(synth_dir / "test.bson"), "--ocr-cache",
              str(fitted_pipeline[0] / "ocr.sqlite"), "--workers", "0", "-q"]
    whole = tmp_path / "whole.csv"
    assert main(["submit", *common, "--out", str(whole)]) == 0
    ids, cats = read_id_category_csv(whole)
    assert np.array_equal(ids, Catalog.open(synth_dir / "test.bson").product_ids)
    sharded = tmp_path / "sharded.csv"
    for i in range(2):
        assert main(["submit", *common, "--out", str(sharded), "--chunk", "30", "--shard", f"{i}/2"]) == 0
    assert sharded.read_text() == whole.read_text()
    work = tmp_path / "whole_work"
    assert (work / "core_runs" / "a" / "run1").is_dir() and (work / "core" / "meta.json").exists()


def test_core_only_submission_averages_the_fold_runs(fold_sets, synth_dir, tmp_path):
    out = tmp_path / "core.csv"
    assert main(["submit", "--run", str(fold_sets / "a"), "--data", str(synth_dir / "test.bson"), "--out", str(out),
                 "--workers", "0", "-q"]) == 0
    ids, _ = read_id_category_csv(out)
    assert len(ids) == len(Catalog.open(synth_dir / "test.bson"))
    assert (tmp_path / "core_core_pred" / "core_runs" / "a" / "run0").is_dir()


def test_runs_that_cannot_be_combined_are_one_line(fold_sets, tiny_run, synth_dir, tmp_path, capsys):
    argv = ["fusion", "fit", "--run", str(tiny_run), "--run", str(fold_sets / "a"), "--train",
            str(synth_dir / "train.bson"), "--out", str(tmp_path / "f"), "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a single run" in err[0] and "a fold set" in err[0]


def test_id_order_share_tells_ids_numbered_by_category_and_without_names_bad_signals():
    from etalage.errors import ConfigError
    from etalage.fusion.signals import check_without, id_order_share

    labels = np.repeat(np.arange(20), 50)
    assert id_order_share(np.arange(1000), labels) > 0.95, "numbered category by category"
    shuffled = np.random.default_rng(0).permutation(1000)
    assert id_order_share(shuffled, labels) < 0.15, "ids carrying no order: about 1 / 20"
    assert check_without(["id", " hash", "id"]) == ("id", "hash")
    with pytest.raises(ConfigError, match="--without idd"):
        check_without(["idd"])


def test_fold_runs_given_one_by_one_name_the_fold_set_they_are(fold_sets, synth_dir, tmp_path, capsys):
    """Folds trained on separate machines (`--fold i --out runs/fI`) and passed as separate --run: one line
    saying how to make them one model, not the old "they hold out different products"."""
    import shutil

    for i in range(2):
        shutil.copytree(fold_sets / "a" / f"fold{i}", tmp_path / f"f{i}")
    argv = ["audit", "--run", str(tmp_path / "f0"), "--run", str(tmp_path / "f1"), "--data",
            str(synth_dir / "train.bson"), "--out", str(tmp_path / "audit"), "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "fold runs of a 2-fold split trained one by one" in err and f"--run {tmp_path / 'folds'}" in err
    assert f"mv {tmp_path / 'f1'} {tmp_path / 'folds'}/fold1" in err
