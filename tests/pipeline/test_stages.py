"""The second level through its commands: specialists fit -> fusion fit -> submit (whole, in shards,
resumed) -> report, on the session catalogue with the tiny core run and Tesseract (fast on CPU)."""

import json
import re

import numpy as np
import pytest

from etalage.catalog import Catalog
from etalage.catalog.submission import read_id_category_csv
from etalage.cli import main


@pytest.fixture(scope="module")
def fitted(fitted_pipeline):
    return fitted_pipeline[0]


def _submit(fitted, synth_dir, out, *extra):
    return main(["submit", "--fusion", str(fitted / "fusion"), "--data", str(synth_dir / "test.bson"), "--out",
                 str(out), "--ocr-cache", str(fitted / "ocr.sqlite"), "--workers", "0", "-q", *extra])


def _accuracy(path, synth_dir):
    ids, cats = read_id_category_csv(path)
    key_ids, key_cats = read_id_category_csv(synth_dir / "test_labels.csv")
    order = np.argsort(key_ids)
    return float((key_cats[order][np.searchsorted(key_ids[order], ids)] == cats).mean())


def test_fit_trains_on_validation_products_only(fitted, tiny_run):
    val = np.load(tiny_run / "val_positions.npy")
    fit = json.loads((fitted / "fusion" / "fit_report.json").read_text())
    assert fit["products"] == len(val) and fit["kind"] in ("ranker", "binary")
    assert fit["candidate_coverage"] >= fit["core_top1"], "candidates include the core's top-1"
    for name in ("books", "music"):
        stamp = json.loads((fitted / "specs" / name / "fit.json").read_text())
        assert stamp["settings"]["excluded"] == len(val), "the specialists never saw the fusion products"
    meta = json.loads((fitted / "fusion" / "fusion.json").read_text())
    assert meta["config"]["specialist_names"] == ["books", "music"]
    assert "specialist_score" in meta["features"] and "hash_max_share" in meta["features"]


def test_submit_whole_equals_shards_and_beats_the_core(fitted, tiny_run, synth_dir, tmp_path, capsys):
    whole = tmp_path / "whole.csv"
    assert _submit(fitted, synth_dir, whole) == 0
    ids, _ = read_id_category_csv(whole)
    assert np.array_equal(ids, Catalog.open(synth_dir / "test.bson").product_ids)
    sharded = tmp_path / "sharded.csv"
    for i in range(3):
        assert _submit(fitted, synth_dir, sharded, "--chunk", "20", "--shard", f"{i}/3") == 0
    assert "other shards still to run" in capsys.readouterr().out
    assert sharded.exists(), "the last shard to finish merges"
    sharded.unlink()
    assert _submit(fitted, synth_dir, sharded, "--chunk", "20", "--merge") == 0
    assert sharded.read_text() == whole.read_text()
    core = tmp_path / "core.csv"
    assert main(["submit", "--run", str(tiny_run), "--data", str(synth_dir / "test.bson"), "--out", str(core),
                 "--workers", "0", "-q"]) == 0
    fused_acc, core_acc = _accuracy(whole, synth_dir), _accuracy(core, synth_dir)
    print(f"core {core_acc:.3f} fusion {fused_acc:.3f}")
    assert fused_acc > core_acc


def test_a_killed_submit_redoes_only_missing_parts(fitted, synth_dir, tmp_path):
    out = tmp_path / "s.csv"
    assert _submit(fitted, synth_dir, out, "--chunk", "30") == 0
    work = tmp_path / "s_work"
    fused = sorted((work / "fused").glob("part-*.npz"))
    core = sorted((work / "core").glob("part-*.npz"))
    assert len(fused) == len(core) >= 2
    fused[1].unlink()
    core[1].unlink()
    (work / "specialists" / "books" / core[1].name).unlink()
    before = {p: p.stat().st_mtime_ns for p in fused + core if p.exists()}
    first = out.read_text()
    out.unlink()
    assert _submit(fitted, synth_dir, out, "--chunk", "30") == 0
    assert out.read_text() == first
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished parts are not redone"
    assert fused[1].exists() and core[1].exists()


def test_merge_before_every_shard_names_the_command(fitted, synth_dir, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert _submit(fitted, synth_dir, out, "--chunk", "20", "--shard", "0/3") == 0
    capsys.readouterr()
    assert _submit(fitted, synth_dir, out, "--chunk", "20", "--merge") == 1
    err = capsys.readouterr().err
    assert "not fused yet" in err and "--shard i/n" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_or_mismatched_stage_outputs_are_clear_errors(fitted, synth_dir, tmp_path, capsys):
    assert main(["submit", "--fusion", str(tmp_path / "nope"), "--data", str(synth_dir / "test.bson"),
                 "--out", str(tmp_path / "x.csv"), "-q"]) == 1
    assert "etalage fusion fit" in capsys.readouterr().err
    empty = tmp_path / "no_specs"
    empty.mkdir()
    assert _submit(fitted, synth_dir, tmp_path / "y.csv", "--specialists", str(empty)) == 1
    assert "etalage specialists fit" in capsys.readouterr().err
    assert main(["fusion", "report", "--fusion", str(tmp_path / "nope"), "--out", str(tmp_path / "r.md")]) == 1
    assert "etalage fusion fit" in capsys.readouterr().err
    assert _submit(fitted, synth_dir, tmp_path / "t.csv", "--tta", "flip") == 1
    assert "etalage fusion fit --tta flip" in capsys.readouterr().err, "the core must be read as the model saw it"
    # one work folder belongs to one job
    work = tmp_path / "w"
    assert _submit(fitted, synth_dir, tmp_path / "z.csv", "--work", str(work)) == 0
    assert main(["submit", "--fusion", str(fitted / "fusion"), "--data", str(synth_dir / "train.bson"),
                 "--out", str(tmp_path / "z2.csv"), "--work", str(work), "-q"]) == 1
    assert "holds outputs made with other settings" in capsys.readouterr().err


def test_fusion_report_ablation_and_chart(fitted, tmp_path, capsys):
    md = tmp_path / "report.md"
    assert main(["fusion", "report", "--fusion", str(fitted / "fusion"), "--out", str(md), "--folds", "2",
                 "-q"]) == 0
    text = md.read_text()
    for label in ("core top-1 (no reranker)", "| core |", "core + hash", "core + id", "core + specialists",
                  "core + books", "core + music", "all but id", "| all |"):
        assert label in text, label
    assert "Feature importance" in text
    png = md.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    rows = {ln[:28].strip(): float(ln.split()[-1]) for ln in printed.splitlines()[1:10]}
    assert all(0 <= v <= 1 for v in rows.values())


def test_fusion_predict_writes_ranked_top5(fitted, synth_dir, tmp_path):
    from etalage.pipeline.predict import load_fused
    from etalage.pipeline.workdir import WorkDir

    work = tmp_path / "w"
    assert main(["fusion", "predict", "--fusion", str(fitted / "fusion"), "--data", str(synth_dir / "test.bson"),
                 "--work", str(work), "--ocr-cache", str(fitted / "ocr.sqlite"), "--workers", "0", "-q"]) == 0
    fused = load_fused(WorkDir(work))
    assert np.array_equal(fused["product_ids"], Catalog.open(synth_dir / "test.bson").product_ids)
    top, score = fused["topk_class"], fused["topk_score"]
    assert top.shape == (len(fused["product_ids"]), 5) and (top[:, 0] >= 0).all()
    filled = top >= 0
    both = filled[:, 1:] & filled[:, :-1]
    assert np.all(score[:, 1:][both] <= score[:, :-1][both]), "best first"
    assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in top), "no class twice"


def test_the_id_prior_is_used_only_where_test_ids_interleave(fitted_pipeline, tiny_run, tmp_path, caplog):
    """A fusion model fitted where the training ids looked category-ordered carries a model without id features;
    prediction picks it for products numbered apart from the training ones (a catalogue's next listings), the id
    model for products numbered among them (Cdiscount's test set), and says which."""
    import json
    import logging
    import shutil

    from etalage.catalog import Catalog
    from etalage.errors import ConfigError
    from etalage.fusion.signals import id_interleave_share
    from etalage.pipeline.plan import PredictPlan
    from etalage.pipeline.predict import id_prior_choice
    from etalage.pipeline.workdir import WorkDir

    fitted, synth_dir, _ = fitted_pipeline
    train = Catalog.open(synth_dir / "train.bson").product_ids
    test = Catalog.open(synth_dir / "test.bson").product_ids
    assert id_interleave_share(test, train) > 0.9 and id_interleave_share(train[::3], train, True) > 0.9
    assert id_interleave_share(train.max() + 1 + np.arange(50), train) == 0.0
    with pytest.raises(ConfigError, match="no model without id features"):
        id_prior_choice(PredictPlan.from_model(fitted / "fusion"), test, train, "without")
    model = tmp_path / "fusion"
    shutil.copytree(fitted / "fusion", model)
    shutil.copytree(fitted / "fusion", model / "without_id", ignore=shutil.ignore_patterns("without_id"))
    plan = PredictPlan.from_model(model, tiny_run, synth_dir / "train.bson", fitted / "specs")  # copied: paths given
    work = WorkDir(tmp_path / "work")
    work.path.mkdir()
    with caplog.at_level(logging.INFO, logger="etalage"):
        assert id_prior_choice(plan, test, train, "auto", work) == plan.model.path
        assert "fusion uses the product-id prior" in caplog.text
        after = train.max() + 1 + np.arange(len(test))
        assert id_prior_choice(plan, after, train, "auto", work) == plan.model.without_id.path
        assert "does not use the product-id prior" in caplog.text
    assert json.loads((work.path / "id_prior.json").read_text())["uses_id"] is False
    assert id_prior_choice(plan, after, train, "with") == plan.model.path
    assert id_prior_choice(plan, test, train, "without") == plan.model.without_id.path


def test_specialists_read_by_another_model_are_flagged():
    """Specialists fitted on another library's or model's readings (a rapidocr upgrade keeps the engine's
    name and options) are scored on what this installation reads: say so, once, at load."""
    import warnings

    from etalage.ocr import load_engine
    from etalage.pipeline.stages import ocr_engine_of

    key = load_engine("tesseract").cache_key
    settings = [{"engine": "tesseract", "engine_options": {}, "engine_key": key}, {"needs": ["pictures"]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ocr_engine_of(settings).cache_key == key
    old = [{**settings[0], "engine_key": "tesseract/tesseract-4.1.1/9de9e10e8057"}]
    with pytest.warns(UserWarning, match=r"fitted on covers read by tesseract/tesseract-4\.1\.1/.*this installation "
                                         r"reads with " + re.escape(key)):
        ocr_engine_of(old)
