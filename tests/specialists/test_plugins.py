"""Third-party specialists through a real entry point: a tiny distribution installed with pip."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from etalage.catalog.synth import default_taxonomy
from etalage.specialists import base, create_specialist, discover, safe_predict

from tests.specialists.test_text_specialist import _reading

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "example_specialist"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--quiet", "--target", str(site), str(PLUGIN)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert list(site.glob("etalage_example_specialist-0.1.0.dist-info"))
    return site


@pytest.fixture
def with_plugin(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    discover.cache_clear()
    yield
    discover.cache_clear()


def test_installed_plugin_is_discovered_and_runs(with_plugin):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = discover()
    assert entries["keywords"].origin == "etalage-example-specialist"
    assert entries["books"].origin == "etalage", "built-ins register through the same entry points"
    assert entries["broken"].factory is None and "ModuleNotFoundError" in entries["broken"].error
    assert any("'broken'" in str(w.message) and "skipped" in str(w.message) for w in caught)
    tax = default_taxonomy()
    music = tax.classes_under("MUSIQUE")
    spec = create_specialist("keywords")
    spec.fit([_reading(1, "jazz blue note"), _reading(2, "rock guitar loud")], np.array([music[0], music[1]]), tax)
    out = safe_predict(spec, [_reading(3, "loud rock")])
    assert out.topk(1)[0][0, 0] == music[1]


def test_a_failing_plugin_is_reported_and_skipped(with_plugin):
    tax = default_taxonomy()
    spec = create_specialist("exploding")
    spec.fit([_reading(1, "a b")], np.array([tax.classes_under("MUSIQUE")[0]]), tax)
    with pytest.warns(UserWarning, match="specialist 'exploding' failed and is skipped: RuntimeError: boom"):
        assert safe_predict(spec, [_reading(2, "a")]) is None


def test_autoload_switch_keeps_only_builtins(with_plugin, monkeypatch):
    monkeypatch.setenv(base.AUTOLOAD_SWITCH, "1")
    discover.cache_clear()
    assert set(discover()) == {"books", "music"}


def test_specialists_list_command(plugin_site):
    import os

    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    res = subprocess.run([sys.executable, "-m", "etalage.cli", "specialists", "list"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "keywords" in res.stdout and "etalage-example-specialist" in res.stdout and "MUSIQUE" in res.stdout
    assert "broken" in res.stdout and "failed" in res.stdout
