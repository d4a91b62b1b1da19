"""The command line: help texts, start-up without torch, one-line errors with non-zero exit."""

import argparse
import subprocess
import sys

import pytest

from etalage.cli import build_parser, main

DATA_COMMANDS = ["synth", "pack", "index", "hash", "info", "score"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "etalage.cli", *args], capture_output=True, text=True)


def test_every_command_and_flag_has_help(capsys):
    parser, handlers = build_parser()
    assert {(c,) for c in DATA_COMMANDS} <= set(handlers)
    for path in handlers:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        first = out.splitlines()[0]
        assert first.startswith("usage: etalage") and all(w in first.split() for w in path) and len(out) > 200, path
    missing = []

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
            elif action.option_strings and action.dest != "help" and not (action.help or "").strip():
                missing.append((path, action.option_strings[0]))
            elif not action.option_strings and not (action.help or "").strip():
                missing.append((path, action.dest))
    walk(parser, ())
    assert not missing, f"flags without help: {missing}"


def test_data_commands_do_not_import_torch(synth_dir):
    code = ("import sys; from etalage.cli import main; "
            f"main(['info', r'{synth_dir / 'train.bson'}', '-q']); "
            f"main(['index', r'{synth_dir / 'test.bson'}', '-q']); "
            f"main(['score', '--submission', r'{synth_dir / 'sample_submission.csv'}', "
            f"'--labels', r'{synth_dir / 'test_labels.csv'}']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_info_and_score_report(synth_dir, capsys):
    assert main(["info", str(synth_dir / "train.bson"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "pictures per product" in out and "LIBRAIRIE" in out
    assert main(["score", "--submission", str(synth_dir / "test_labels.csv"),
                 "--labels", str(synth_dir / "test_labels.csv")]) == 0
    assert "accuracy 1.0000" in capsys.readouterr().out


def test_synth_and_index_commands(tmp_path):
    res = _run("synth", "--out", str(tmp_path), "--products", "40", "--seed", "1", "-q", "--workers", "1")
    assert res.returncode == 0, res.stderr
    res = _run("index", str(tmp_path / "train.bson"), "--md5", "-q", "--check-categories")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "train.bson.idx.npz").exists() and (tmp_path / "train.bson.md5.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["info", "missing.bson"], "missing.bson: no such file"),
    (["index", "notbson.bson"], "notbson.bson: offset 0: not a BSON document"),
    (["score", "--submission", "missing.csv", "--labels", "missing.csv"], "missing.csv: cannot read"),
    (["synth", "--out", "x", "--noise", "3"], "noise must be in [0, 1]"),
    (["info", "ok.bson", "--taxonomy", "bad.csv"], "bad.csv: line 1: expected header"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    (tmp_path / "notbson.bson").write_text("plain text, certainly not BSON\n")
    (tmp_path / "bad.csv").write_text("a,b\n")
    import bson
    (tmp_path / "ok.bson").write_bytes(bson.encode({"_id": 1, "imgs": [{"picture": b"x"}], "category_id": 3}))
    res = subprocess.run([sys.executable, "-m", "etalage.cli", *args, "-q"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert message in lines[0]


def test_the_cli_reference_in_docs_matches_the_parser():
    """docs/cli.md is generated from the parser; regenerate it with `python -m etalage.cli.reference > docs/cli.md`."""
    from pathlib import Path

    from etalage.cli.reference import render

    doc = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert doc.read_text() == render(), "docs/cli.md is out of date: python -m etalage.cli.reference > docs/cli.md"


def test_set_values_read_as_json_and_as_python_spellings():
    from etalage.errors import ConfigError
    from etalage.options import parse_key_values

    got = parse_key_values(["a=3", "b=0.5", "c=false", "d=False", "e=True", "f=None", "g=[1, 2]", "h=lite0",
                            "i=Falsey"], "--set")
    assert got == {"a": 3, "b": 0.5, "c": False, "d": False, "e": True, "f": None, "g": [1, 2], "h": "lite0",
                   "i": "Falsey"}
    with pytest.raises(ConfigError, match="--set 'x': expected KEY=VALUE"):
        parse_key_values(["x"], "--set")
