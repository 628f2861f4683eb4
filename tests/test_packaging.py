"""pyproject.toml as the build backend reads it: no deprecated forms (setuptools stops building those)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# setuptools' own reader of pyproject.toml, with its deprecation warnings turned into errors: a table-form
# project.license warns "By 2027-Feb-18, you need to update your project" and will stop building then.
_READ = """
import warnings
warnings.simplefilter("error")
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution
dist = apply_configuration(Distribution(), "pyproject.toml")
print(dist.metadata.license_expression, *dist.metadata.license_files)
"""


def test_pyproject_has_no_deprecated_license_table() -> None:
    proc = subprocess.run([sys.executable, "-c", _READ], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-3:]
    expression, *files = proc.stdout.split()
    assert expression == "MIT"  # an SPDX expression, as in LICENSE
    assert files == ["LICENSE"] and "MIT License" in (REPO / "LICENSE").read_text()
