"""The house kept by checks: which layer may import which (docs/architecture.md draws it), no import circle,
and no function too long or taking too many parameters.

Every module of the installed ``etalage.*`` tree is parsed (imports at any depth, so lazy imports inside
functions count too). import-linter cannot see this tree (its folders are mapped by setuptools' package-dir),
so the contract is written as this test.
"""

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers it may import (itself included implicitly). "base" is every module of the etalage/ folder
# (errors, options, files, chunks, progress, resources, forking, compute): the ground everything stands on.
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
             ("etalage.core.rundir", "torch"), ("etalage.core.config", "torch"), ("etalage.pipeline.stages", "ray"),
             ("etalage.pipeline.engine", "ray")]
# etalage/__init__.py re-exports the public objects lazily (PEP 562): the one module of every layer
EXEMPT = {"etalage"}
MAX_PARAMETERS, MAX_LINES = 10, 80


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


MODULES = modules()


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and MODULES.get(module, Path()).parent == ROOT / "etalage":
        return "base"
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "unknown"


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
                found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def internal_imports(module: str) -> set[str]:
    """The package's own modules that ``module`` imports (``from a.b import c`` counts a.b, and a.b.c when that
    is a module)."""
    return {t for t in imports_of(MODULES[module], module) if t in MODULES and t != module}


def test_every_module_is_in_a_layer():
    assert "etalage.pipeline.stages" in MODULES and "etalage.cli.model" in MODULES
    unknown = [m for m in MODULES if m not in EXEMPT and layer_of(m) == "unknown"]
    assert not unknown, f"modules outside every layer (add them to tests/test_architecture.py): {unknown}"


def test_layers_import_only_downwards():
    wrong = []
    for module, path in MODULES.items():
        if module in EXEMPT:
            continue
        src = layer_of(module)
        for target in imports_of(path, module):
            if target not in MODULES or target in EXEMPT:
                continue
            dst = layer_of(target)
            if dst != src and dst not in ALLOWED[src]:
                wrong.append(f"{module} ({src}) imports {target} ({dst})")
    assert not wrong, "wrong-way imports:\n" + "\n".join(wrong)


def test_forbidden_imports():
    wrong = [f"{a} imports {b}" for a, b in FORBIDDEN
             if any(t == b or t.startswith(b + ".") for t in imports_of(MODULES[a], a))]
    assert not wrong, wrong


def test_no_import_circle():
    """No module reaches itself through the modules it imports (at any depth of the code: a lazy import inside
    a function is still a circle of dependencies). A package's ``__init__`` re-exporting its own modules is not
    an edge back: it is how the package presents them."""
    graph = {m: {t for t in internal_imports(m) if not (m.startswith(t + ".") and t != "etalage")}
             for m in MODULES if m not in EXEMPT}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w in EXEMPT or w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_functions_are_short_and_take_few_parameters():
    """No function of the package takes more than 10 parameters (``self``/``cls`` aside; ``*args`` and ``**kwargs``
    count) or runs over 80 lines: state travels in typed objects, and a long function is several."""
    wrong = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
            n = len(params) + (a.vararg is not None) + (a.kwarg is not None)
            if params and params[0].arg in ("self", "cls"):
                n -= 1
            lines = node.end_lineno - node.lineno + 1
            if n > MAX_PARAMETERS or lines > MAX_LINES:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} parameters, {lines} lines")
    assert not wrong, "\n".join(wrong)
