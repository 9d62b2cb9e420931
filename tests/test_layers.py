"""The package's layering: a module imports only from its own layer or below, and no import cycle
exists (imports inside functions count too). The order, lowest first:

    errors, config, report, runtime -> io -> graph -> algo -> data -> measure -> encode -> passes
    -> pipeline -> api -> cli

``onnxcomp/__init__.py`` is the package's face and may re-export from any layer; a package's
``__init__`` counts as part of its layer.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "onnxcomp"
LAYERS = [("errors", "config", "report", "runtime"), ("io",), ("graph",), ("algo",), ("data",), ("measure",),
          ("encode",), ("passes",), ("pipeline",), ("api",), ("cli", "__main__")]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported onnxcomp module, line) for every import statement, wherever it sits."""
    out = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "onnxcomp"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - (0 if is_pkg else 1)]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "onnxcomp":
                continue
            for a in node.names:  # "from pkg import submodule" is an import of the submodule
                sub = f"{base}.{a.name}"
                out.append((sub if sub in modules else base, node.lineno))
    return [(m, line) for m, line in out if m in modules and m != name]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None


def _graph() -> dict[str, list[tuple[str, int]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_belongs_to_a_layer():
    strays = [m for m in _modules() if m != "onnxcomp" and _layer(m) is None]
    assert not strays, f"modules outside every layer: {strays}"


def test_no_module_imports_from_a_layer_above_it():
    bad = []
    for name, imports in _graph().items():
        if name == "onnxcomp":
            continue
        for target, line in imports:
            if target == "onnxcomp" or _layer(target) > _layer(name):
                bad.append(f"{name}:{line} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {n: sorted({t for t, _ in imps}) for n, imps in _graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        stack.append(n)
        for t in graph.get(n, []):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_package_files_stay_small_and_the_top_level_is_thin():
    big = [f"{p.relative_to(PKG.parent)}: {n}" for p in PKG.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 300]
    assert not big, f"modules over 300 lines: {big}"
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 5, f"modules directly in onnxcomp/: {top}"


def test_importing_the_package_loads_no_heavy_layer_for_the_cli():
    """``onnxcomp --help`` must start fast: the CLI's import does not pull in onnxruntime."""
    code = ("import sys, onnxcomp.cli; "
            "print(','.join(m for m in ('onnxruntime', 'sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
