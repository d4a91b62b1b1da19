"""Training on the frozen layer groups' kept maps: the backbone cut where the frozen groups end gives the
network's own output, the maps read back are the ones computed, a cached run trains, resumes exactly and
cleans up, and a run without the cache (turned off, over its bound, or with an augmentation on pixels)
is the pixel path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from etalage.catalog import Catalog
from etalage.cli import main
from etalage.core.config import TrainConfig
from etalage.core.data import PictureTransform
from etalage.core.mapcache import FILLED, plan_map_cache
from etalage.core.model import build_model
from etalage.core.rundir import RunDir
from etalage.core.train import train
from etalage.errors import ConfigError
from tests.conftest import TINY

CACHED = {**TINY, "freeze": 3, "map_cache_gb": 1.0}  # test_efficientnet cut after 3 groups: 24x16x16 maps


def _metrics(run) -> list[dict]:
    return [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _weights(run) -> dict:
    return torch.load(Path(run) / "model.pt", weights_only=True)["state_dict"]


def test_the_cut_backbone_gives_the_networks_output():
    model, _ = build_model(5, 2, 3, "test_efficientnet", None, "gate")
    model.eval()
    groups = len(model.backbone_groups())
    x, owner = torch.rand(3, 3, 64, 64), torch.tensor([0, 0, 1])
    with torch.no_grad():
        whole = model(x, owner, 2)["logits"]
        for g in range(1, groups):
            maps = model.frozen_prefix(g)(x)
            assert torch.allclose(model(maps, owner, 2, from_group=g)["logits"], whole, atol=1e-5), g
    assert model.frozen_prefix(0) is None and model.frozen_prefix(groups) is None, "nothing, or the head, frozen"


def _cache_for(synth_dir, tmp_path, **overrides):
    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "run"), **{**CACHED, **overrides})
    run = RunDir(cfg.out)
    run.path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, spec = build_model(45, 10, 20, cfg.backbone, None, cfg.picture_pooling)
    model.set_frozen(cfg.frozen_groups())
    spec.update(picture_size=64, crop=56, resize="letterbox")
    catalog = Catalog.open(cfg.train)
    positions = np.arange(40)
    cache = plan_map_cache(cfg, run, model, catalog, positions, spec, torch.device("cpu"), False, 1)
    tf = PictureTransform(64, 56, "letterbox", cfg.augment, cfg.picture_pooling == "mosaic")
    return cache, cache.dataset(catalog, positions, np.zeros(40, np.int64), tf, seed=0), model, catalog, spec


def test_maps_read_back_are_the_frozen_layers_output_cropped(synth_dir, tmp_path):
    cache, ds, model, catalog, spec = _cache_for(synth_dir, tmp_path)
    assert cache.layout.shape[2:] == (24, 16, 16) and cache.layout.crop == 14
    keys = [(i, 0) for i in range(8)]
    first = ds.collate([ds[k] for k in keys])
    assert len(first.maps) == 0 and len(first.raw) == len(first.picture_product), "nothing kept yet"
    x1 = cache.inputs(first)
    again = ds.collate([ds[k] for k in keys])
    assert len(again.raw) == 0 and len(again.maps) == len(first.raw), "the same draws read back from the file"
    assert torch.equal(cache.inputs(again), x1)
    assert x1.shape == (len(first.picture_product), 24, 14, 14) and x1.dtype == torch.float32
    # the first picture by hand: squared, mirrored when its view is 1, the frozen layers, float16, cropped
    pic = torch.from_numpy(ds.transform(catalog.decode(0)[0])).float().div(255)
    pic = (pic - torch.tensor(spec["mean"]).view(3, 1, 1)) / torch.tensor(spec["std"]).view(3, 1, 1)
    if int(first.raw_views[0]) == 1:
        pic = pic.flip(2)
    model.eval()
    with torch.no_grad():
        expected = model.frozen_prefix(3)(pic[None])[0].half().float()
    y, x = first.corners[0].tolist()
    # (computed alone rather than in a batch: the same to float16 rounding)
    assert torch.allclose(x1[0], expected[:, y:y + 14, x:x + 14], rtol=2e-3, atol=1e-3)
    assert set(first.raw_views.tolist()) == {0, 1} and set(np.unique(first.corners.numpy())) > {0}, "views and corners drawn"


def test_loader_workers_see_the_maps_the_step_keeps(synth_dir, tmp_path):
    cache, ds, *_ = _cache_for(synth_dir, tmp_path)
    keys = [(i, 0) for i in range(6)]
    loader = torch.utils.data.DataLoader(ds, batch_size=6, sampler=keys, collate_fn=ds.collate, num_workers=1,
                                         persistent_workers=True)
    first = next(iter(loader))
    assert len(first.maps) == 0
    x = cache.inputs(first)  # kept by this process, after the worker started
    again = next(iter(loader))
    assert len(again.raw) == 0 and torch.equal(cache.inputs(again), x)


def test_no_views_are_drawn_without_augmentation(synth_dir, tmp_path):
    cache, ds, *_ = _cache_for(synth_dir, tmp_path, augment="none")
    batch = ds.collate([ds[(i, e)] for e in (0, 1) for i in range(3)])
    assert cache.layout.views == 1 and set(batch.raw_views.tolist()) == {0}
    assert set(batch.corners.flatten().tolist()) == {1}, "the centre crop: (16 - 14) / 2"


@pytest.fixture(scope="module")
def cached_run(synth_dir, tmp_path_factory):
    """A tiny run on kept maps, 2 epochs, validations every half epoch."""
    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path_factory.mktemp("maps") / "run"),
                      epochs=2, eval_every=0.5, **CACHED)
    return cfg, train(cfg, progress=False)


def test_a_cached_run_trains_on_maps_and_cleans_up(cached_run):
    cfg, res = cached_run
    lines = _metrics(cfg.out)
    assert res.status == "finished" and len(lines) == 4
    read = [m["maps_read"] for m in lines]
    assert read[:2] == [0, 0], "epoch 1 computes every map"
    assert all(0.3 < r < 0.7 for r in read[2:]), "epoch 2 reads the half of its views that epoch 1 drew"
    assert lines[-1]["val_top1"] > 3 / 45 and lines[-1]["train_loss"] < lines[0]["train_loss"]
    run = RunDir(cfg.out)
    assert run.finished and not run.map_cache_file.exists() and not run.map_cache_state_file.exists()
    spec = torch.load(run.model_file, weights_only=True)["spec"]
    assert spec["picture_size"] == 64 and spec["crop"] == 56, "the model predicts on pictures, as any run's"


def test_resume_on_maps_is_exact(cached_run, tmp_path):
    cfg, _ = cached_run
    out = tmp_path / "b"
    sliced = TrainConfig(**{**cfg.__dict__, "out": str(out), "stop_after_steps": 20})
    assert train(sliced, progress=False).status == "paused"
    run = RunDir(out)
    with np.load(run.map_cache_state_file) as saved:
        assert (saved["filled"] == FILLED).any(), "which maps are filled is saved with the checkpoint"
    with pytest.raises(ConfigError, match=r"map_cache_gb was 1.0 .*\(pass --map-cache-gb 1.0"):
        train(TrainConfig(**{**cfg.__dict__, "out": str(out), "map_cache_gb": 0.0}), resume=True, progress=False)
    assert train(TrainConfig(**{**cfg.__dict__, "out": str(out)}), resume=True, progress=False).status == "finished"
    a, b = _weights(cfg.out), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    assert [m["val_top1"] for m in _metrics(cfg.out)] == [m["val_top1"] for m in _metrics(out)]


def test_a_resumed_run_rebuilds_lost_maps(synth_dir, tmp_path):
    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "r"), epochs=1, stop_after_steps=3,
                      **CACHED)
    train(cfg, progress=False)
    run = RunDir(cfg.out)
    with np.load(run.map_cache_state_file) as saved:
        before = saved["filled"] == FILLED
    run.map_cache_file.unlink()  # the maps lost, the flags saying which were filled kept
    res = train(TrainConfig(**{**cfg.__dict__, "stop_after_steps": 3}), resume=True, progress=False)
    assert res.status == "paused" and run.map_cache_file.exists()
    with np.load(run.map_cache_state_file) as saved:
        after = saved["filled"] == FILLED
    assert after.any() and not (after & before).any(), "the lost maps are not taken as filled"
    maps = np.load(run.map_cache_file, mmap_mode="r")
    rows, views = np.nonzero(after)
    assert all(np.abs(maps[r, v]).max() > 0 for r, v in zip(rows, views, strict=True))
    assert not np.abs(maps[np.nonzero(~after.any(1))[0][:5]]).any(), "rows not computed since hold nothing"


@pytest.mark.parametrize("overrides, why", [
    ({"map_cache_gb": 0.0}, None),
    ({"map_cache_gb": 0.001}, "over --map-cache-gb 0.001"),
    ({"augment": "trivial"}, "--augment trivial changes the pixels"),
])
def test_without_the_cache_the_run_trains_on_pictures(synth_dir, tmp_path, caplog, overrides, why):
    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "p"), epochs=1, stop_after_steps=2,
                      **{**CACHED, **overrides})
    with caplog.at_level(logging.INFO, logger="etalage.core.mapcache"):
        train(cfg, progress=False)
    run = RunDir(cfg.out)
    assert not run.map_cache_file.exists() and not run.map_cache_state_file.exists()
    assert torch.load(run.checkpoint_file, weights_only=True)["progress"]["map_cache"] is False
    said = [r.getMessage() for r in caplog.records if "not kept" in r.getMessage()]
    if why is None:
        assert not said
    else:
        assert len(said) == 1 and why in said[0]


def test_the_bound_counts_every_picture_and_view(synth_dir, tmp_path):
    cache, *_ = _cache_for(synth_dir, tmp_path)
    catalog = Catalog.open(synth_dir / "train.bson")
    pictures = int(np.maximum(1, catalog.n_pictures[:40]).sum())
    assert cache.layout.nbytes == pictures * 2 * 24 * 16 * 16 * 2
    assert cache.layout.nbytes <= cache.run.map_cache_file.stat().st_size < cache.layout.nbytes + 4096


def test_mixing_mosaic_and_the_head_phase_run_on_maps(synth_dir, tmp_path):
    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "m"), epochs=1, head_epochs=0.2,
                      mixup=0.4, cutmix=1.0, picture_pooling="mosaic", stop_after_steps=6, **CACHED)
    assert train(cfg, progress=False).status == "paused"
    run = RunDir(cfg.out)
    assert torch.load(run.checkpoint_file, weights_only=True)["progress"]["map_cache"] is True
    with np.load(run.map_cache_state_file) as saved:
        filled = saved["filled"]
    training = len(Catalog.open(cfg.train)) - len(run.val_positions())
    assert filled.shape == (training, 2), "one tiling per product, two views"
    assert 0 < (filled == FILLED).sum() <= 6 * CACHED["batch_size"]


def test_map_cache_bound_must_not_be_negative(synth_dir, tmp_path, capsys):
    argv = ["train", "--train", str(synth_dir / "train.bson"), "--out", str(tmp_path / "r"), "-q",
            "--map-cache-gb", "-1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--map-cache-gb must be >= 0" in err[0]
