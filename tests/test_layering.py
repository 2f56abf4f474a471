"""The shape of the house, read from the source: every internal import (module level or not) goes
down the layers, none hides inside a function, and the modules form no cycle.

    cli -> experiments -> bench -> tasks -> training / generation -> runs -> adapters, compression -> models -> nn
    (export -> compression)
    data and tokenizers sit below tasks; runtime, config and files are leaves.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "transformer_lab"

# package -> the packages it may import (besides itself)
BELOW = {
    "config": set(),
    "files": set(),
    "runtime": set(),
    "nn": {"config"},
    "models": {"nn", "config"},
    "tokenizers": {"config"},
    "data": {"tokenizers", "config"},
    "adapters": {"models", "nn", "config"},
    "compression": {"models", "nn", "config"},
    "export": {"compression", "models", "nn", "config"},
    "runs": {"models", "adapters", "compression", "runtime", "config"},
    "generation": {"models", "nn"},
    "training": {"runs", "runtime", "nn", "config"},  # nn: set_dropout (--dropout), no model family
}
for package in ("models", "tokenizers", "adapters", "runs"):  # (writing files: ``files.umask_mode``)
    BELOW[package].add("files")
BELOW["tasks"] = set(BELOW) | {p for deps in BELOW.values() for p in deps}
BELOW["bench"] = BELOW["tasks"] | {"tasks"}
BELOW["serving"] = BELOW["tasks"] | {"tasks"}
BELOW["experiments"] = BELOW["bench"] | {"bench", "serving"}
BELOW["cli"] = BELOW["experiments"] | {"experiments", "serving"}
BELOW["__main__"] = {"cli"}
BELOW["__init__"] = set()


MODULE_NAMES = {".".join(p for p in path.relative_to(SRC).with_suffix("").parts if p != "__init__")
                for path in SRC.rglob("*.py")}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
        out[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return out


def internal_imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported transformer_lab module, imported at module level?)."""
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transformer_lab"):
            # "from transformer_lab.pkg import module" imports pkg.module
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                     if f"{node.module}.{a.name}".removeprefix("transformer_lab.") in MODULE_NAMES]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("transformer_lab")]
        for name in names:
            found.append((name.removeprefix("transformer_lab").lstrip("."), id(node) in top))
    return found


def package(module: str) -> str:
    return module.split(".")[0] if module else "__init__"


MODULES = modules()


def test_every_package_is_in_the_table():
    assert {package(m) for m in MODULES} <= set(BELOW), "a new package needs its place in the layers"


def test_imports_go_down_the_layers():
    wrong = {}
    for module, tree in MODULES.items():
        own = package(module)
        bad = [name for name, _ in internal_imports(tree)
               if package(name) not in (own, "__init__") and package(name) not in BELOW[own]]  # __init__: __version__
        if bad:
            wrong[module] = bad
    assert not wrong, f"imports against the layers: {wrong}"


def test_no_internal_import_inside_a_function():
    """A function-level import of our own code is how a cycle hides (it once hid bert/gpt <-> hf)."""
    hidden = {m: [n for n, top in internal_imports(t) if not top] for m, t in MODULES.items()}
    assert not {m: n for m, n in hidden.items() if n}


def test_no_import_cycle_between_modules():
    graph = {m: set() for m in MODULES}
    for m, tree in MODULES.items():
        for name, _ in internal_imports(tree):
            if name in MODULES and name != m:
                graph[m].add(name)
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
