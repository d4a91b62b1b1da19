"""Third-party specialists through a real entry point: a tiny distribution installed with pip, with
well-behaved plugins (one that reads, one that looks, one of the old contract) and faulty ones."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from etalage.errors import ConfigError
from etalage.specialists import create_specialist, discover, plugins, shadowed
from etalage.specialists.guard import check_fitted, guarded_gate, guarded_predict
from etalage.specialists.runner import load_fitted
from etalage.specialists.testing import check_specialist, make_reading
from etalage.synth import default_taxonomy


def _music_data(n=6):
    tax = default_taxonomy()
    music = tax.classes_under("MUSIQUE")
    readings = [make_reading(f"{w} {w}", i) for i, w in enumerate(["jazz", "rock", "jazz", "rock", "jazz", "rock"][:n])]
    return tax, readings, np.array([music[0], music[1]] * (n // 2))


def test_installed_plugins_are_discovered_named_by_their_entry_point(with_plugin):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = discover()
    assert entries["keywords"].origin == "etalage-example-specialist"
    assert entries["books"].origin == "etalage", "built-ins register through the same entry points"
    assert create_specialist("keywords").name == "keywords", "the entry-point name is the plugin's name"
    assert entries["broken"].factory is None and "ModuleNotFoundError" in entries["broken"].error
    assert entries["renamed"].factory is None and "registered as 'renamed'" in entries["renamed"].error
    assert any("'broken'" in str(w.message) and "skipped" in str(w.message) for w in caught)
    hidden = {e.name: e for e in shadowed()}
    assert hidden["books"].origin == "etalage-example-specialist" and hidden["books"].shadowed_by == "etalage"


def test_example_plugins_pass_check_specialist(with_plugin):
    for name in ("keywords", "colours"):
        spec = check_specialist(discover()[name].factory)
        assert spec.name == name
    assert discover()["colours"].factory.needs == ("pictures",)
    with pytest.raises(AssertionError, match="scores have shape"):
        check_specialist(discover()["wide"].factory)


def test_a_new_contract_plugin_saves_as_data_only(with_plugin, tmp_path):
    tax, readings, labels = _music_data()
    spec = create_specialist("keywords", smoothing=0.01).fit(readings, labels, tax)
    spec.save(tmp_path / "kw")
    assert sorted(p.name for p in (tmp_path / "kw").iterdir()) == ["specialist.json", "state.skops"]
    again = type(spec).load(tmp_path / "kw")
    assert again.smoothing == 0.01, "constructor options come back"
    assert np.allclose(again.predict(readings).scores, spec.predict(readings).scores)


def test_the_old_contract_still_works_with_a_deprecation_warning(with_plugin, tmp_path):
    with pytest.warns(DeprecationWarning, match="'oldstyle'.*defines its own save/load"):
        discover.cache_clear()
        discover()
    tax, readings, labels = _music_data()
    spec = create_specialist("oldstyle")
    assert spec.fit(readings, labels, tax) is None
    spec.save(tmp_path / "oldstyle")
    (tmp_path / "oldstyle" / "fit.json").write_text('{"settings": {}}')
    [again] = load_fitted(tmp_path, ["oldstyle"])
    assert np.allclose(again.predict(readings).scores, spec.predict(readings).scores)


@pytest.mark.parametrize("name, check", [
    ("exploding", "RuntimeError: boom"),
    ("wide", r"scores have shape \(3, 7\), expected \(3, 6\)"),
    ("foreign", "outside the taxonomy"),
    ("nan", "NaN"),
])
def test_faulty_predictions_are_contained_with_one_warning(with_plugin, name, check):
    tax, readings, labels = _music_data()
    spec = create_specialist(name).fit(readings, labels, tax)
    with pytest.warns(UserWarning, match=f"specialist '{name}' failed in predict .*{check}") as caught:
        assert guarded_predict(spec, readings[:3], tax) is None
    assert len([w for w in caught if name in str(w.message)]) == 1, "warned once"
    with pytest.raises(ConfigError, match=f"specialist '{name}' fails on its own training products"):
        check_fitted(spec, readings, tax)


def test_a_failing_gate_is_contained(with_plugin):
    from etalage.core.ranking import CoreRanking

    tax, readings, labels = _music_data()
    spec = create_specialist("badgate").fit(readings, labels, tax)
    n, k = 4, 3
    ranking = CoreRanking(np.arange(n), np.zeros((n, k), np.int32), np.zeros((n, k), np.float16), np.ones(n, np.int8),
                          np.zeros((n, 4, k), np.int32), np.zeros((n, 4, k), np.float16),
                          np.zeros((n, tax.n_level1), np.float16), None, {})
    with pytest.warns(UserWarning, match="'badgate' failed in gate .*KeyError"):
        assert guarded_gate(spec, ranking, tax) is None


def test_autoload_switch_keeps_only_builtins(with_plugin, monkeypatch):
    monkeypatch.setenv(plugins.AUTOLOAD_SWITCH, "1")
    discover.cache_clear()
    assert set(discover()) == {"books", "music", "media", "title"}


def test_specialists_list_command(plugin_site):
    import os

    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    res = subprocess.run([sys.executable, "-m", "etalage.cli", "specialists", "list"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "keywords" in out and "etalage-example-specialist" in out and "MUSIQUE" in out
    assert "broken" in out and "failed" in out
    assert "shadowed by etalage" in out, "a plugin under a taken name is shown, not hidden"
