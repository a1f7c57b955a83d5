"""The code stays ruff-clean: lint and format are part of the test run."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "lazyjit", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


PACKAGE = ROOT / "lazyjit"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 200


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_modules_and_classes_stay_small():
    """The layout's rule (docs/architecture.md): one concern a module, no module over 600
    lines, no class over 200."""
    too_long = []
    for path in _modules():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}: class {node.name}, {lines} lines")
    assert not too_long, too_long


def test_no_private_name_crosses_a_module():
    """Modules meet at public names only: nothing imported from a lazyjit module, and no
    attribute read off one, starts with an underscore."""
    crossings = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        lazyjit_modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                node.level or node.module.startswith("lazyjit")
            ):
                names = [a.name for a in node.names]
                crossings += [
                    f"{path.name}: from {'.' * node.level}{node.module or ''} import {n}"
                    for n in names
                    if n.startswith("_") and n != "__version__"
                ]
                lazyjit_modules.update(a.asname or a.name for a in node.names)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in lazyjit_modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                crossings.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not crossings, crossings
