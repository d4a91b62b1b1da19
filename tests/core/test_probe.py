"""The run's own linear probe: near-duplicates held out together, heads that start as the probe, the probe kept
as model.pt when it validates better (and loaded and predicted like any run), and runs that resume exactly.

"Pretrained" weights here are a seeded random ``test_efficientnet`` saved to a file (``--weights PATH``): the
probe path runs for any weights that are not trained from scratch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bson
import numpy as np
import pytest
import torch

from etalage.catalog import Catalog
from etalage.catalog.bsonindex import build_index
from etalage.catalog.split import grouped_validation_split, near_duplicate_groups, validation_split
from etalage.cli import main
from etalage.core import probe as probe_module
from etalage.core import train as train_module
from etalage.core.config import TrainConfig
from etalage.core.data import PictureTransform
from etalage.core.predict import CorePredictor
from etalage.core.probe import fit_linear_head, kept_network, pooled_features
from etalage.core.train import train
from etalage.errors import ConfigError
from tests.conftest import TINY

# the network sees what the probe saw: same side, whole pictures at evaluation
PROBED = {**TINY, "picture_size": 64, "probe_size": 64, "val_groups": 0.0}


@pytest.fixture(scope="module", autouse=True)
def quick_probe():
    """Features of a random backbone are nearly collinear (median nearest-neighbour cosine 0.99), so L-BFGS would
    run to its 1,000 iterations (real photos' features converge in about 30); 60 are enough to test with."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe_module, "PROBE_MAX_ITER", 60)
        yield


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def _cfg(synth_dir, out, weights_file, **over) -> TrainConfig:
    return TrainConfig(**{**PROBED, "train": str(synth_dir / "train.bson"), "out": str(out), "weights": weights_file,
                          **over})


def _metrics(run) -> list[dict]:
    return [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()]


# -- the splits --------------------------------------------------------------------------------------------


def test_near_duplicates_chain_within_a_class():
    x = np.array([[1, 0], [0.95, 0.31], [0.81, 0.59], [0, 1], [1, 0.01]], np.float32)  # 0-1-2 a chain, 3 alone
    labels = np.array([0, 0, 0, 0, 1])
    groups = near_duplicate_groups(x, 0.94, labels, chunk=2)
    assert groups[0] == groups[1] == groups[2] != groups[3]
    assert groups[4] != groups[0], "a look-alike of another class is not grouped"
    assert near_duplicate_groups(x, 0.94)[4] == near_duplicate_groups(x, 0.94)[0], "without labels it is"


def test_grouped_split_never_splits_a_group_and_stays_stratified():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 40)
    groups = np.arange(len(labels))
    groups[:200] = np.repeat(np.arange(50), 4)  # classes 0-4 in groups of 4; 5-9 single products
    groups[0:40] = 10_000                       # class 0: one group of all its 40 products
    order = rng.permutation(len(labels))
    labels, groups = labels[order], groups[order]
    mask = grouped_validation_split(labels, groups, 0.2, seed=3)
    for g in np.unique(groups):
        assert len(np.unique(mask[groups == g])) == 1, f"group {g} split"
    per_class = np.bincount(labels[mask], minlength=10)
    assert per_class[0] == 0, "a group as large as its class stays in training"
    assert list(per_class[1:5]) == [8] * 4 and list(per_class[5:]) == [8] * 5
    assert np.array_equal(mask, grouped_validation_split(labels, groups, 0.2, seed=3))
    singletons = grouped_validation_split(labels, np.arange(len(labels)), 0.2, seed=1)
    assert np.array_equal(np.bincount(labels[singletons]), np.bincount(labels[validation_split(labels, 0.2, 1)]))


def test_fold_runs_keep_folds_stratified_by_class():
    from etalage.catalog.split import fold_split
    from etalage.core.probe import validation_mask

    labels = np.repeat(np.arange(6), 10)
    features = np.ones((60, 4), np.float32)  # every product a near-duplicate of every other of its class
    cfg = TrainConfig(train="x", out="y", folds=5, fold=2)
    assert np.array_equal(validation_mask(cfg, labels, features), fold_split(labels, 5, 0) == 2)
    grouped = validation_mask(TrainConfig(train="x", out="y", val_fraction=0.2), labels, features)
    assert not grouped.any(), "each class one group as large as the class: nothing to hold out"


@pytest.fixture(scope="module")
def duplicated_catalogue(synth_dir, tmp_path_factory) -> Path:
    """The synthetic training products, and 40 of them twice more under new ids (their pictures copied)."""
    out = tmp_path_factory.mktemp("dups")
    shutil.copy(synth_dir / "category_names.csv", out / "category_names.csv")
    docs = list(bson.decode_file_iter(open(synth_dir / "train.bson", "rb")))
    copies = [{**d, "_id": 10_000_000 + 1000 * k + i} for i, d in enumerate(docs[:40]) for k in (1, 2)]
    (out / "train.bson").write_bytes(b"".join(bson.encode(d) for d in docs + copies))
    build_index(out / "train.bson")
    return out


def test_duplicated_products_are_held_out_together(duplicated_catalogue, weights_file, tmp_path):
    cfg = _cfg(duplicated_catalogue, tmp_path / "run", weights_file, val_groups=0.999, probe_init=False,
               keep_probe=False, stop_after_steps=1)
    assert train(cfg, progress=False).status == "paused"
    held = np.zeros(len(Catalog.open(duplicated_catalogue / "train.bson")), bool)
    held[np.load(tmp_path / "run" / "val_positions.npy")] = True
    n = len(held) - 80
    sets = [held[[i, n + 2 * i, n + 2 * i + 1]] for i in range(40)]  # a product and its two copies
    assert all(s.all() or not s.any() for s in sets), "copies of one product on both sides"
    assert any(s.all() for s in sets), "no copied product held out at all: the test proves nothing"


# -- the probe ---------------------------------------------------------------------------------------------


def test_linear_head_is_scikit_learns_probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype(np.float32) * 5 + 3
    y = (x[:, 0] > 3).astype(int) + 2 * (x[:, 1] > 3)   # classes 0..3 of 6 (4, 5 never seen)
    weight, bias = fit_linear_head(x, y, 6)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(x), y)
    logits = x @ weight.T + bias
    assert np.allclose(logits[:, :4], clf.decision_function(scaler.transform(x)), atol=1e-3)
    assert (logits[:, 4:] < -1000).all(), "classes never seen are never chosen"
    y2 = (x[:, 0] + x[:, 2] > 6).astype(int)
    w2, b2 = fit_linear_head(x, y2, 2)   # scikit-learn keeps one row for two classes
    clf2 = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(x), y2)
    assert np.array_equal((x @ w2.T + b2).argmax(1), clf2.predict(scaler.transform(x)))
    w1, b1 = fit_linear_head(x, np.full(300, 2), 3)              # one class: always it
    assert ((x @ w1.T + b1).argmax(1) == 2).all()


def test_heads_start_as_the_probe(synth_dir, weights_file, tmp_path):
    with torch.random.fork_rng(devices=[]):
        trainer = train_module._Trainer(_cfg(synth_dir, tmp_path / "run", weights_file, keep_probe=False), False, False)
    probe, model = trainer.probe, trainer.model
    assert probe is not None and probe.side == 64
    positions = trainer.train_pos[:96]
    feats = pooled_features(model.backbone, trainer.catalog, positions, PictureTransform(64, 64, "letterbox", "none"),
                            trainer.device, (trainer.spec["mean"], trainer.spec["std"]),
                            probe_module.FeaturePass(32, trainer.channels_last))
    expected = probe.leaf_logits(feats)
    model.eval()
    from etalage.core.data import ProductDataset, collate, to_device

    loader = torch.utils.data.DataLoader(ProductDataset(trainer.catalog, positions, None, PictureTransform(64, 64)),
                                         batch_size=96, collate_fn=collate)
    batch = next(iter(loader))
    with torch.no_grad():
        x = to_device(batch, trainer.device, trainer.spec["mean"], trainer.spec["std"], trainer.channels_last)
        got = model(x, batch.picture_product, batch.n_products)["logits"].numpy()
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-2)
    assert np.array_equal(got.argmax(1), expected.argmax(1)), "the network's first predictions are the probe's"
    assert (expected.argmax(1) == trainer.labels[positions]).mean() > 0.3, "a probe worth starting from"
    assert (tmp_path / "run" / "checkpoint.pt").exists(), "checkpointed once the probe is fitted"


@pytest.fixture(scope="module")
def probe_kept_run(synth_dir, weights_file, tmp_path_factory) -> Path:
    """A fine-tune ruined by a huge learning rate: the probe validates better and is kept."""
    out = tmp_path_factory.mktemp("kept") / "run"
    res = train(_cfg(synth_dir, out, weights_file, epochs=1, lr=50.0), progress=False)
    assert res.status == "finished"
    return out


def test_probe_kept_when_it_validates_better(probe_kept_run):
    last = _metrics(probe_kept_run)[-1]
    assert last["kept"] == "probe" and "linear probe validates best" in last["kept_because"]
    assert last["probe_val_top1"] > last["val_top1"]
    assert last["ensemble_val_top1"] < last["probe_val_top1"], "the ruined fine-tune drags their mean down too"
    spec = torch.load(probe_kept_run / "model.pt", weights_only=True)["spec"]
    assert spec["pooling"] == "mean" and spec["kept"] == "probe" and spec["picture_size"] == 64
    assert not (probe_kept_run / "best.pt").exists()


def test_kept_probe_predicts_through_the_core_predictor(probe_kept_run, synth_dir, weights_file, tmp_path):
    ckpt = torch.load(probe_kept_run / "checkpoint.pt", weights_only=True)
    probe = train_module.Probe.from_state(ckpt["probe"])
    test = Catalog.open(synth_dir / "test.bson")
    ranking = CorePredictor(probe_kept_run, device="cpu", batch_size=32).predict_catalog(test, tmp_path / "pred",
                                                                                         topk=3, progress=False)
    from etalage.core.backbones import create_backbone

    bb = create_backbone("test_efficientnet", weights_file)
    feats = pooled_features(bb.model, test, np.arange(len(test)), PictureTransform(64, 64), torch.device("cpu"),
                            (bb.mean, bb.std))
    assert (ranking.top1() == probe.leaf_logits(feats).argmax(1)).mean() > 0.98


def test_kept_network_compares_the_three_levels():
    fine = {"val_top1": 0.67, "val_level2_top1": 0.76, "val_level1_top1": 0.97}
    probe = {"val_top1": 0.66, "val_level2_top1": 0.82, "val_level1_top1": 0.98}
    assert kept_network(fine, probe)[0] == "probe", "a leaf tie does not hide 6 points lost at level 2"
    assert kept_network(probe, fine)[0] == "fine-tune"
    assert kept_network(fine, fine)[0] == "fine-tune", "a tie keeps the fine-tune"
    assert kept_network({"val_top1": float("nan")}, probe) == ("fine-tune", "no validation score to compare with "
                                                                            "the probe's")
    mean = {"val_top1": 0.72, "val_level2_top1": 0.82, "val_level1_top1": 0.99}
    kept, why = kept_network(fine, probe, mean)
    assert kept == "ensemble" and "mean of the linear probe and the fine-tuned network validates best" in why
    assert "ensemble leaf 0.720, level 2 0.820, level 1 0.990" in why
    assert kept_network(fine, probe, probe)[0] == "ensemble", "a tie with the probe keeps the ensemble"
    assert kept_network(mean, probe, mean)[0] == "fine-tune", "a tie with the fine-tune keeps the fine-tune"
    assert kept_network(fine, mean, probe)[0] == "probe"


def test_the_ensemble_is_the_mean_of_the_probe_and_the_fine_tune(probe_kept_run, synth_dir, tmp_path):
    """The ensemble network loads from model.pt alone and predicts through the core predictor: its probabilities
    are the mean of its members', each reading the pictures it was made for (here both whole, at 64 px)."""
    from etalage.core.data import ProductDataset, collate, to_device
    from etalage.core.model import load_model, network_of
    from etalage.core.probe import ensemble_network

    ckpt = torch.load(probe_kept_run / "checkpoint.pt", weights_only=True)
    probe = train_module.Probe.from_state(ckpt["probe"])
    state, spec = ensemble_network(probe, ckpt["model"], ckpt["spec"], "none", "letterbox")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(probe_kept_run / "category_names.csv", run)
    torch.save({"state_dict": state, "spec": spec}, run / "model.pt")
    model, spec = load_model(run / "model.pt")
    assert spec["kept"] == "ensemble" and spec["picture_size"] == spec["members"]["fine-tune"]["picture_size"] == 64
    test = Catalog.open(synth_dir / "test.bson")
    batch = next(iter(torch.utils.data.DataLoader(ProductDataset(test, np.arange(40), None,
                                                                 PictureTransform.of_model(spec)),
                                                  batch_size=40, collate_fn=collate)))
    x = to_device(batch, torch.device("cpu"), spec["mean"], spec["std"], False)
    members = {}
    for name in ("probe", "fine-tune"):
        member = network_of(spec["members"][name]).eval()
        prefix = name.replace("-", "_") + "."
        member.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        with torch.no_grad():
            members[name] = member(x, batch.picture_product, batch.n_products)
    with torch.no_grad():
        out = model(x, batch.picture_product, batch.n_products)
    for key in ("logits", "level1", "level2", "picture_logits"):
        mean = (members["probe"][key].softmax(1) + members["fine-tune"][key].softmax(1)) / 2
        assert torch.allclose(out[key].softmax(1), mean, atol=1e-5), key
    assert torch.allclose(out["embedding"], members["fine-tune"]["embedding"], atol=1e-5)
    ranking = CorePredictor(run, device="cpu", batch_size=16).predict_catalog(test, tmp_path / "pred", topk=3,
                                                                             progress=False)
    # the predictor's channels-last batches of 16 sum in another order, and this ruined fine-tune's logits are in
    # the thousands: a near tie may flip
    assert (ranking.top1()[:40] == out["logits"].argmax(1).numpy()).mean() >= 0.95


def test_the_ensemble_kept_is_saved_as_model_pt(synth_dir, weights_file, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "kept_network", lambda fine, probe, ensemble: ("ensemble", "chosen here"))
    out = tmp_path / "run"
    assert train(_cfg(synth_dir, out, weights_file, epochs=1), progress=False).status == "finished"
    last = _metrics(out)[-1]
    assert last["kept"] == "ensemble" and 0 <= last["ensemble_val_top1"] <= 1
    spec = torch.load(out / "model.pt", weights_only=True)["spec"]
    assert spec["kept"] == "ensemble" and spec["members"]["fine-tune"]["pooling"] == "gate"
    test = Catalog.open(synth_dir / "test.bson")
    ranking = CorePredictor(out, device="cpu").predict_catalog(test, tmp_path / "pred", topk=3, progress=False)
    assert len(ranking.top1()) == len(test)


def test_fine_tune_kept_otherwise_and_resume_is_exact(synth_dir, weights_file, tmp_path, monkeypatch):
    fit = train_module.fit_run_probe

    def hopeless_probe(*args, **kwargs):
        probe = fit(*args, **kwargs)
        probe.val = {k: 0.0 for k in probe.val if k != "val_products"} | {"val_products": probe.val["val_products"]}
        return probe

    monkeypatch.setattr(train_module, "fit_run_probe", hopeless_probe)
    # their mean with a hopeless probe could still validate better than the fine-tune: out of the running too
    monkeypatch.setattr(train_module, "kept_network", lambda fine, probe, ensemble: kept_network(fine, probe))
    straight = train(_cfg(synth_dir, tmp_path / "a", weights_file, epochs=1, eval_every=0.5), progress=False)
    assert straight.status == "finished" and _metrics(tmp_path / "a")[-1]["kept"] == "fine-tune"
    cfg = _cfg(synth_dir, tmp_path / "b", weights_file, epochs=1, eval_every=0.5, stop_after_steps=5)
    assert train(cfg, progress=False).status == "paused"

    def no_second_pass(*args, **kwargs):
        raise AssertionError("a resumed run read its products again")

    monkeypatch.setattr(train_module, "pooled_features", no_second_pass)
    resumed = train(_cfg(synth_dir, tmp_path / "b", weights_file, epochs=1, eval_every=0.5), resume=True,
                    progress=False)
    assert resumed.status == "finished"
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    lines_a, lines_b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [(m["val_top1"], m["train_loss"]) for m in lines_a] == [(m["val_top1"], m["train_loss"]) for m in lines_b]
    assert lines_b[-1]["kept"] == "fine-tune"


def test_probe_settings_are_checked(synth_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="--val-groups must be a cosine similarity"):
        TrainConfig(train="x", out="y", val_groups=1.5).check()
    argv = ["train", "--train", str(synth_dir / "train.bson"), "--out", str(tmp_path / "r"), "-q", "--probe-size", "8"]
    assert main(argv) == 1
    assert "--probe-size 8: expected 16 to 1024 pixels" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_rank0_probes_and_the_ranks_agree(synth_dir, weights_file, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29523", str(Path(__file__).with_name("ddp_worker.py")), str(synth_dir / "train.bson"),
                          str(out), weights_file], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks ended with different weights"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["probe"] is not None and _metrics(out)[-1]["kept"] in ("probe", "fine-tune")
    assert len(np.load(out / "val_positions.npy")) > 0


def test_a_pass_over_its_share_of_the_budget_is_given_up(synth_dir, weights_file, tmp_path, monkeypatch):
    """With --max-minutes, a pass whose first batches say it would take over its share of the budget stops there:
    the run trains on without a probe (random validation part, heads at random)."""
    from etalage.core.backbones import create_backbone

    bb = create_backbone("test_efficientnet", weights_file)
    cat = Catalog.open(synth_dir / "train.bson")
    monkeypatch.setattr(probe_module, "PROBE_ALWAYS_S", 0.0)  # this pass is short: always finished otherwise
    with pytest.raises(probe_module.ProbeTooSlow, match="of --max-minutes"):
        pooled_features(bb.model, cat, np.arange(len(cat)), PictureTransform(64, 64), torch.device("cpu"),
                        (bb.mean, bb.std), probe_module.FeaturePass(batch_size=8, max_seconds=1e-4))
    monkeypatch.setattr(probe_module, "PROBE_BUDGET_SHARE", 1e-7)
    monkeypatch.setattr(train_module, "PROBE_BUDGET_SHARE", 1e-7)
    res = train(_cfg(synth_dir, tmp_path / "run", weights_file, max_minutes=1.0, stop_after_steps=2), progress=False)
    assert res.status == "paused"
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["probe"] is None, "no probe fitted from a pass given up"


def test_the_ensembles_fine_tune_reads_the_pictures_at_its_own_side():
    """The probe reads 64-px pictures, the fine-tune the same resized to 48 px (antialiased bicubic), in either
    memory format."""
    import torch.nn.functional as F

    from etalage.core.model import ProbeEnsemble, build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe, _ = build_model(7, 2, 3, "test_efficientnet", None, "mean")
        fine, _ = build_model(7, 2, 3, "test_efficientnet", None, "gate")
    ensemble = ProbeEnsemble(probe, fine, 48).eval()
    x = torch.rand(5, 3, 64, 64)
    owner, n = torch.tensor([0, 0, 1, 2, 2]), 3
    with torch.no_grad():
        want = fine.eval()(F.interpolate(x, size=(48, 48), mode="bicubic", antialias=True), owner, n)
        assert not torch.allclose(fine(x[..., :48, :48], owner, n)["embedding"], want["embedding"])
        for pictures in (x, x.contiguous(memory_format=torch.channels_last)):
            got = ensemble(pictures, owner, n)
            assert torch.allclose(got["embedding"], want["embedding"], atol=1e-5)
            mean = (probe.eval()(x, owner, n)["level1"].softmax(1) + want["level1"].softmax(1)) / 2
            assert torch.allclose(got["level1"].softmax(1), mean, atol=1e-5)
