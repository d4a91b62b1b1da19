"""A library call never changes the process of its caller: no environment variable, thread count, warning
hook, warning filter or logger level left changed. The defect these guard against: the Tesseract engine wrote
``OMP_THREAD_LIMIT=1`` into ``os.environ``, and torch's OpenMP runtime, started after it, spun forever in its
first convolution backward (pytorch/pytorch#91547) — a notebook that read covers and then trained hung with
no message. Each check runs in a fresh interpreter with a timeout, so a hang fails the test instead of the
suite."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import TINY

ENGINES = ["tesseract", "easyocr", "rapidocr", "default"]

# What the child reports of its own process before and after the library calls under test.
SNAPSHOT = textwrap.dedent("""
    import json, logging, os, sys, warnings

    def snapshot():
        import torch
        loggers = {n: getattr(l, "level", None) for n, l in logging.root.manager.loggerDict.items()}
        import random
        import numpy as np
        rng = [int(torch.get_rng_state().sum()), int(np.random.get_state()[1].sum()), hash(random.getstate())]
        return {"env": dict(os.environ), "threads": torch.get_num_threads(), "rng": rng,
                "interop": torch.get_num_interop_threads(), "showwarning": repr(warnings.showwarning),
                "filters": repr(warnings.filters), "loggers": loggers, "root": logging.root.level}

    def changed(before, after):
        out = {}
        for key in before:
            if key in ("env", "loggers"):
                diff = {k: (before[key].get(k), after[key].get(k)) for k in set(before[key]) | set(after[key])
                        if k in before[key] and before[key].get(k) != after[key].get(k)}
                if key == "env":
                    diff.update({k: (None, after[key][k]) for k in set(after[key]) - set(before[key])})
                if diff:
                    out[key] = diff
            elif before[key] != after[key]:
                out[key] = (before[key], after[key])
        return out
""")

# Third-party packages whose import itself changes the process (cv2 extends LD_LIBRARY_PATH; scipy, sympy and
# urllib3 add warning filters): imported before the first snapshot, so what is measured is etalage's calls.
THIRD_PARTY = textwrap.dedent("""
    import importlib
    for _name in ("cv2", "scipy.special", "sympy", "requests", "onnxruntime", "sklearn", "easyocr", "rapidocr"):
        try:
            importlib.import_module(_name)
        except ImportError:
            pass
""")

ENGINE_THEN_TRAIN = SNAPSHOT + THIRD_PARTY + textwrap.dedent("""
    import numpy as np, torch
    name, train_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
    before = snapshot()
    from etalage.ocr import load_engine
    from etalage.synth.covers import draw_cover
    engine = load_engine(None if name == "default" else name)
    cover = np.asarray(draw_cover("THE BIG ORANGE BOOK", "Ann Lee", np.random.default_rng(0), kind="book")
                       .convert("RGB"))
    words = [b.text for b in engine.read([cover])[0]]  # the networks load on the first read
    after_ocr = snapshot()
    # the issue's snippet, then one training step of the tiny core, in the same process
    m = torch.nn.Conv2d(3, 8, 3); x = torch.randn(4, 3, 64, 64, requires_grad=True)
    m(x).sum().backward()
    from etalage.core.train import TrainConfig, train
    before_train = snapshot()  # the snippet above drew from torch's generator: that is the caller's own doing
    res = train(TrainConfig(train=train_file, out=out, stop_after_steps=1, **json.loads(sys.argv[4])), progress=False)
    print(json.dumps({"words": words, "changed": changed(before, after_ocr),
                      "after_train": changed(before_train, snapshot()),
                      "status": res.status}))
""")


def _run(script: str, *args: str, timeout: float = 240) -> dict:
    try:
        res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout:.0f} s (a library call changed the process: torch's OpenMP waits forever)")
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_an_ocr_engine_then_a_training_step_in_one_process(engine, synth_dir, tmp_path):
    tiny = {k: v for k, v in TINY.items() if k != "workers"}
    out = _run(ENGINE_THEN_TRAIN, engine, str(synth_dir / "train.bson"), str(tmp_path / "run"), json.dumps(tiny))
    assert out["changed"] == {}, f"loading and reading with {engine} changed the process: {out['changed']}"
    assert out["after_train"] == {}, f"training changed the process: {out['after_train']}"
    assert out["status"] == "paused" and (tmp_path / "run" / "checkpoint.pt").exists()
    if engine in ("tesseract", "default"):
        assert any(w.upper() in ("BIG", "ORANGE", "BOOK") for w in out["words"]), out["words"]


CLI_AND_JOBS = SNAPSHOT + THIRD_PARTY + textwrap.dedent("""
    import torch
    synth = sys.argv[1]
    before = snapshot()
    from etalage.cli import main
    assert main(["info", synth + "/train.bson", "-q"]) == 0
    assert main(["info", synth + "/train.bson", "--cache-dir", sys.argv[2], "-q"]) == 0
    from etalage.fusion.neighbours import EmbeddingIndex
    import numpy as np
    index = EmbeddingIndex.build(np.random.default_rng(0).normal(size=(50, 8)).astype("float32"),
                                 np.arange(50) % 5, np.arange(50))
    index.search(np.ones((3, 8), "float32"), 4)
    print(json.dumps({"changed": changed(before, snapshot())}))
""")


def test_the_command_line_leaves_a_caller_as_it_found_it(synth_dir, tmp_path):
    """``etalage.cli.main`` called from Python (a notebook, a test): its log handler, one-line warnings and cache
    folder last for the command only; the neighbour index leaves faiss's threads alone."""
    out = _run(CLI_AND_JOBS, str(synth_dir), str(tmp_path / "cache"), timeout=120)
    assert out["changed"] == {}, out["changed"]
    assert list((tmp_path / "cache").rglob("train.bson.idx.npz")), "--cache-dir reached the index, as a value"


def test_no_module_writes_the_environment():
    """No module of the package writes os.environ (a child gets its variables as its own env=)."""
    import re

    from tests.test_architecture import MODULES

    pattern = re.compile(r"os\.environ(\[[^]]*\]\s*=[^=]|\.setdefault|\.update|\.pop)|os\.putenv|os\.unsetenv")
    wrong = [f"{path}:{i}" for path in MODULES.values() for i, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert not wrong, wrong


def test_no_module_draws_through_pyplot():
    """Charts are drawn on ``matplotlib.figure.Figure`` objects: pyplot keeps figures and a backend per process,
    and ``matplotlib.use("Agg")`` in a library call took a notebook's inline backend away from its user."""
    import re

    from tests.test_architecture import MODULES

    pattern = re.compile(r"\bpyplot\b|\bpylab\b|matplotlib\.use\(")
    wrong = [f"{path}:{i}" for path in MODULES.values() for i, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line.split("#", 1)[0])]
    assert not wrong, wrong



CHART = textwrap.dedent("""
    import json, sys
    import numpy as np
    import matplotlib
    from etalage.bench.covers import confusion_png
    from etalage.catalog.taxonomy import Taxonomy
    tax = Taxonomy.from_rows([(10 + i, "BOOKS", "NOVELS", f"genre {i}") for i in range(4)])
    before = matplotlib.get_backend()
    truth = np.arange(12) % tax.n_classes
    confusion_png(truth, truth[::-1].copy(), tax, sys.argv[1], "a chart")
    print(json.dumps({"before": before, "after": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules}))
""")


def test_a_chart_leaves_the_callers_matplotlib_backend(tmp_path):
    """A notebook's backend (here svg, as MPLBACKEND sets it) is still the backend after etalage drew a PNG."""
    import os

    res = subprocess.run([sys.executable, "-c", CHART, str(tmp_path / "c.png")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "MPLBACKEND": "svg"})
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["before"] == out["after"] == "svg" and not out["pyplot"], out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
