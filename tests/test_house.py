"""The house rules, checked on every run: layers import downward (import-linter), the chosen ruff rules, no
function over 60 lines in the package, and a README short enough to read."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_README_LINES = 200


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed in the test environment (requirements.txt pins it)")
    return found


def test_layers_import_downward_only():
    result = subprocess.run([tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_finds_nothing():
    result = subprocess.run([tool("ruff"), "check", "--no-cache", "seg_node", "tests", "scripts", "launch"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_the_package_is_over_60_lines():
    assert long_functions(REPO / "seg_node", MAX_FUNCTION_LINES) == []


def test_the_function_length_rule_counts_decorators_out_and_bodies_in(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        assert long_functions(tmp_path, MAX_FUNCTION_LINES) == ["m.py:5 long (61 lines)"]
    finally:
        REPO = saved


def test_the_readme_is_at_most_200_lines():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"
