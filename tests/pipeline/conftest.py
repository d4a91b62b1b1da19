"""A fitted second level and one finished submission, shared by the pipeline tests."""

import pytest

from etalage.cli import main
from tests.conftest import TINY


@pytest.fixture(scope="session")
def fitted_pipeline(tiny_run, synth_dir, tmp_path_factory):
    """(folder with specs/, fusion/, ocr.sqlite; the catalogue; a finished submit work folder)."""
    d = tmp_path_factory.mktemp("fusion_cli")
    train = str(synth_dir / "train.bson")
    cache = str(d / "ocr.sqlite")
    assert main(["specialists", "fit", "--train", train, "--run", str(tiny_run), "--out", str(d / "specs"),
                 "--names", "books,music", "--max-train", "25", "--ocr-engine", "tesseract", "--ocr-cache", cache,
                 "-q"]) == 0
    assert main(["fusion", "fit", "--run", str(tiny_run), "--train", train, "--specialists", str(d / "specs"),
                 "--out", str(d / "fusion"), "--ocr-cache", cache, "--workers", "0", "-q"]) == 0
    assert main(["submit", "--fusion", str(d / "fusion"), "--data", str(synth_dir / "test.bson"), "--out",
                 str(d / "sub.csv"), "--ocr-cache", cache, "--workers", "0", "-q"]) == 0
    return d, synth_dir, d / "sub_work"


def _train_args(train, out, *extra):
    args = ["train", "--train", str(train), "--out", str(out), "--epochs", "1", "-q", *extra]
    for key, value in TINY.items():
        if key not in ("workers", "val_fraction"):
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="session")
def fold_sets(synth_dir, tmp_path_factory):
    """Two fold sets of one 2-fold split of the session catalogue (tiny CNNs, gate and mean pooling)."""
    d = tmp_path_factory.mktemp("folds")
    train = synth_dir / "train.bson"
    assert main(_train_args(train, d / "a", "--folds", "2")) == 0
    assert main(_train_args(train, d / "b", "--folds", "2", "--picture-pooling", "mean")) == 0
    return d
