"""The training recipe's parts: picture transforms (letterbox, augmentations, mosaic), the picture size read
off a dump, mixup / cutmix, frozen layer groups and layer-wise rates, the head-only phase, EMA and keeping
the best weights, test-time crops, and exact resume with all of them on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from etalage.core.config import TrainConfig
from etalage.core.data import PictureTransform, auto_picture_size
from etalage.core.model import build_model
from etalage.core.predict import tta_views
from etalage.core.train import _make_optimizer, mix_products, train
from tests.conftest import TINY


def _tall_picture():
    pic = np.zeros((80, 60, 3), np.uint8)
    pic[:, :, 0] = 200
    return pic


def test_letterbox_keeps_the_aspect_stretch_fills():
    pic = _tall_picture()
    boxed = PictureTransform(64, 56, "letterbox")(pic)
    stretched = PictureTransform(64, 56, "stretch")(pic)
    assert boxed.shape == stretched.shape == (3, 64, 64)
    assert (boxed[:, :, :4] == 255).all(), "white bands beside a tall picture"
    assert (stretched[0] == 200).all() and (stretched[1] == 0).all()


@pytest.mark.parametrize("augment", ["crop-flip", "resized-crop", "trivial", "randaugment", "none"])
def test_augmentations_are_seeded_and_keep_the_crop_side(augment):
    rng_pic = np.random.default_rng(0)
    pic = rng_pic.integers(0, 255, (90, 70, 3), dtype=np.uint8)
    tf = PictureTransform(64, 48, "letterbox", augment)
    a = tf(pic, np.random.default_rng([1, 2, 3]))
    b = tf(pic, np.random.default_rng([1, 2, 3]))
    assert a.shape == (3, 48, 48) and np.array_equal(a, b), "same seed, same picture"
    if augment != "none":
        others = [tf(pic, np.random.default_rng([1, 2, k])) for k in range(4, 10)]
        assert any(not np.array_equal(a, o) for o in others), "other seeds, other pictures"
    assert tf(pic).shape == (3, 64, 64), "evaluation: the whole square"


def test_mosaic_tiles_a_products_pictures():
    red, green, blue = (np.full((40, 40, 3), c, np.uint8) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255)))
    tf = PictureTransform(64, 56, "letterbox", "none", mosaic=True)
    (one,) = tf.product([red, green, blue])
    assert one.shape == (3, 64, 64)
    assert tuple(one[:, 10, 10]) == (255, 0, 0) and tuple(one[:, 10, 50]) == (0, 255, 0)
    assert tuple(one[:, 50, 10]) == (0, 0, 255) and tuple(one[:, 50, 50]) == (255, 255, 255), "empty tile white"
    assert len(tf.product([red])) == 1 and tuple(tf.product([red])[0][:, 50, 50]) == (255, 0, 0)
    assert len(PictureTransform(64, 56).product([red, green, blue])) == 3


def test_picture_size_from_the_dump(synth_dir, tmp_path):
    from PIL import Image

    from etalage.catalog import Catalog
    from etalage.catalog.pack import pack_listing

    assert auto_picture_size(Catalog.open(synth_dir / "train.bson")) == 128, "180x180 pictures: the CPU's cap"
    assert auto_picture_size(Catalog.open(synth_dir / "train.bson"), "cuda") == 176, "180, a multiple of 16"
    (tmp_path / "images").mkdir()
    rows = ["_id,category_id,picture"]
    for i in range(5):
        Image.new("RGB", (60, 80), (i * 40, 0, 0)).save(tmp_path / "images" / f"{i}.jpg")
        rows.append(f"{i + 1},100,{i}.jpg")
    (tmp_path / "listing.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "category_names.csv").write_text("category_id,category_level1,category_level2,category_level3\n"
                                                 "100,A,B,C\n")
    pack_listing(tmp_path / "listing.csv", tmp_path / "images", tmp_path / "out" / "small.bson", progress=False)
    assert auto_picture_size(Catalog.open(tmp_path / "out" / "small.bson")) == 96, "60x80 photos: the floor"


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixing_pairs_products_and_weighs_their_labels(mode):
    cfg = TrainConfig(train="x", out="y", **{mode: 1.0})
    x = torch.stack([torch.full((3, 8, 8), float(v)) for v in (0, 0, 1, 2)])
    owner = torch.tensor([0, 0, 1, 2])  # product 0 has two pictures
    labels = torch.tensor([5, 6, 7])
    mixed, (partner, lam) = mix_products(x, owner, labels, cfg, np.random.default_rng(3))
    assert 0 <= lam <= 1 and sorted(partner.tolist()) == [5, 6, 7]
    firsts = torch.tensor([0.0, 1.0, 2.0])  # each product's first picture's value
    perm = [int((labels == p).nonzero()) for p in partner]
    for pic, prod in enumerate(owner.tolist()):
        want = lam * x[pic].mean() + (1 - lam) * firsts[perm[prod]]
        assert mixed[pic].mean() == pytest.approx(float(want), abs=1e-5)
    off, none = mix_products(x, owner, labels, TrainConfig(train="x", out="y"), np.random.default_rng(3))
    assert none is None and off is x


def test_frozen_groups_and_layer_rates():
    model, _ = build_model(5, 2, 3, "test_efficientnet", None, "gate")
    groups = model.backbone_groups()
    assert len(groups) >= 3 and sum(len(g) for g in groups) == len(list(model.backbone.parameters()))
    model.set_frozen(2)
    frozen = {id(p) for g in groups[:2] for p in g}
    assert all(not p.requires_grad for p in model.backbone.parameters() if id(p) in frozen)
    assert all(p.requires_grad for p in model.backbone.parameters() if id(p) not in frozen)
    model.train()
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(not m.training for m in norms) and any(m.training for m in norms), "frozen norms stay in eval"
    opt = _make_optimizer(model, TrainConfig(train="x", out="y", layer_decay=0.5))
    scales = sorted({g["lr_scale"] for g in opt.param_groups}, reverse=True)
    assert scales[0] == 1.0 and scales[1] == 0.5 and scales[-1] == 0.5 ** len(groups)


def _metrics(run):
    return [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def recipe_run(synth_dir, tmp_path_factory):
    """A tiny run with every recipe part on: head-only phase, frozen stem, layer rates, trivial augment,
    mixup and cutmix, EMA, keep best, two validations per epoch."""
    out = tmp_path_factory.mktemp("recipe") / "run"
    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(out), epochs=2, head_epochs=0.5, freeze=1,
                      layer_decay=0.8, augment="trivial", mixup=0.4, cutmix=1.0, ema=0.9, keep="best",
                      eval_every=0.5, **TINY)
    return cfg, train(cfg, progress=False)


def test_recipe_run_phases_validations_and_files(recipe_run):
    cfg, res = recipe_run
    run = Path(cfg.out)
    lines = _metrics(run)
    assert res.status == "finished"
    assert [m["phase"] for m in lines][:1] == ["head"] and lines[-1]["phase"] == "fine-tune"
    assert len(lines) >= 5, "validations every half epoch: head phase, then 4 in the fine-tune"
    assert all({"val_top1", "val_level2_top1", "val_level1_top1"} <= set(m) for m in lines)
    assert (run / "curves.png").stat().st_size > 1000 and not (run / "best.pt").exists()
    kept = torch.load(run / "model.pt", weights_only=True)
    assert kept["spec"]["picture_size"] == 64 and kept["spec"]["crop"] == 56 and kept["spec"]["resize"] == "letterbox"


def test_head_phase_leaves_the_backbone_as_it_was(synth_dir, tmp_path):
    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "h"), epochs=1, head_epochs=1.0,
                      stop_after_steps=3, **{**TINY, "weights": "none"})
    torch.manual_seed(cfg.seed)
    before, _ = build_model(45, 10, 20, TINY["backbone"], "none", "gate")
    res = train(cfg, progress=False)
    after = res.model.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.backbone.state_dict().items()), "backbone untouched"


def test_resume_is_exact_with_the_recipe_on(recipe_run, tmp_path):
    cfg, _ = recipe_run
    sliced = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "b"), "stop_after_steps": 7})
    assert train(sliced, progress=False).status == "paused"
    rest = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "b")})
    assert train(rest, resume=True, progress=False).status == "finished"
    a = torch.load(Path(cfg.out) / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "EMA weights after resume differ from an uninterrupted run"
    assert [m["val_top1"] for m in _metrics(cfg.out)] == [m["val_top1"] for m in _metrics(tmp_path / "b")]


def test_crops_tta_views():
    x = torch.rand(2, 3, 64, 64)
    views = tta_views(x, "crops", 56)
    assert len(views) == 10 and all(v.shape == (2, 3, 56, 56) for v in views)
    assert torch.equal(views[0], x[:, :, :56, :56]) and torch.equal(views[5], torch.flip(views[0], dims=[3]))
    assert len(tta_views(x, "flip", 56)) == 2 and tta_views(x, "none", 56)[0] is x


def test_time_budget_is_used_after_a_slow_start(synth_dir, tmp_path, monkeypatch):
    """The first steps of a run are often slow (cold pages, another job finishing): the schedule is fitted
    again from the speed measured later, so the run still trains for most of its budget."""
    from etalage.core import data

    calls = {"n": 0}
    original = data.ProductDataset.__getitem__

    def slow_start(self, key):
        calls["n"] += 1
        if self.train and calls["n"] <= 6 * TINY["batch_size"]:
            import time

            time.sleep(0.05)
        return original(self, key)

    monkeypatch.setattr(data.ProductDataset, "__getitem__", slow_start)
    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "b"), max_minutes=0.25, **TINY)
    res = train(cfg, progress=False)
    assert res.status == "finished"
    assert res.metrics["elapsed_s"] > 0.7 * 15, f"stopped after {res.metrics['elapsed_s']:.1f}s of a 15s budget"


def test_frozen_groups_default_to_three_for_pretrained_weights_only():
    from functools import partial

    from etalage.core.config import TrainConfig

    cfg = partial(TrainConfig, train="train.bson", out="run")
    assert cfg().frozen_groups() == 3, "ImageNet weights: the stem and 2 stages kept"
    assert cfg(weights="none").frozen_groups() == 0, "from scratch nothing may stay random"
    assert cfg(weights="none", freeze=2).frozen_groups() == 2 and cfg(freeze=0).frozen_groups() == 0
