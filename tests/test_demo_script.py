"""scripts/demo.sh installs the package only when an install would record something new.

A stand-in .venv (its python logs what it is asked to do; pip install creates the console script) keeps
this fast: the real install is what takes 20-40 s."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/bin/sh
here="$(cd "$(dirname "$0")" && pwd)"
echo "$*" >>"$here/../python-calls.log"
case "$*" in
  *"-m pip install"*)
    printf '#!/bin/sh\\necho "demo ran: $*"\\n' >"$here/chargepoint"
    chmod +x "$here/chargepoint" ;;
esac
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout with demo.sh, a pyproject.toml, two packages and an existing (stand-in) .venv."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "pi-chargepoint"\nversion = "0.1.0"\n')
    for pkg in ("chargepoint", "hal"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.2\n")
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    return tmp_path


def run_demo(checkout: Path, *args: str) -> tuple[str, int]:
    """Runs demo.sh; returns its output and how many pip installs it made."""
    log = checkout / ".venv" / "python-calls.log"
    before = log.read_text().count("pip install") if log.exists() else 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(["bash", str(checkout / "scripts" / "demo.sh"), *args], capture_output=True, text=True,
                          timeout=30, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    after = log.read_text().count("pip install") if log.exists() else 0
    return proc.stdout, after - before


def test_demo_installs_once_then_only_when_pyproject_changes(checkout: Path) -> None:
    out, installs = run_demo(checkout, "--speed", "5")
    assert installs == 1 and "demo ran: demo --speed 5" in out
    assert "-e ." in (checkout / ".venv" / "python-calls.log").read_text()  # editable: sources are live
    (checkout / "chargepoint" / "controller.py").write_text("# a source change\n")
    assert run_demo(checkout)[1] == 0
    assert run_demo(checkout)[1] == 0
    with open(checkout / "pyproject.toml", "a") as fh:
        fh.write('dependencies = ["ocpp>=2"]\n')  # what an install records changed
    assert run_demo(checkout)[1] == 1
    assert run_demo(checkout)[1] == 0


def test_demo_reinstalls_for_a_new_package_or_a_lost_install(checkout: Path) -> None:
    assert run_demo(checkout)[1] == 1
    (checkout / "hal_extra").mkdir()
    (checkout / "hal_extra" / "__init__.py").write_text("")
    assert run_demo(checkout)[1] == 1
    (checkout / ".venv" / "bin" / "chargepoint").unlink()  # e.g. pip uninstall
    assert run_demo(checkout)[1] == 1
    (checkout / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.13.1\n")  # venv rebuilt
    assert run_demo(checkout)[1] == 1
    assert run_demo(checkout)[1] == 0


def test_a_failed_install_is_tried_again(checkout: Path) -> None:
    python = checkout / ".venv" / "bin" / "python"
    python.write_text("#!/bin/sh\necho broken >&2\nexit 1\n")
    proc = subprocess.run(["bash", str(checkout / "scripts" / "demo.sh")], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode != 0
    python.write_text(FAKE_PYTHON)
    assert run_demo(checkout)[1] == 1
