"""A hanging test fails alone (pytest-timeout, configured in pyproject.toml) instead of stalling the run.

The hang reproduced here is the one seen in CI: a fixture's teardown awaiting something that never
finishes, the main thread idle in the event loop."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HANGING = '''
import asyncio
import pytest


@pytest.fixture
async def device():
    yield
    await asyncio.Event().wait()  # a stop() that never returns


async def test_hangs_in_teardown(device):
    pass


def test_after_the_hang():
    pass
'''


def test_project_sets_a_per_test_timeout() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    # above the slowest test (about a minute under load), far below CI's 90 minutes
    assert 60 <= float(options["timeout"]) <= 600


def test_a_hang_in_teardown_fails_one_test_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(HANGING)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
         "--rootdir", str(tmp_path), "-o", "timeout=2", str(tmp_path / "test_hang.py")],
        capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "Timeout" in out, out[-2000:]
    # the hanging test passed its call and errs in teardown; the test after it ran
    assert "2 passed, 1 error" in out.splitlines()[-1], out[-2000:]


HANG_THAT_SURVIVES_THE_TIMEOUT = '''
import time
import pytest


@pytest.fixture
def stubborn():
    yield
    while True:  # like a stop() whose exception went to another task: it keeps waiting
        try:
            time.sleep(60)
        except BaseException:
            pass


def test_hangs_for_good(stubborn):
    pass
'''


def test_a_hang_the_timeout_cannot_end_stops_the_run_with_stacks(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_stubborn.py").write_text(HANG_THAT_SURVIVES_THE_TIMEOUT)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
         "--rootdir", str(tmp_path), "-o", "timeout=1", str(tmp_path / "test_stubborn.py")],
        capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test_stubborn.py::test_hangs_for_good has not finished after 2 s" in proc.stderr
    assert "in stubborn" in proc.stderr  # the stack shows where it hangs
