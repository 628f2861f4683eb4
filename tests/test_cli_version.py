"""`chargepoint --version`: the commissioning checklist records it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from chargepoint import __version__

ROOT = Path(__file__).resolve().parents[1]


def test_version_option_prints_the_package_version() -> None:
    out = subprocess.run([sys.executable, "-m", "chargepoint", "--version"], capture_output=True, text=True,
                         cwd=ROOT, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"chargepoint {__version__}"


def test_package_version_is_the_released_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
