"""What plugin authors and Kaggle competitors rely on: read-only inputs, config files, readable outputs,
time-boxed training, flags before or after the command."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from etalage.cli import main
from tests.conftest import TINY


def _tiny_flags(**overrides):
    out = []
    for key, value in {**TINY, **overrides}.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_every_command_works_on_a_read_only_input_folder(tmp_path, monkeypatch, capsys):
    """As on Kaggle (/kaggle/input is read-only): indexes, hashes and caches go elsewhere."""
    data = tmp_path / "input"
    assert main(["synth", "--out", str(data), "--products", "160", "--seed", "5", "--workers", "1", "-q"]) == 0
    data.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    before = _tree(data)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home_cache"))
    work = tmp_path / "work"
    train, test = str(data / "train.bson"), str(data / "test.bson")
    steps = [
        ["index", train, test, "--md5", "-q"],
        ["info", train, "-q"],
        ["hash", test, "-q"],
        ["train", "--train", train, "--out", str(work / "run"), "--epochs", "1", "-q", *_tiny_flags()],
        ["predict", "--run", str(work / "run"), "--data", test, "--out", str(work / "pred"), "-q"],
        ["specialists", "fit", "--train", train, "--run", str(work / "run"), "--out", str(work / "specs"), "--names",
         "music", "--max-train", "10", "--ocr-engine", "tesseract", "--set", 'music.image="off"', "-q"],
        ["fusion", "fit", "--run", str(work / "run"), "--train", train, "--specialists", str(work / "specs"), "--out",
         str(work / "fusion"), "--workers", "0", "-q"],
        ["submit", "--fusion", str(work / "fusion"), "--data", test, "--out", str(work / "sub.csv"), "--workers", "0",
         "-q"],
        ["score", "--submission", str(work / "sub.csv"), "--labels", str(data / "test_labels.csv")],
    ]
    for argv in steps:
        assert main(argv) == 0, (argv[0], capsys.readouterr().err)
    assert _tree(data) == before, "nothing was written into the input folder"
    cached = list((tmp_path / "home_cache" / "etalage").rglob("*"))
    assert any(p.name == "train.bson.idx.npz" for p in cached) and any(p.name == "ocr-cache.sqlite" for p in cached)
    data.chmod(0o755)


def test_a_run_from_its_config_file_equals_one_from_flags(synth_dir, tmp_path):
    flags = ["--train", str(synth_dir / "train.bson"), "--epochs", "1", "--warmup", "0.1", "--label-smoothing", "0.05",
             "--dropout", "0.1", "-q", *_tiny_flags(lr=0.004)]
    assert main(["train", *flags, "--out", str(tmp_path / "a")]) == 0
    saved = (tmp_path / "a" / "config.yaml").read_text()
    assert "label_smoothing: 0.05" in saved and "warmup: 0.1" in saved
    assert main(["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b"), "-q"]) == 0
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "same settings, same weights"
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["lr"] == 0.004 and cfg["out"] == str(tmp_path / "b"), "flags after --config win"


def test_rankings_are_parquet_with_category_ids(tiny_run, synth_dir, tmp_path):
    import pyarrow.parquet as pq

    from etalage.catalog import Catalog, Taxonomy

    assert main(["predict", "--run", str(tiny_run), "--data", str(synth_dir / "test.bson"), "--out",
                 str(tmp_path / "pred"), "--topk", "3", "-q"]) == 0
    table = pq.read_table(tmp_path / "pred" / "ranking.parquet")  # what pandas.read_parquet reads too
    n = len(Catalog.open(synth_dir / "test.bson"))
    assert table.column_names == ["product_id", "rank", "category_id", "class_index", "probability"]
    rank = table["rank"].to_numpy()
    assert len(rank) == 3 * n and rank.min() == 1 and rank.max() == 3
    tax = Taxonomy.load(synth_dir / "category_names.csv")
    assert (tax.category_ids[table["class_index"].to_numpy()] == table["category_id"].to_numpy()).all()


def test_lightgbm_model_names_its_features(tiny_run, synth_dir, tmp_path):
    assert main(["fusion", "fit", "--run", str(tiny_run), "--train", str(synth_dir / "train.bson"), "--out",
                 str(tmp_path / "f"), "--workers", "0", "--set", "num_leaves=7", "--set", "learning_rate=0.2",
                 "-q"]) == 0
    text = (tmp_path / "f" / "fusion.lgb.txt").read_text()
    names = json.loads((tmp_path / "f" / "fusion.json").read_text())["features"]
    assert f"feature_names={' '.join(names)}" in text and "Column_0" not in text
    assert "[num_leaves: 7]" in text and "[learning_rate: 0.2]" in text


def test_time_boxed_training_ends_on_a_decayed_rate(synth_dir, tmp_path):
    from etalage.core.config import TrainConfig
    from etalage.core.train import train

    cfg = TrainConfig(train=str(synth_dir / "train.bson"), out=str(tmp_path / "t"), epochs=50, max_minutes=0.15,
                      warmup=0.05, **{**TINY, "lr": 0.01})
    res = train(cfg, progress=False)
    assert res.status == "finished"
    assert res.metrics["lr"] < 0.5 * cfg.lr, f"ended at lr {res.metrics['lr']}: still warming up or undecayed"


def test_ocr_with_everything_cached_loads_no_network(synth_dir, tmp_path, monkeypatch, capsys):
    from etalage.ocr import easyocr_engine

    argv = ["ocr", "--data", str(synth_dir / "train.bson"), "--ocr-engine", "easyocr", "--groups", "MUSIQUE",
            "--ocr-cache", str(tmp_path / "c.sqlite"), "--scale", "1.5", "-q"]
    assert main(argv) == 0
    capsys.readouterr()

    def refuse(self):
        raise AssertionError("the networks were loaded")

    monkeypatch.setattr(easyocr_engine.EasyOcrEngine, "_load", refuse)
    assert main(argv) == 0
    assert " 0 read" in capsys.readouterr().out


def test_verbosity_flags_before_or_after_the_command(synth_dir, capsys):
    assert main(["-q", "info", str(synth_dir / "train.bson")]) == 0
    assert main(["info", str(synth_dir / "train.bson"), "-q"]) == 0
    assert main(["--cache-dir", os.devnull + "x", "score", "--submission", str(synth_dir / "test_labels.csv"),
                 "--labels", str(synth_dir / "test_labels.csv")]) == 0
    assert "accuracy 1.0000" in capsys.readouterr().out


def test_progress_bars_stay_out_of_log_files(monkeypatch):
    from etalage.progress import bars_wanted

    monkeypatch.delenv("ETALAGE_PROGRESS", raising=False)
    assert not bars_wanted(True), "stderr is not a terminal under pytest"
    monkeypatch.setenv("ETALAGE_PROGRESS", "1")
    assert bars_wanted(True) and not bars_wanted(False)


@pytest.mark.parametrize("argv, old, new", [
    (["train", "--picture-fusion", "mean"], "--picture-fusion", "--picture-pooling"),
    (["train", "--fusion", "mean"], "--fusion", "--picture-pooling"),
    (["submit", "--test", "x.bson"], "--test", "--data"),
    (["fusion", "report", "--model", "f"], "--model", "--fusion"),
    (["ocr", "--data", "x.bson", "--cache", "c.sqlite"], "--cache", "--ocr-cache"),
    (["ocr", "--data", "x.bson", "--engine", "tesseract"], "--engine", "--ocr-engine"),
    (["demo", "--minutes", "1"], "--minutes", "--max-minutes"),
    (["train", "--picture-fus", "mean"], "--picture-fus", None),  # prefixes are not accepted
])
def test_old_spellings_and_prefixes_are_refused(argv, old, new, capsys):
    """1.0 keeps one spelling per idea: an old flag (or any prefix of a flag) is an unrecognised argument, exit
    status 2, with a hint naming the new spelling where there is one."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert old in err
    assert (f"{old} is now {new}" in err) if new else "is now" not in err


def test_check_specialist_on_a_plugin_built_from_the_docs(tmp_path):
    """docs/plugins.md's two examples, copied from the page, pass etalage's own checks."""
    import re

    from etalage.specialists.testing import check_specialist

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    namespace: dict = {}
    exec("\n".join(b for b in blocks if "class KeywordSpecialist" in b or "class ColourSpecialist" in b), namespace)
    from etalage.specialists.testing import make_reading

    for name in ("KeywordSpecialist", "ColourSpecialist"):
        spec = check_specialist(namespace[name])
        out = spec.predict([make_reading("roman policier"), make_reading("")])
        assert out.scores.shape == (2, len(out.class_indices)) and out.scores.shape[1] > 0
        assert np.isfinite(out.scores).all() and np.isfinite(out.features).all()


def test_a_config_file_of_etalage_0x_is_refused_naming_the_key(tmp_path, capsys):
    """A run folder's config.yaml written by 0.x with a removed key: one line naming the key and its 1.0 name."""
    old = tmp_path / "config.yaml"
    old.write_text("picture_fusion: mean\nbatch_size: 16\n")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(old), "--train", "x.bson", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "the key picture_fusion is now picture_pooling" in capsys.readouterr().err
