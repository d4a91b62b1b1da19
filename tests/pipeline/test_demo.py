"""End-to-end commands on the synthetic catalogue: submit and the demo."""

import json

import numpy as np

from etalage.catalog import Catalog
from etalage.catalog.submission import read_id_category_csv
from etalage.cli import main


def test_submit_covers_every_test_product_in_order(tiny_run, synth_dir, tmp_path, capsys):
    out = tmp_path / "submission.csv"
    assert main(["submit", "--run", str(tiny_run), "--data", str(synth_dir / "test.bson"), "--out", str(out),
                 "--workers", "0", "-q"]) == 0
    ids, cats = read_id_category_csv(out)
    assert np.array_equal(ids, Catalog.open(synth_dir / "test.bson").product_ids)
    assert main(["score", "--submission", str(out), "--labels", str(synth_dir / "test_labels.csv")]) == 0
    acc = float(capsys.readouterr().out.split("accuracy ")[1].split()[0])
    assert acc > 3 / 45, "the tiny model does better than chance on the test set"


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--products", "240", "--max-minutes", "0.3", "--backbone", "test_efficientnet",
            "--weights", "none", "--picture-size", "48", "--crop", "40", "--ocr-engine", "tesseract",
            "--specialist-train", "30", "-q"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "core" in text and "LIBRAIRIE" in text
    for name in ("submission.csv", "test_labels.csv", "category_names.csv", "report.json"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["test_products"] > 0
    for stage in ("core", "core+specialists", "fusion"):
        assert 0.0 <= report[stage] <= 1.0 and stage in text, stage
    # Which stage wins is the full demo's figure (docs/benchmarks.md, "Demo"): 240 products leave fusion 24 to learn from.
    groups = report["per_level1"]
    assert sum(g["products"] for g in groups.values()) == report["test_products"]
    for stage in ("core", "core+specialists", "fusion"):
        weighted = sum(g["products"] * g[stage] for g in groups.values()) / report["test_products"]
        assert abs(weighted - report[stage]) < 1e-9, f"per-group {stage} adds up to the overall figure"
    ablation = {row["signals"] for row in report["fusion_ablation"]}
    assert {"core", "core + id", "all but id", "all"} <= ablation, "the id features' share is reported"
    assert report["pictures"] == {"books": "drawn", "music": "drawn", "other groups": "drawn"}
    key_ids, key_cats = read_id_category_csv(out / "test_labels.csv")
    ids, cats = read_id_category_csv(out / "submission.csv")
    order = np.argsort(key_ids)
    assert (key_cats[order][np.searchsorted(key_ids[order], ids)] == cats).mean() == report["fusion"], \
        "submission.csv is the fused one"
    rows = {r["specialist"]: r for r in report["specialists"]}
    assert set(rows) == {"media"} and rows["media"]["groups"] == ["LIBRAIRIE", "MUSIQUE"]
    assert 0 < rows["media"]["train_products"] <= 30
    assert (out / "specialists" / "media" / "state.skops").exists(), "saved as data, not a pickle"
    assert (out / "fusion" / "fusion.lgb.txt").exists()
    # a second run reuses every finished stage
    assert main([a for a in argv if a != "-q"]) == 0
    assert capsys.readouterr().err.count("reusing") >= 3


def test_specialists_rule_lets_a_multi_group_specialist_move_products_between_its_groups():
    from etalage.pipeline.demo import specialists_rule

    level1_of = np.array([0, 0, 1, 1, 2, 2])           # classes 0-1 books, 2-3 music, 4-5 other
    core = np.array([0, 1, 4, 2, 0])
    media = (np.array([0, 1, 2, 3, 4]), np.array([3, 0, 1, 2, -1]), [0, 1])
    books = (np.array([1]), np.array([1]), [0])
    out = specialists_rule(core, [media], level1_of)
    assert out.tolist() == [3, 0, 4, 2, 0], "moved across its groups; not where the core says 'other'; no vote kept"
    assert core.tolist() == [0, 1, 4, 2, 0], "the core's array is left as it was"
    # a one-group specialist after it only acts where the product now sits in its group
    assert specialists_rule(core, [media, books], level1_of).tolist() == [3, 1, 4, 2, 0]
