"""The arrows point one way: the kernel imports nothing from training, tests or torch; training has no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_KERNEL = ("train_offline", "tests", "testkit", "torch")


def _imported(node: ast.AST) -> list[str]:
    """Absolute module names an Import/ImportFrom node names (relative imports are resolved by the caller)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def module_level_imports(path: Path) -> list[str]:
    """Modules imported by the statements of a file that run at import time (not inside functions or classes'
    methods), including those under ``if``/``try`` at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            found.extend(_imported(stmt))
            if isinstance(stmt, ast.If | ast.Try | ast.With):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(stmt, block, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])
            if isinstance(stmt, ast.ClassDef):
                visit([s for s in stmt.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)])

    visit(tree.body)
    return found


def all_imports(path: Path) -> list[str]:
    """Every module a file imports anywhere (lazy imports inside functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [name for node in ast.walk(tree) for name in _imported(node)]


def test_module_level_import_scan_sees_what_it_should(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\ntry:\n    import torch\nexcept ImportError:\n    pass\n"
                      "def f():\n    import train_offline.train\nclass C:\n    import json\n")
    assert module_level_imports(sample) == ["os", "torch", "json"]
    assert "train_offline.train" in all_imports(sample)


@pytest.mark.parametrize("path", sorted((REPO / "kernel").glob("*.py")), ids=lambda p: p.name)
def test_kernel_imports_nothing_from_training_tests_or_torch_at_module_level(path: Path) -> None:
    bad = [name for name in module_level_imports(path) if name.split(".")[0] in FORBIDDEN_IN_KERNEL]
    assert not bad, f"kernel/{path.name} imports {bad} at module level (the kernel must stand alone on Kaggle)"


@pytest.mark.parametrize("path", sorted((REPO / "kernel").glob("*.py")), ids=lambda p: p.name)
def test_kernel_never_imports_training_or_tests_even_lazily(path: Path) -> None:
    bad = [name for name in all_imports(path) if name.split(".")[0] in ("train_offline", "tests", "testkit")]
    assert not bad, f"kernel/{path.name} imports {bad}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> modules of the same package it imports (anywhere in the file)."""
    files = sorted((REPO / package).rglob("*.py"))
    names = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        module = _module_name(path)
        graph[module] = set()
        for name in all_imports(path):
            # "from a.b import c" may name module a.b.c or attribute c of a.b: keep the longest known module.
            while name and name not in names:
                name = name.rpartition(".")[0]
            if name and name != module and name != package:
                graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", ["train_offline", "kernel"])
def test_no_import_cycle(package: str) -> None:
    graph = import_graph(package)
    assert len(graph) > 5
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle in {package}/: {' -> '.join(cycle)}"


def test_training_cli_module_is_not_used_as_a_library() -> None:
    """``train_offline.train`` is the fold orchestration + CLI: export and the benchmarks import the library modules."""
    users = [p for p in [*REPO.glob("train_offline/**/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("scripts/*.py")]
             if p.name != "train.py" and "train_offline.train" in all_imports(p)]
    assert not users, f"import train_offline.train: {[str(p.relative_to(REPO)) for p in users]}"


def test_scripts_and_benchmarks_do_not_import_tests() -> None:
    users = [p for p in [*REPO.glob("benchmarks/*.py"), *REPO.glob("scripts/*.py"), *REPO.glob("testkit/*.py")]
             if any(name.split(".")[0] == "tests" for name in all_imports(p))]
    assert not users, f"import from tests/ (use testkit/): {[str(p.relative_to(REPO)) for p in users]}"


PRODUCT = ("kernel", "train_offline")
NOT_PRODUCT = ("experiments", "benchmarks", "scripts", "gpu_sections", "tests", "testkit")


def _product_files() -> list[Path]:
    return [*(REPO / "kernel").rglob("*.py"), *(REPO / "train_offline").rglob("*.py"), REPO / "build_kernel.py"]


@pytest.mark.parametrize("path", _product_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_product_imports_no_research_benchmark_script_or_test(path: Path) -> None:
    """kernel/, train_offline/ and build_kernel.py stand alone: experiments/, benchmarks/, scripts/ and the tests may
    import the product, never the reverse (lazy imports inside functions included)."""
    bad = [name for name in all_imports(path) if name.split(".")[0] in NOT_PRODUCT]
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_product_scan_sees_research_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from experiments.scan import scan_series\n    import benchmarks.bench_read\n")
    assert [n.split(".")[0] for n in all_imports(sample)].count("experiments") >= 1
    assert "benchmarks.bench_read" in all_imports(sample)
