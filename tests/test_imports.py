"""Imports flow one way (docs/architecture.md, "Package structure"): no cycle between modules,
at module level or inside functions, and every package imports only those below it."""

import ast
import importlib
import pkgutil
from pathlib import Path

import egru_accel

#: The order of the packages: each may import only packages of a lower rank (sim and boards
#: are side by side and import neither each other).
RANKS = {"egru_accel.quantize": 0, "egru_accel.firmware": 1, "egru_accel.hw": 2,
         "egru_accel.sim": 3, "egru_accel.boards": 3, "egru_accel": 4}
#: Old top-level names that must never be imported (the package is egru_accel.*).
BARE = {"quantize", "hw", "sim", "firmware", "boards"}


def _modules() -> dict[str, Path]:
    # The subpackages live in other folders than egru_accel/ (setuptools' package-dir), so
    # each is walked from its own __path__.
    out = {"egru_accel": Path(egru_accel.__file__)}
    for package in RANKS:
        pkg = importlib.import_module(package)
        out[package] = Path(pkg.__file__)
        for info in pkgutil.iter_modules(pkg.__path__, package + "."):
            out[info.name] = Path(info.module_finder.find_spec(info.name).origin)
    assert len(out) > 40 and "egru_accel.firmware.reference" in out, sorted(out)
    return out


def _imports(name: str, path: Path, is_package: bool) -> set[str]:
    """Every egru_accel module ``name`` imports, anywhere in the file (also inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            # `from pkg import module` imports the module; `from module import name` the module.
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        else:
            continue
        for target in targets:
            top = target.split(".")[0]
            assert top not in BARE, f"{name} imports {target}: use egru_accel.{target}"
            if top == "egru_accel":
                found.add(target)
    return found


def _graph():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = _imports(name, path, path.name == "__init__.py")
        # Keep only names that are modules (drop imported functions and classes).
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in RANKS else "egru_accel"


def test_no_import_cycle():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A package's __init__ imported on the way to its modules is not an edge of its own.
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_packages_import_downwards_only():
    wrong = []
    for module, targets in _graph().items():
        src = _package(module)
        for target in targets:
            dst = _package(target)
            if dst != src and (RANKS[dst] >= RANKS[src]) and target != "egru_accel":
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the package order: " + ", ".join(sorted(wrong))


def test_hardware_and_host_share_no_golden_model():
    graph = _graph()

    def closure(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    forbidden = {"egru_accel.quantize.golden", "egru_accel.firmware.reference"}
    for module in graph:
        if module.startswith("egru_accel.hw") or module in ("egru_accel.firmware.image", "egru_accel.firmware.protocol",
                                                            "egru_accel.firmware.driver"):
            assert not closure(module) & forbidden, (module, closure(module) & forbidden)
    # ... while the reference device does compute with the golden model.
    assert "egru_accel.quantize.golden" in closure("egru_accel.firmware.reference")
