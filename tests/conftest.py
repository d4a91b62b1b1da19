"""Session fixtures: one small synthetic catalogue (and, for core tests, one tiny trained run)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SKIPS_FILE = "ETALAGE_SKIPS_FILE"  # set by .ci/run: the skips are written there, and CI fails on any but the GPU's
_SKIPS: list[dict] = []


def pytest_runtest_logreport(report):
    """Record every skipped test with its reason (a user's fresh clone may lack Ray or ../shared; CI has all)."""
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPS.append({"test": report.nodeid, "reason": reason})


def pytest_collection_modifyitems(session, config, items):
    """The modules whose tests join the session's Ray cluster run last, whole (their module fixtures stay
    shared). A process that has been a Ray driver keeps gRPC's threads after ``ray.shutdown``, and a child
    forked from it copies them mid-state: once, in CI, a synthetic catalogue's forked painter died of
    "double free or corruption" right after the Ray Serve test. Users' processes do not mix the two (with
    ``--engine ray`` the stages run in Ray's workers, not in forked ones); the test session did."""
    ray_modules = {item.module.__name__ for item in items
                   if "ray_cluster" in getattr(item, "fixturenames", ()) and getattr(item, "module", None)}
    last = [item for item in items if getattr(getattr(item, "module", None), "__name__", None) in ray_modules]
    items[:] = [item for item in items if item not in last] + last


def pytest_sessionfinish(session, exitstatus):
    import json
    import os

    path = os.environ.get(SKIPS_FILE)
    if path:
        Path(path).write_text(json.dumps(_SKIPS, indent=1))


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """Derived files of read-only inputs (../shared/data) go to a user cache folder: the session's own."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield Path(os.environ["XDG_CACHE_HOME"])
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "category_names.csv").exists():
        pytest.skip(f"reference data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A 400-product synthetic catalogue, indexed; shared by all tests (read-only)."""
    from etalage.catalog.bsonindex import build_index
    from etalage.synth import SynthConfig, write_synthetic_catalogue

    out = tmp_path_factory.mktemp("synth")
    write_synthetic_catalogue(out, SynthConfig(products=400, seed=3, workers=2))
    build_index(out / "train.bson")
    build_index(out / "test.bson")
    return out


TINY = dict(backbone="test_efficientnet", weights="none", picture_size=64, crop=56, batch_size=16,
            val_fraction=0.2, workers=0, lr=3e-3)


@pytest.fixture(scope="session")
def tiny_run(synth_dir, tmp_path_factory) -> Path:
    """A tiny CNN trained for 3 epochs on the session catalogue (CPU, seconds)."""
    from etalage.core.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run") / "tiny"
    train(TrainConfig(train=str(synth_dir / "train.bson"), out=str(run), epochs=3, **TINY), progress=False)
    return run


PLUGIN = Path(__file__).resolve().parent / "plugins" / "example_specialist"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The example third-party plugins (tests/plugins/example_specialist) installed with pip into a
    folder of their own."""
    import subprocess
    import sys

    site = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--quiet", "--target", str(site), str(PLUGIN)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert list(site.glob("etalage_example_specialist-0.1.0.dist-info"))
    return site


@pytest.fixture
def with_plugin(plugin_site, monkeypatch):
    """The example plugins importable and discovered (for this test only)."""
    from etalage.specialists import discover

    monkeypatch.syspath_prepend(str(plugin_site))
    discover.cache_clear()
    yield plugin_site
    discover.cache_clear()


@pytest.fixture(scope="session")
def ray_cluster():
    """A head and a worker node of 1 CPU each, one for the session (the pipeline's Ray engine and Ray
    Serve share it); the worker node is the one the engine's tests remove (and re-add)."""
    import os

    pytest.importorskip("ray", reason="--engine ray needs Ray: pip install 'etalage[ray]' (scripts/setup.sh)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()
