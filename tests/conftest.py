"""Shared fixtures: a loopback central system and a controller on simulated hardware."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chargepoint.config import simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem

# ------------------------------------------------------------------------------------------- hang backstop
#: pytest-timeout (pyproject: timeout) fails a test that runs too long by raising in the main thread. That
#: can miss: the exception lands in a background task that swallows it (the test keeps waiting), or the
#: teardown hangs again after it (one alarm per test). Past this many times the timeout the run is ended
#: with every thread's stack, so CI reports the hanging test in minutes instead of stalling to its limit.
HARD_LIMIT_FACTOR = 2.0


def _timeout_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    try:
        return float(item.config.getini("timeout") or 0)
    except (ValueError, KeyError):  # pytest-timeout not installed
        return 0.0


def _abort_run(config: pytest.Config, nodeid: str, limit: float) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with contextlib.suppress(Exception):
            capture.suspend_global_capture(in_=True)  # so that the message reaches the real stderr
    sys.stderr.write(f"\n+++ {nodeid} has not finished after {limit:.0f} s, its timeout did not end it: "
                     "stopping the test run; stacks follow +++\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    timeout = _timeout_of(item)
    if timeout <= 0:
        yield
        return
    limit = timeout * HARD_LIMIT_FACTOR
    backstop = threading.Timer(limit, _abort_run, args=(item.config, item.nodeid, limit))
    backstop.daemon = True
    backstop.start()
    try:
        yield
    finally:
        backstop.cancel()



class Station:
    """A running controller plus its central system and simulated bench."""

    def __init__(self, controller: Controller, csms: CentralSystem, cp_id: str) -> None:
        self.controller = controller
        self.csms = csms
        self.cp_id = cp_id

    @property
    def bench(self) -> Any:
        return self.controller.build_context.shared["sim_bench"]  # type: ignore[union-attr]

    def status(self, connector_id: int = 1) -> str:
        return self.controller.connectors[connector_id].state.status

    async def wait_status(self, status: str, connector_id: int = 1, timeout: float = 5.0) -> None:
        await self.csms.wait_for(lambda: self.status(connector_id) == status, timeout)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        return await self.csms.call(self.cp_id, action, payload)

    async def start_charging(self, connector_id: int = 1, tag: str = "TAG1") -> dict[str, Any]:
        self.bench.ev(connector_id).plug()
        self.bench.readers[0].present(tag)
        start = await self.csms.wait_for_message(
            "StartTransaction", count=len(self.csms.received("StartTransaction")) + 1
        )
        await self.csms.wait_for(
            lambda: (
                self.controller.connectors[connector_id].tx is not None
                and self.controller.connectors[connector_id].tx.transaction_id is not None
            )
        )
        await self.wait_status("Charging", connector_id)
        return start


@contextlib.asynccontextmanager
async def running_station(
    tmp_path: Path,
    *,
    connectors: int = 1,
    keys: dict[str, Any] | None = None,
    cp_id: str = "CP-TEST",
    password: str | None = None,
    csms_password: str | None = None,
    max_current_a: float = 32.0,
    restart: Any = None,
) -> AsyncIterator[Station]:
    async with CentralSystem(password=csms_password) as csms:
        config = simulated_config(
            charge_point_id=cp_id,
            csms_url=csms.url,
            connectors=connectors,
            state_dir=tmp_path / "state",
            ev_reaction_s=0.0,
            ocpp_keys=keys or {},
            password=password,
            max_current_a=max_current_a,
        )
        controller = Controller(config, restart=restart or (lambda kind: None))
        await controller.start()
        station = Station(controller, csms, cp_id)
        try:
            if csms_password is None or csms_password == password:
                await csms.wait_for(lambda: controller.boot_accepted, 10)
            yield station
        finally:
            await controller.stop()


@pytest.fixture
async def station(tmp_path: Path) -> AsyncIterator[Station]:
    async with running_station(tmp_path) as s:
        yield s
