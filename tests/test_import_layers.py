"""Module-level imports point one way (issue 13): the safety invariant depends on the connector's state, the
state does not know the invariant, and nothing in hal/ imports chargepoint/.

Checked on the source (ast), so an import hidden in a function or under TYPE_CHECKING does not count as a
module-level dependency, and in a fresh interpreter, so import order in this test session cannot hide a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions, not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If):
                test = node.test
                if not (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
    visit(tree.body)
    return out


def test_safety_depends_on_the_state_not_on_the_state_machine() -> None:
    safety = module_imports(ROOT / "chargepoint/safety.py")
    assert "chargepoint.connector_state" in safety
    assert not {"chargepoint.connector", "chargepoint.safety"} & safety


def test_the_state_knows_neither_the_invariant_nor_the_machine() -> None:
    state = module_imports(ROOT / "chargepoint/connector_state.py")
    assert not {m for m in state if m.startswith("chargepoint")}, state


def test_the_state_machine_uses_the_invariant() -> None:
    connector = module_imports(ROOT / "chargepoint/connector.py")
    assert "chargepoint.safety" in connector and "chargepoint.connector_state" in connector


@pytest.mark.parametrize(("module", "must_not_load"), [
    ("chargepoint.safety", "chargepoint.connector"),
    ("chargepoint.connector_state", "chargepoint.safety"),
    ("chargepoint.connector_state", "chargepoint.connector"),
])
def test_each_imports_alone(module: str, must_not_load: str) -> None:
    code = f"import sys, {module}; assert {must_not_load!r} not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_hal_never_imports_chargepoint() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in module_imports(p) if m.startswith("chargepoint"))
                 for p in (ROOT / "hal").rglob("*.py")}
    assert {p: m for p, m in offenders.items() if m} == {}
