"""The data flow kept by a check: which layer may import which (docs/architecture.md draws it).

Every module of the installed ``etalage.*`` tree is parsed (imports at any depth, so lazy imports
inside functions count too) and each ``etalage.*`` import is checked against the layers below. A
wrong-way import (the catalogue importing the core, fusion driving the pipeline, prediction importing
training) fails here. import-linter cannot see this tree (its folders are mapped by setuptools'
package-dir), so the contract is written as this test.
"""

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers it may import (itself included implicitly)
BASE = {"etalage.errors", "etalage.options", "etalage.files", "etalage.chunks", "etalage.progress",
        "etalage.resources", "etalage.forking"}
ALLOWED = {
    "base": set(),
    "catalog": {"base"},
    "synth": {"catalog", "base"},
    "core": {"catalog", "base"},
    "ocr": {"catalog", "synth", "base"},
    "specialists": {"core", "ocr", "synth", "catalog", "base"},
    "fusion": {"specialists", "core", "ocr", "catalog", "base"},
    "bench": {"fusion", "specialists", "core", "ocr", "synth", "catalog", "base"},
    "pipeline": {"fusion", "specialists", "core", "ocr", "synth", "catalog", "base"},
    "serve": {"pipeline", "fusion", "specialists", "core", "ocr", "synth", "catalog", "base"},
    "cli": {"serve", "pipeline", "bench", "fusion", "specialists", "core", "ocr", "synth", "catalog", "base"},
}
FORBIDDEN = [("etalage.core.predict", "etalage.core.train"), ("etalage.core.ranking", "torch"),
             ("etalage.core.rundir", "torch"), ("etalage.core.config", "torch")]


# etalage/__init__.py re-exports the public objects lazily (PEP 562): the one module of every layer
EXEMPT = {"etalage"}


def layer_of(module: str) -> str:
    if module in BASE:
        return "base"
    part = module.split(".")[1]
    return part if part in ALLOWED else "base"


def modules() -> dict[str, Path]:
    """Module name -> file of every module setuptools installs (packages list + package-dir mapping)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = dict(cfg["package-dir"])
    out = {}
    for package in cfg["packages"]:
        if package not in folders:  # a sub-package inside its parent's folder
            parent, _, name = package.rpartition(".")
            folders[package] = f"{folders[parent]}/{name}"
        for path in sorted((ROOT / folders[package]).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = path
    return out


def imports_of(path: Path, module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: len(module.split(".")) - node.level + (path.stem == "__init__")]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return found


def test_every_module_is_in_a_layer():
    mods = modules()
    assert "etalage.pipeline.stages" in mods and "etalage.cli.model" in mods
    unknown = [m for m in mods if m not in EXEMPT and layer_of(m) == "base" and m not in BASE]
    assert not unknown, f"modules outside every layer (add them to tests/test_architecture.py): {unknown}"


def test_layers_import_only_downwards():
    wrong = []
    for module, path in modules().items():
        if module in EXEMPT:
            continue
        src = layer_of(module)
        for target in imports_of(path, module):
            if not target.startswith("etalage.") or target in EXEMPT:
                continue
            dst = layer_of(target)
            if dst != src and dst not in ALLOWED[src]:
                wrong.append(f"{module} ({src}) imports {target} ({dst})")
    assert not wrong, "wrong-way imports:\n" + "\n".join(wrong)


def test_forbidden_imports():
    mods = modules()
    wrong = [f"{a} imports {b}" for a, b in FORBIDDEN
             if any(t == b or t.startswith(b + ".") for t in imports_of(mods[a], a))]
    assert not wrong, wrong
