"""The layering of docs/architecture.md, checked on the source: which package may import which, no import
circles between modules, no file over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alignkit"

BASE = {"io", "progress", "configs", "lazy", "parallel", "stats"}
ALLOWED = {
    "io": set(), "progress": set(), "configs": set(), "lazy": set(), "parallel": set(), "stats": set(),
    "models": BASE,
    "data": BASE,
    "objectives": BASE,
    "engine": BASE | {"data", "models"},
    "rewards": BASE | {"engine", "data", "models"},
    "report": BASE,
    "decoding": BASE | {"engine", "rewards", "data", "models"},
    "eval": BASE | {"engine", "rewards", "data", "models", "report"},
    "train": BASE | {"engine", "objectives", "rewards", "data", "models"},
    "probes": BASE | {"engine", "rewards", "decoding", "data", "models", "report"},
    "scenarios": BASE | {"engine", "rewards", "data", "models", "report"},
    "label": BASE | {"data"},
    "cli": None, "quickstart": None,  # commands may import anything
}


def unit(module: str) -> str:
    """alignkit.train.loop -> train; alignkit.io -> io."""
    return module.split(".")[1]


def modules() -> dict[str, Path]:
    return {".".join(("alignkit", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alignkit"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("alignkit."))
    return found


def test_packages_import_only_what_the_layering_allows():
    bad = []
    for name, path in modules().items():
        if name == "alignkit":
            continue
        allowed = ALLOWED[unit(name)]
        if allowed is None:
            continue
        for target in imports(path, top_level_only=False):
            if target != "alignkit" and unit(target) != unit(name) and unit(target) not in allowed:
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_circles_between_modules():
    graph = {name: {t for t in imports(path, top_level_only=True) if t in modules()}
             for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            assert state.get(nxt) != 1, "import circle: " + " -> ".join([*stack, node, nxt])
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_files_stay_under_500_lines():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long
