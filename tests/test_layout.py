"""The package layout: layered imports (import-linter), no import cycle, small modules.

Anyone can run the same checks: ``lint-imports`` (contract in pyproject.toml) and
``python -m pytest tests/test_layout.py``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "captum_attnflow"
ROOT = PACKAGE.parent

#: the largest module, in lines (the layout target is "about 400")
MAX_MODULE_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Package modules ``path`` imports anywhere (module level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules)
    return found


def import_graph() -> nx.DiGraph:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = nx.DiGraph()
    for path in paths:
        source = module_name(path)
        graph.add_node(source)
        for target in imported_modules(path, modules):
            # a package's __init__ re-exporting its own submodules is not a cycle of code
            if target != source and not (path.name == "__init__.py" and target.startswith(source + ".")):
                graph.add_edge(source, target)
    return graph


def test_no_import_cycle():
    graph = import_graph()
    # the root package only re-exports the public face; nothing inside imports it
    importers_of_root = sorted(source for source, target in graph.edges if target == "captum_attnflow")
    assert importers_of_root == [], f"modules importing the root package: {importers_of_root}"
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], f"import cycles: {cycles[:5]}"


def test_import_graph_sees_lazy_imports():
    """The check reads imports inside functions too (a cycle hidden in a lazy import counts)."""
    graph = import_graph()
    assert graph.has_edge("captum_attnflow.studies.sentiment", "captum_attnflow.studies.finetune")  # lazy, in run()


def test_modules_are_small():
    sizes = {module_name(path): len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.rglob("*.py")}
    large = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert large == {}, f"modules over {MAX_MODULE_LINES} lines: {large}"


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_layers_contract():
    """``lint-imports``: cli > studies > evaluation > report > attr > flow > graph > capture > models > utils."""
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
