"""The Ray engine (``--engine ray``) on a simulated two-node cluster (``ray.cluster_utils.Cluster``, one
CPU per node, one cluster for the session): the submission and every part file identical to the local
engine's; a node removed mid-run and a driver killed mid-run change nothing in the result (and the
driver's rerun does not redo the finished chunks); a failing plugin is contained; predict and ocr."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from etalage.cli import main

ray = pytest.importorskip("ray", reason="--engine ray needs Ray: pip install 'etalage[ray]' (scripts/setup.sh)")

CHUNK = "40"  # the synthetic test dump's 96 products: 3 chunks


def _chunks(synth_dir, size) -> int:
    from etalage.catalog import Catalog

    return -(-len(Catalog.open(synth_dir / "test.bson")) // int(size))


@pytest.fixture(scope="module")
def fitted(fitted_pipeline):
    return fitted_pipeline[0]


def _argv(fitted, synth_dir, out, *extra):
    return ["submit", "--fusion", str(fitted / "fusion"), "--data", str(synth_dir / "test.bson"), "--out", str(out),
            "--ocr-cache", str(fitted / "ocr.sqlite"), "--workers", "0", "-q", *extra]


def _ray(cluster):
    return ["--engine", "ray", "--ray-address", cluster.address]


def _arrays(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for p in sorted(folder.rglob("part-*.npz")):
        with np.load(p) as z:
            out[str(p.relative_to(folder))] = {k: z[k] for k in z.files}
    return out


def _same_parts(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    assert sorted(left) == sorted(right) and left
    for name in left:
        assert sorted(left[name]) == sorted(right[name]), name
        for k in left[name]:
            a, b = left[name][k], right[name][k]
            if a.dtype.kind == "f":  # the actors' thread counts change float summation order, nothing more
                assert a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True), f"{name}: {k}"
            else:
                assert np.array_equal(a, b), f"{name}: {k} differs"


@pytest.fixture(scope="module")
def local_chunked(fitted, synth_dir, tmp_path_factory):
    """The local engine's submission with the tests' chunk size (the reference)."""
    d = tmp_path_factory.mktemp("local40")
    assert main(_argv(fitted, synth_dir, d / "s.csv", "--chunk", CHUNK)) == 0
    return d


def test_ray_submission_and_parts_equal_the_local_engines(fitted, synth_dir, local_chunked, ray_cluster, tmp_path):
    out = tmp_path / "s.csv"
    assert main(_argv(fitted, synth_dir, out, "--chunk", CHUNK, *_ray(ray_cluster))) == 0
    assert out.read_bytes() == (local_chunked / "s.csv").read_bytes()
    assert out.read_bytes() == (fitted / "sub.csv").read_bytes(), "the chunk size changes nothing either"
    _same_parts(tmp_path / "s_work", local_chunked / "s_work")
    import json

    stats = json.loads((tmp_path / "s_work" / "engine_stats.json").read_text())
    n = sum(1 for _ in open(local_chunked / "s.csv")) - 1
    assert stats["stages"]["core"]["chunks_worked"] == _chunks(synth_dir, CHUNK) >= 3
    assert stats["stages"]["fusion"]["products"] == n
    # the report names the cluster it ran on (which actor works which chunk is Ray's call: on a loaded machine
    # the first actor up can take them all, so the nodes that worked are not asserted; the layout is, below)
    assert stats["layout"]["nodes"] == 2 and {"core", "fusion"} <= set(stats["layout"]["stages"])
    # a rerun finds every chunk done and starts no Ray at all
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "s_work").rglob("part-*.npz")}
    out.unlink()
    assert main(_argv(fitted, synth_dir, out, "--chunk", CHUNK, *_ray(ray_cluster))) == 0
    assert out.read_bytes() == (local_chunked / "s.csv").read_bytes()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_a_node_lost_mid_run_changes_nothing(fitted, synth_dir, local_chunked, ray_cluster, tmp_path):
    out, work = tmp_path / "s.csv", tmp_path / "s_work"
    removed = threading.Event()

    def remove_when_started():
        deadline = time.time() + 120
        while time.time() < deadline and not list((work / "core").glob("part-*.npz")):
            time.sleep(0.02)
        ray_cluster.remove_node(ray_cluster.worker)  # its actors and tasks die mid-chunk
        removed.set()

    watcher = threading.Thread(target=remove_when_started, daemon=True)
    watcher.start()
    try:
        assert main(_argv(fitted, synth_dir, out, "--chunk", "20", *_ray(ray_cluster))) == 0
    finally:
        watcher.join(timeout=130)
        ray_cluster.worker = ray_cluster.add_node(num_cpus=1)  # back to two nodes for the other tests
        ray_cluster.wait_for_nodes()
    assert removed.is_set()
    assert out.read_bytes() == (local_chunked / "s.csv").read_bytes()
    assert len(list((work / "fused").glob("part-*.npz"))) == _chunks(synth_dir, 20)


def test_a_killed_driver_continues_with_the_same_command(fitted, synth_dir, local_chunked, ray_cluster, tmp_path):
    out, work = tmp_path / "s.csv", tmp_path / "s_work"
    argv = _argv(fitted, synth_dir, out, "--chunk", "10", *_ray(ray_cluster))
    driver = subprocess.Popen([sys.executable, "-m", "etalage.cli", *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 150
    while time.time() < deadline and driver.poll() is None and len(list((work / "fused").glob("part-*.npz"))) < 3:
        time.sleep(0.02)
    driver.kill()
    driver.wait()
    assert driver.returncode != 0, "killed mid-run: " + (driver.stderr.read() if driver.stderr else "")
    total = _chunks(synth_dir, 10)
    assert 3 <= len(list((work / "fused").glob("part-*.npz"))) < total and not out.exists()
    time.sleep(1.0)  # Ray stops the killed job's workers
    before = {p: p.stat().st_mtime_ns for p in work.rglob("part-*.npz")}
    assert main(argv) == 0
    assert out.read_bytes() == (local_chunked / "s.csv").read_bytes()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished chunks are not redone"
    assert len(list((work / "fused").glob("part-*.npz"))) == total
    import json

    stats = json.loads((work / "engine_stats.json").read_text())
    assert stats["stages"]["fusion"]["chunks_worked"] == total - len([p for p in before if p.parent.name == "fused"])


def test_a_failing_plugin_is_contained_in_its_chunk(fitted_pipeline, tmp_path, monkeypatch):
    """The specialists stage's step (what every actor runs, here in-process): a plugin failing on a chunk costs
    that chunk, with the guard's warning in the report the driver raises again, and its next try recovers it
    (so that fusion redoes it)."""
    import shutil
    import warnings

    from etalage.catalog import Catalog
    from etalage.pipeline.engine import warn_back
    from etalage.pipeline.plan import PredictPlan
    from etalage.pipeline.stages import FusionInputs, FusionStage, SpecialistsJob, SpecialistsStage
    from etalage.pipeline.workdir import WorkDir
    from etalage.specialists.books import BooksSpecialist

    fitted, synth_dir, sub_work = fitted_pipeline
    work = tmp_path / "w"
    shutil.copytree(sub_work, work)
    plan = PredictPlan.from_model(fitted / "fusion")
    cat = Catalog.open(synth_dir / "test.bson", md5=True)
    n = len(cat)
    tag = f"000000000-{n:09d}"
    (work / "specialists" / "books" / f"part-{tag}.npz").unlink()
    job = SpecialistsJob(plan.specialists, plan.specialist_names, fitted / "ocr.sqlite", work / "core",
                         work / "specialists", producer="etalage submit ...")
    stage = SpecialistsStage(cat, job, plan.taxonomy())
    assert stage.todo((0, n), {})

    def boom(self, readings):
        raise ConnectionError("the cover service is down")

    monkeypatch.setattr(BooksSpecialist, "predict", boom)
    stage.open(1)
    report = stage.run((0, n))
    stage.close()
    assert report["failed"] == ["books"] and not report["recovered"]
    assert any("specialist 'books' failed in predict" in w and "ConnectionError" in w for w in report["warnings"])
    assert (work / "specialists" / "books" / f"failed-{tag}.json").exists()
    with pytest.warns(UserWarning, match="specialist 'books' failed in predict"):
        warn_back(report)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stage.open(1)
        report = stage.run((0, n))
        stage.close()
    assert report["recovered"] and report["failed"] == [] and report["scored"]["books"] > 0
    assert not (work / "specialists" / "books" / f"failed-{tag}.json").exists()
    fusion = FusionStage(FusionInputs(plan, WorkDir(work), cat, plan.taxonomy(), None))
    assert fusion.todo((0, n), {"specialists": report}), "a chunk fused without a specialist is fused again"
    assert not fusion.todo((0, n), {})


def test_predict_and_ocr_on_ray(tiny_run, synth_dir, ray_cluster, tmp_path):
    from etalage.core.ranking import CoreRanking

    local, remote = tmp_path / "local", tmp_path / "remote"
    base = ["predict", "--run", str(tiny_run), "--data", str(synth_dir / "test.bson"), "--workers", "0", "-q"]
    assert main([*base, "--out", str(local)]) == 0
    assert main([*base, "--out", str(remote), *_ray(ray_cluster)]) == 0
    _same_parts(local, remote)
    assert (remote / "ranking.parquet").read_bytes() == (local / "ranking.parquet").read_bytes()
    from etalage.catalog import Catalog

    assert len(CoreRanking.load(remote)) == len(Catalog.open(synth_dir / "test.bson"))
    cache = tmp_path / "ocr.sqlite"
    argv = ["ocr", "--data", str(synth_dir / "train.bson"), "--ocr-engine", "tesseract", "--groups", "MUSIQUE",
            "--ocr-cache", str(cache), "-q", *_ray(ray_cluster), "--workers", "2"]
    assert main(argv) == 0
    import sqlite3

    with sqlite3.connect(cache) as db:
        n = db.execute("SELECT count(*) FROM pictures").fetchone()[0]
    assert n > 0


def test_fusion_fit_fusion_predict_and_audit_on_ray_equal_the_local_engines(fitted_pipeline, tiny_run, synth_dir,
                                                                             local_chunked, ray_cluster, tmp_path):
    """The jobs that could not run on Ray before: fusion fit (its held-out core predictions and specialist
    scores), fusion predict and audit give the local engine's outputs."""
    import csv

    fitted, _, _ = fitted_pipeline
    train = str(synth_dir / "train.bson")
    assert main(["fusion", "fit", "--run", str(tiny_run), "--train", train, "--specialists", str(fitted / "specs"),
                 "--out", str(tmp_path / "fusion"), "--ocr-cache", str(fitted / "ocr.sqlite"), "--workers", "0",
                 "-q", *_ray(ray_cluster)]) == 0
    for part in ("core_val", "specialists_val"):
        _same_parts(tmp_path / "fusion" / part, fitted / "fusion" / part)
    with np.load(tmp_path / "fusion" / "table.npz") as ray_table, np.load(fitted / "fusion" / "table.npz") as local:
        assert sorted(ray_table.files) == sorted(local.files)
        for k in local.files:
            if local[k].dtype.kind in "USO":  # feature names
                assert np.array_equal(ray_table[k], local[k]), k
            else:
                assert np.allclose(ray_table[k], local[k], rtol=1e-4, atol=1e-5, equal_nan=True), k
    work = tmp_path / "fp_work"
    assert main(["fusion", "predict", "--fusion", str(fitted / "fusion"), "--data", str(synth_dir / "test.bson"),
                 "--work", str(work), "--chunk", CHUNK, "--ocr-cache", str(fitted / "ocr.sqlite"), "--workers", "0",
                 "-q", *_ray(ray_cluster)]) == 0
    _same_parts(work, local_chunked / "s_work")
    audits = {}
    for name, extra in (("local", []), ("ray", _ray(ray_cluster))):
        out = tmp_path / f"audit_{name}"
        assert main(["audit", "--run", str(tiny_run), "--data", train, "--out", str(out), "--workers", "0", "-q",
                     *extra]) == 0
        with (out / "suspects.csv").open() as fh:
            audits[name] = [(r["product_id"], r["suggested_category_id"], float(r["suspicion"]))
                            for r in csv.DictReader(fh)]
    assert [r[:2] for r in audits["ray"]] == [r[:2] for r in audits["local"]] and audits["local"]
    assert np.allclose([r[2] for r in audits["ray"]], [r[2] for r in audits["local"]], atol=1e-4)


class _FakeRay:
    """What ``Layout.of_cluster`` reads of a cluster: its resources and its nodes."""

    def __init__(self, node_cpus: list[float], gpus: float = 0.0):
        self.node_cpus, self.gpus = node_cpus, gpus

    def cluster_resources(self):
        return {"CPU": sum(self.node_cpus), **({"GPU": self.gpus} if self.gpus else {})}

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": c}} for c in self.node_cpus] + [{"Alive": False,
                                                                                      "Resources": {"CPU": 64}}]


def test_the_layout_of_a_cluster():
    """CPUs only: a pool of as many core actors as nodes, each with the threads of one node; one actor per node
    for the other stages. GPUs: a core actor per GPU. A dead node counts for nothing."""
    from types import SimpleNamespace

    from etalage.pipeline.ray_engine import Layout, Placement

    stages = [SimpleNamespace(name="core"), SimpleNamespace(name="fusion")]
    cpu = Layout.of_cluster(_FakeRay([8, 8, 8]), stages, "auto")
    assert cpu.nodes == 3 and cpu.stages["core"] == Placement(3, 0.25, 0.0, 8)
    assert cpu.stages["fusion"] == Placement(3, 0.15, 0.0, 1)
    gpu = Layout.of_cluster(_FakeRay([16, 16], gpus=4), stages, "auto")
    assert gpu.stages["core"] == Placement(4, 1.0, 1.0, 2) and gpu.stages["fusion"].actors == 12
    assert Layout.of_cluster(_FakeRay([16, 16], gpus=4), stages, "cpu").stages["core"] == Placement(2, 0.25, 0.0, 16)


def test_the_layout_leaves_cpu_for_the_read_tasks():
    """A GPU node with few cores: the actors' reservations shrink so the read tasks can start (else it hangs)."""
    from etalage.errors import ConfigError
    from etalage.pipeline.ray_engine import READ_CPUS, Layout, Placement

    lay = Layout(nodes=1, cpus=2.0, gpus=1.0, stages={"core": Placement(1, 1.0, 1.0, 2),
                                                       "specialists": Placement(1, 1.0, 0.0, 2),
                                                       "fusion": Placement(2, 0.5, 0.0, 1)}).fitted()
    held = sum(p.actors * p.cpus for p in lay.stages.values())
    assert held <= lay.cpus - 2 * READ_CPUS + 1e-9 and all(p.cpus > 0 for p in lay.stages.values())
    roomy = Layout(nodes=1, cpus=16.0, stages={"core": Placement(1, 0.25, 0.0, 16)}).fitted()
    assert roomy.stages["core"].cpus == 0.25, "nothing changes where there is room"
    with pytest.raises(ConfigError, match="leave nothing"):
        Layout(nodes=1, cpus=0.05).fitted()
    roomy.force({"core.actors": 3})
    assert roomy.stages["core"].actors == 3
    with pytest.raises(ConfigError, match="unknown Ray layout setting 'fusion.actors'"):
        roomy.force({"fusion.actors": 2})
