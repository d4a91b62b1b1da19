import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from etalage.cli import main
from etalage.core.train import TrainConfig, accumulation_at, lr_at, train
from etalage.errors import ConfigError, DataError, TaxonomyError
from tests.conftest import TINY


def _metrics(run):
    return [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns(tiny_run, synth_dir):
    lines = _metrics(tiny_run)
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    n_classes = len(np.unique(np.load(tiny_run / "val_positions.npy")))
    assert lines[-1]["val_top1"] > 3 / 45, "well above chance on 45 classes"
    for name in ("config.json", "category_names.csv", "checkpoint.pt", "model.pt", "val_positions.npy"):
        assert (tiny_run / name).exists(), name
    assert n_classes > 0


def _weights(run):
    return torch.load(Path(run) / "model.pt", weights_only=False)["state_dict"]


def test_resume_continues_exactly(synth_dir, tmp_path):
    base = dict(train=str(synth_dir / "train.bson"), epochs=2, **TINY)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **base), progress=False)
    assert straight.status == "finished"
    paused = train(TrainConfig(out=str(tmp_path / "b"), stop_after_steps=5, **base), progress=False)
    assert paused.status == "paused" and not (tmp_path / "b" / "model.pt").exists()
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(TrainConfig(out=str(tmp_path / "b"), **base), progress=False)
    sliced = train(TrainConfig(out=str(tmp_path / "b"), stop_after_steps=5, **base), resume=True, progress=False)
    assert sliced.status == "paused", "a second slice of 5 steps"
    resumed = train(TrainConfig(out=str(tmp_path / "b"), **base), resume=True, progress=False)
    assert resumed.status == "finished"
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    assert [m["val_top1"] for m in _metrics(tmp_path / "a")] == [m["val_top1"] for m in _metrics(tmp_path / "b")]


def test_resume_refuses_changed_settings(synth_dir, tmp_path):
    base = dict(train=str(synth_dir / "train.bson"), epochs=1, **TINY)
    train(TrainConfig(out=str(tmp_path / "r"), stop_after_steps=2, **base), progress=False)
    changed = {**base, "crop": 48}
    with pytest.raises(ConfigError, match="crop was 56"):
        train(TrainConfig(out=str(tmp_path / "r"), **changed), resume=True, progress=False)


@pytest.mark.slow
def test_ddp_two_processes_agree(synth_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", str(Path(__file__).with_name("ddp_worker.py")),
                          str(synth_dir / "train.bson"), str(out)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks ended with different weights"
    lines = _metrics(out)
    assert len(lines) == 2 and lines[1]["train_loss"] < lines[0]["train_loss"]


def test_schedules():
    cfg = TrainConfig(train="x", out="y", lr=1.0, warmup=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.05
    grow = TrainConfig(train="x", out="y", lr=1.0, warmup=0.1, schedule="grow-batch")
    assert [accumulation_at(s, 90, grow) for s in (0, 29, 30, 60, 89)] == [1, 1, 2, 4, 4]
    assert lr_at(80, 90, grow) == 1.0


def test_grow_batch_runs(synth_dir, tmp_path):
    res = train(TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "g"), epochs=1,
                            schedule="grow-batch", **TINY), progress=False)
    assert res.status == "finished" and (tmp_path / "g" / "model.pt").exists()


def test_bad_training_input(synth_dir, tmp_path):
    import bson

    base = dict(out=str(tmp_path / "run"), **TINY)
    shutil.copy(synth_dir / "category_names.csv", tmp_path / "category_names.csv")
    foreign = tmp_path / "foreign.bson"
    foreign.write_bytes(bson.encode({"_id": 1, "imgs": [{"picture": b"x"}], "category_id": 123}))
    with pytest.raises(TaxonomyError, match="category_id 123 is not in the taxonomy"):
        train(TrainConfig(train=str(foreign), **base), progress=False)
    with pytest.raises(DataError, match="has no category_id"):
        train(TrainConfig(train=str(synth_dir / "test.bson"), **base), progress=False)
    empty = tmp_path / "empty.bson"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.bson: empty file"):
        train(TrainConfig(train=str(empty), **base), progress=False)
    one = tmp_path / "one.bson"
    one.write_bytes(bson.encode({"_id": 1, "imgs": [{"picture": b"x"}], "category_id": 1000010000}))
    with pytest.raises(ConfigError, match="--crop 70 is larger"):
        train(TrainConfig(train=str(one), **{**base, "crop": 70}), progress=False)


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet_nope"], "unknown backbone 'resnet_nope'"),
    (["--weights", "missing.pth"], "missing.pth: weight file not found"),
    (["--fusion", "median"], None),
])
def test_train_cli_errors(synth_dir, tmp_path, capsys, args, message):
    argv = ["train", "--train", str(synth_dir / "train.bson"), "--out", str(tmp_path / "r"), "-q", *args]
    if message is None:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        return
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_one_human_line_per_validation():
    """The terminal gets one readable line per validation; metrics.jsonl keeps the raw numbers."""
    from etalage.core.train import progress_line

    line = {"epoch": 2, "epoch_fraction": 0.5, "phase": "fine-tune", "train_loss": 0.92063, "val_top1": 0.8121,
            "val_level2_top1": 0.93, "val_level1_top1": 0.9851, "train_pictures_per_s": 312.4}
    assert progress_line(line, 7.04, 372.2) == ("epoch 1.5/7.0 (fine-tune): loss 0.921, validation top-1 0.812 "
                                                "(level 2 0.930, level 1 0.985), 312 pictures/s, 6:12 left")
    assert progress_line({**line, "epoch_fraction": 1.0}, 3, 9.6).startswith("epoch 2.0/3.0")
    assert progress_line({**line, "epoch_fraction": 1.0}, 3, 9.6).endswith("0:10 left")
