"""Trust: model folders cannot run code when loaded, faulty plugins cost only their own contribution,
and bad inputs end in one line."""

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from etalage.cli import main


class Evil:
    """What a hostile model file holds: unpickling it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _one_line_error(capsys, code, *expected):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("etalage: warning")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_a_hostile_model_file_runs_nothing(tiny_run, synth_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "owned"
    blob = torch.load(run / "model.pt", weights_only=True)
    torch.save({"state_dict": blob["state_dict"], "spec": blob["spec"], "extra": Evil(marker)}, run / "model.pt")
    code = main(["predict", "--run", str(run), "--data", str(synth_dir / "test.bson"), "--out", str(tmp_path / "p"),
                 "-q"])
    _one_line_error(capsys, code, "model.pt: refused", "--trust-pickle")
    assert not marker.exists(), "loading the model ran its code"


def test_a_hostile_checkpoint_runs_nothing_on_resume(synth_dir, tmp_path, capsys):
    from etalage.core.config import TrainConfig
    from etalage.core.train import train
    from tests.conftest import TINY

    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "r"), epochs=1, stop_after_steps=2,
                      **TINY)
    train(cfg, progress=False)
    marker = tmp_path / "owned"
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    ckpt["rng"]["python"] = Evil(marker)
    torch.save(ckpt, tmp_path / "r" / "checkpoint.pt")
    argv = ["train", "--train", str(synth_dir / "train.bson"), "--out", str(tmp_path / "r"), "--epochs", "1",
            "--resume", "-q"]
    for key, value in TINY.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    _one_line_error(capsys, main(argv), "checkpoint.pt: refused")
    assert not marker.exists()


def test_an_old_style_checkpoint_loads_only_when_trusted(synth_dir, tmp_path, capsys):
    """etalage 0.1 saved numpy's random state as its tuple: refused by default, loaded with --trust-pickle."""
    import random

    from etalage.core.config import TrainConfig
    from etalage.core.train import train
    from tests.conftest import TINY

    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "r"), epochs=1, stop_after_steps=2,
                      **TINY)
    train(cfg, progress=False)
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    ckpt["rng"]["numpy"], ckpt["rng"]["python"] = np.random.get_state(), random.getstate()
    torch.save(ckpt, tmp_path / "r" / "checkpoint.pt")
    argv = ["train", "--train", str(synth_dir / "train.bson"), "--out", str(tmp_path / "r"), "--epochs", "1",
            "--resume", "-q"]
    for key, value in TINY.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    _one_line_error(capsys, main(argv), "refused", "--trust-pickle")
    assert main([*argv, "--trust-pickle"]) == 0
    assert (tmp_path / "r" / "model.pt").exists()


def _fitted_specs(synth_dir, tmp_path, tiny_run, names="books"):
    out = tmp_path / "specs"
    assert main(["specialists", "fit", "--train", str(synth_dir / "train.bson"), "--run", str(tiny_run), "--out",
                 str(out), "--names", names, "--max-train", "20", "--ocr-engine", "tesseract", "--ocr-cache",
                 str(tmp_path / "ocr.sqlite"), "--set", "books.image=\"off\"", "-q"]) == 0
    return out


def test_a_hostile_specialist_folder_runs_nothing(synth_dir, tiny_run, tmp_path, capsys):
    import skops.io as sio

    from etalage.specialists.runner import load_fitted

    specs = _fitted_specs(synth_dir, tmp_path, tiny_run)
    marker = tmp_path / "owned"
    (specs / "books" / "state.skops").write_bytes(sio.dumps({"clf_": Evil(marker)}))
    from etalage.errors import UnsafeFileError

    with pytest.raises(UnsafeFileError, match="refused: it holds types outside the trusted list"):
        load_fitted(specs, ["books"])
    # an etalage 0.1 folder: a pickle, refused unless trusted
    (specs / "books" / "state.skops").unlink()
    with (specs / "books" / "specialist.joblib").open("wb") as fh:
        pickle.dump({"clf": Evil(marker)}, fh)
    with pytest.raises(UnsafeFileError, match="saved as a pickle by etalage 0.1.*refit it with"):
        load_fitted(specs, ["books"])
    assert not marker.exists()


def test_fusion_json_paths_are_relative_and_checked(synth_dir, tiny_run, tmp_path, capsys):
    assert main(["fusion", "fit", "--run", str(tiny_run), "--train", str(synth_dir / "train.bson"), "--out",
                 str(tmp_path / "fusion"), "--workers", "0", "-q"]) == 0
    config = json.loads((tmp_path / "fusion" / "fusion.json").read_text())["config"]
    assert not Path(config["run"]).is_absolute() and not Path(config["train"]).is_absolute()
    moved = tmp_path / "elsewhere" / "fusion"
    moved.parent.mkdir()
    shutil.copytree(tmp_path / "fusion", moved)
    code = main(["submit", "--fusion", str(moved), "--data", str(synth_dir / "test.bson"), "--out",
                 str(tmp_path / "s.csv"), "-q"])
    _one_line_error(capsys, code, "the run it was fitted with", "pass --run PATH")


def test_a_plugin_failing_at_run_time_costs_only_its_chunk(with_plugin, synth_dir, tiny_run, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(with_plugin))
    specs = tmp_path / "specs"
    assert main(["specialists", "fit", "--train", str(synth_dir / "train.bson"), "--run", str(tiny_run), "--out",
                 str(specs), "--names", "flaky", "--max-train", "20", "--ocr-engine", "tesseract", "--ocr-cache",
                 str(tmp_path / "ocr.sqlite"), "-q"]) == 0
    assert main(["fusion", "fit", "--run", str(tiny_run), "--train", str(synth_dir / "train.bson"), "--specialists",
                 str(specs), "--out", str(tmp_path / "fusion"), "--ocr-cache", str(tmp_path / "ocr.sqlite"),
                 "--workers", "0", "-q"]) == 0
    capsys.readouterr()
    argv = ["submit", "--fusion", str(tmp_path / "fusion"), "--data", str(synth_dir / "test.bson"), "--out",
            str(tmp_path / "s.csv"), "--ocr-cache", str(tmp_path / "ocr.sqlite"), "--chunk", "40", "--workers", "0"]
    monkeypatch.setenv("ETALAGE_EXAMPLE_FAIL", "1")
    assert main(argv) == 0, "the submission is written without the failing plugin"
    err = capsys.readouterr().err
    assert "specialist 'flaky' failed in predict" in err and "ConnectionError" in err
    assert "failed on" in err and "retried by the next run" in err
    failed = sorted((tmp_path / "s_work" / "specialists" / "flaky").glob("failed-*.json"))
    assert failed, "failed chunks are recorded"
    fused = sorted((tmp_path / "s_work" / "fused").glob("part-*.npz"))
    stamps = {p.name: p.stat().st_mtime_ns for p in fused}
    first = (tmp_path / "s.csv").read_text()
    monkeypatch.delenv("ETALAGE_EXAMPLE_FAIL")
    assert main(argv) == 0
    assert not list((tmp_path / "s_work" / "specialists" / "flaky").glob("failed-*.json")), "retried and done"
    redone = [p.name for p in sorted((tmp_path / "s_work" / "fused").glob("part-*.npz"))
              if p.stat().st_mtime_ns != stamps[p.name]]
    assert redone, "chunks fused without the plugin are fused again once it scored them"
    assert (tmp_path / "s.csv").read_text().count("\n") == first.count("\n")


@pytest.mark.parametrize("content, expected", [
    ("category_id,category_level1,category_level2,category_level3\n123456789012345678901234,A,B,C\n",
     "line 2: category_id 123456789012345678901234 is out of range"),
    (b"category_id,category_level1,category_level2,category_level3\n1,A\xe9,B,C\n", "line 2: not UTF-8 text"),
    ("\ufeffcategory_id,category_level1,category_level2,category_level3\n1,A,B,C\n", None),
])
def test_taxonomy_files(tmp_path, synth_dir, capsys, content, expected):
    path = tmp_path / "tax.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code = main(["info", str(synth_dir / "test.bson"), "--taxonomy", str(path), "-q"])
    if expected is None:
        assert code == 0
    else:
        _one_line_error(capsys, code, expected)


def test_system_errors_and_closed_pipes_are_one_line(synth_dir, tmp_path, capsys):
    import subprocess
    import sys

    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    else:  # root writes anywhere the permission bits forbid; sysfs refuses it too
        locked = Path("/sys")
    code = main(["synth", "--out", str(locked / "x" / "y"), "--products", "10", "-q"])
    _one_line_error(capsys, code, "ermi")  # "Permission denied" / "Operation not permitted"
    # a reader that goes away before etalage writes: etalage's own status and stderr, not a shell's
    proc = subprocess.Popen([sys.executable, "-m", "etalage.cli", "info", str(synth_dir / "train.bson")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # every write of the command now meets a closed pipe (EPIPE), whatever its size
    err = proc.stderr.read()
    assert proc.wait() == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_big_and_bomb_pictures_are_bounded():
    import io

    from PIL import Image

    from etalage.catalog.pictures import MAX_PIXELS, CorruptPicture, decode_picture

    buf = io.BytesIO()
    Image.new("RGB", (6000, 3000), (10, 20, 30)).save(buf, format="JPEG")
    pic = decode_picture(buf.getvalue())
    assert max(pic.shape) <= 3000, "a big JPEG is decoded at a reduced scale"
    buf = io.BytesIO()
    Image.new("L", (20000, 20000), 0).save(buf, format="PNG")
    with pytest.raises(CorruptPicture):
        decode_picture(buf.getvalue())
    buf = io.BytesIO()
    side = int(MAX_PIXELS ** 0.5) + 10
    Image.new("L", (side, side), 0).save(buf, format="PNG")
    with pytest.raises(CorruptPicture, match="over the limit"):
        decode_picture(buf.getvalue())
