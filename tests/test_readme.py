"""The README's quick start and its ten lines of Python, run as the README writes them, so they cannot rot.

The quick start's ```bash blocks are taken from README.md itself and run in order by bash, in a temporary folder
holding a copy of examples/ (the commands' paths are relative to the repository's root), with this environment's
`etalage` first on the PATH. One change: every `--max-minutes N` becomes `--max-minutes 0.05` (3 seconds of
training instead of N minutes), so the whole section costs well under a minute of CPU. The lines the README shows
in its ```text blocks must be among what the commands print, numbers aside (figures move from run to run; the
words, paths and layout must not).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BUDGET = (re.compile(r"--max-minutes \d+(?:\.\d+)?"), "--max-minutes 0.05")
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")  # 2,076 and 890 alike


def section(heading: str) -> str:
    """The README's ``## `` section whose heading starts with ``heading`` (up to the next ``## ``)."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(heading)}.*?(?=^## |\Z)", text, re.M | re.S)
    assert found, f"README.md has no section headed '## {heading}'"
    return found.group(0)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.M | re.S)


def commands() -> list[str]:
    """The quick start's commands, one per line (continuations joined), comments and blank lines left out."""
    script = "\n".join(blocks(section("Quick start"), "bash")).replace("\\\n", " ")
    return [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]


def _masked(line: str) -> str:
    return NUMBER.sub("#", line.rstrip())


def _env() -> dict:
    """This interpreter's `etalage` first on the PATH (the README's reader has activated .venv)."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory) -> tuple[Path, str]:
    """(the folder the commands ran in, everything they printed)."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", root / "examples")
    script = "\n".join(BUDGET[0].sub(BUDGET[1], c) for c in commands())
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root, env=_env(), capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, f"the README's quick start failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return root, res.stdout + res.stderr


def test_the_quick_start_is_the_whole_path_and_needs_no_setup():
    steps = [c.split()[:2] for c in commands()]
    assert all(s[0] == "etalage" for s in steps), "only etalage commands: the reader has installed it already"
    names = [s[1] for s in steps]
    for earlier, later in (("pack", "train"), ("train", "submit"), ("submit", "score"), ("submit", "explain"),
                           ("train", "audit")):
        assert names.index(earlier) < names.index(later), names
    pack = [c for c in commands() if c.startswith("etalage pack")]
    assert len(pack) == 2 and sum("--no-labels" in c for c in pack) == 1, "a training dump and a test dump with its key"
    assert all(BUDGET[0].search(c) for c in commands() if c.startswith("etalage train")), "training has a budget"
    submit = next(c for c in commands() if c.startswith("etalage submit"))
    assert "--run" in submit and "--fusion" not in submit and "--work" in submit, "core only, keeping its work folder"


def test_the_quick_start_runs_and_writes_what_it_says(quick_start):
    root, printed = quick_start
    out = root / "quickstart"
    listing = (root / "examples/grocery/test.csv").read_text().splitlines()
    submission = (out / "submission.csv").read_text().splitlines()
    assert submission[0] == "_id,category_id" and len(submission) == len(listing), "one line per test product"
    assert (out / "test_labels.csv").exists() and (out / "run" / "model.pt").exists()
    assert (out / "audit" / "suspects.csv").exists() and (out / "audit" / "audit.html").exists()
    page = (out / "explain.html").read_text()
    assert "core only: no fusion" in page and page.count('"status": ') == len(listing) - 1
    accuracy = float(re.search(r"product top-1 accuracy ([0-9.]+) over (\d+) products", printed).group(1))
    assert 0.0 <= accuracy <= 1.0


def test_what_the_readme_shows_is_what_the_commands_print(quick_start):
    """Every line of the section's ```text blocks, numbers masked, is a line the commands printed ("..." lines and
    lines holding "..." are the README's own elisions)."""
    _, printed = quick_start
    seen = {_masked(line) for line in printed.splitlines()}
    shown = [line for b in blocks(section("Quick start"), "text") for line in b.splitlines()
             if line.strip() and "..." not in line]
    assert shown, "the quick start shows what its commands print"
    missing = [line for line in shown if _masked(line) not in seen]
    assert not missing, f"README lines the commands no longer print: {missing}\n--- printed:\n{printed[-4000:]}"


def test_the_ten_lines_of_python_run(quick_start):
    root, _ = quick_start
    code = blocks(section("Ten lines of Python"), "python")
    assert len(code) == 1 and len([line for line in code[0].splitlines() if line.strip()]) <= 10
    res = subprocess.run([sys.executable, "-c", code[0]], cwd=root, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    classes = (root / "examples/grocery/category_names.csv").read_text().splitlines()[1:]
    assert len(lines) == len(classes), "one new photo of each class"
    names = {row.split(",")[3] for row in classes}
    for line in lines:
        photo, name, probability = line.split()
        assert photo.startswith("val-") and name in names and 0.0 < float(probability) <= 1.0, line
    shown = [line for line in blocks(section("Ten lines of Python"), "text")[0].splitlines() if line != "..."]
    assert {_masked(line).split()[0] for line in shown} <= {_masked(line).split()[0] for line in lines}


def test_the_readme_is_a_front_door_and_keeps_ci_s_test_command():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "reference material belongs in docs/"
    ci = (ROOT / ".ci" / "run").read_text()
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
    assert command in ci and f"```bash\n{command}\n```" in text, ".ci/run runs the README's test command verbatim"
    for link in re.findall(r"\]\(((?:docs|examples)/[^)#]*)", text):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
