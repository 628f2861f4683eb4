"""End-to-end rig: the loopback central system (real websocket on 127.0.0.1) plus the whole controller on
simulated hardware, built the way chargepoint/demo.py builds it.

Use the context manager::

    async with running_rig(tmp_path, ocpp_keys={...}) as rig:
        rig.bench.ev(1).plug()
        rig.tap("04A2B3C4")
        await rig.cs.wait_for_message("StartTransaction")

or the fixture (add ``pytest_plugins = ["e2e_helpers"]`` to the test module)::

    async def test_x(e2e_rig):
        rig = await e2e_rig(ocpp_keys={...})

Every rig started through the fixture is stopped at the end of the test. ``csms=False`` builds the
controller against a loopback URL where nothing listens (offline from the start); ``rig.go_offline()``
closes the central system under a running controller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chargepoint.config import simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem, poll_until
from hal.sim.board import SimBench

CP_ID = "CP-E2E"


def free_loopback_port() -> int:
    """A port on 127.0.0.1 nothing listens on (for an unreachable central system)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Rig:
    controller: Controller
    cs: CentralSystem | None
    cp_id: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def bench(self) -> SimBench:
        assert self.controller.build_context is not None
        return self.controller.build_context.shared["sim_bench"]

    def tap(self, id_tag: str, reader: int = 0) -> None:
        self.bench.readers[reader].present(id_tag)

    async def call(self, action: str, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """CSMS → charge point request; a CALLERROR comes back as {"__error__": code, "description": …}."""
        assert self.cs is not None
        return await self.cs.call(self.cp_id, action, payload, timeout)

    # ------------------------------------------------------------------ waiting
    async def wait(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Poll ``predicate`` on the loop (controller-side conditions) until truthy."""
        return await poll_until(predicate, timeout, interval=0.005)

    async def wait_event(
        self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda d: True, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Wait for a controller timeline event (``controller.listeners``), e.g. "transaction_started"."""
        return await self.wait(
            lambda: next((d for k, d in self.events if k == kind and where(d)), None), timeout
        )

    def event_kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    async def wait_status(self, connector_id: int, status: str, timeout: float = 5.0) -> None:
        """Wait until the controller's connector has ``status`` (what the state machine derived)."""
        rt = self.controller.connectors[connector_id]
        await self.wait(lambda: rt.state.status == status, timeout)

    async def wait_sent_status(
        self, connector_id: int, status: str, count: int = 1, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Wait for the ``count``-th StatusNotification of ``status`` at the central system."""
        assert self.cs is not None
        return await self.cs.wait_for_message(
            "StatusNotification",
            count=count,
            timeout=timeout,
            where=lambda p: p["connectorId"] == connector_id and p["status"] == status,
        )

    def sent_statuses(self, connector_id: int) -> list[str]:
        assert self.cs is not None
        return [
            p["status"] for p in self.cs.received("StatusNotification") if p["connectorId"] == connector_id
        ]

    async def go_offline(self) -> None:
        """Close the central system: the websocket drops and the controller is offline."""
        assert self.cs is not None
        await self.cs.close()
        link = self.controller.link
        assert link is not None
        await self.wait(lambda: link.session is None, 5.0)

    async def settle(self, seconds: float = 0.05) -> None:
        await asyncio.sleep(seconds)

    async def stop(self) -> None:
        """Stop the controller (quietly, see :func:`stop_quietly`) and the central system."""
        await stop_quietly(self.controller)
        if self.cs is not None:
            await self.cs.close()


async def stop_quietly(controller: Controller) -> None:
    """Stop once no OCPP call is in flight.

    Why: on Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives together with the awaited
    result (CPython gh-86296); ``OcppSession.call_raw`` waits for answers with ``wait_for``, so cancelling the
    status sender just as a CALLRESULT arrives leaves it running and ``Controller.stop()`` waits for ever.
    Tests stop right after seeing a message, exactly that moment.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    quiet = 0
    while quiet < 3 and loop.time() < deadline:
        link = controller.link
        session = link.session if link is not None else None
        busy = session is not None and (session._call_lock.locked() or controller.station_link.statuses_pending())
        quiet = 0 if busy else quiet + 1
        await asyncio.sleep(0.01)
    await controller.stop()
    if controller.store is not None:
        controller.store.close()  # a restarted controller on the same state dir gets the file, not a copy


@asynccontextmanager
async def running_rig(
    state_dir: str | Path,
    *,
    connectors: int = 1,
    ocpp_keys: dict[str, Any] | None = None,
    csms: bool = True,
    ev_reaction_s: float = 0.0,
    cp_id: str = CP_ID,
    wait_boot: bool = True,
    configure_csms: Callable[[CentralSystem], None] | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> AsyncIterator[Rig]:
    """Start a central system (unless ``csms=False``) and a controller; stop both on exit."""
    cs: CentralSystem | None = None
    async with AsyncExitStack() as stack:
        if csms:
            cs = CentralSystem()
            if configure_csms is not None:
                configure_csms(cs)
            await cs.start()
            stack.push_async_callback(cs.close)
            url = cs.url
        else:
            url = f"ws://127.0.0.1:{free_loopback_port()}/ocpp"
        config = simulated_config(
            charge_point_id=cp_id,
            csms_url=url,
            connectors=connectors,
            state_dir=state_dir,
            ev_reaction_s=ev_reaction_s,
            ocpp_keys=dict(ocpp_keys or {}),
        )
        if config_overrides:
            config = dataclasses.replace(config, **config_overrides)
        controller = Controller(config)
        rig = Rig(controller, cs, cp_id)
        controller.listeners.append(lambda kind, data: rig.events.append((kind, data)))
        await controller.start()
        stack.push_async_callback(stop_quietly, controller)
        if cs is not None and wait_boot:
            await cs.wait_for(lambda: controller.boot_accepted, 10)
            for cid in controller.connectors:
                await cs.wait_for_message(
                    "StatusNotification", where=lambda p, cid=cid: p["connectorId"] == cid, timeout=10
                )
        yield rig


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def e2e_rig(tmp_path: Path) -> AsyncIterator[RigFactory]:
    """Factory fixture: ``rig = await e2e_rig(**running_rig kwargs)``; each call gets its own state dir."""
    async with AsyncExitStack() as stack:
        counter = 0

        async def make(**kwargs: Any) -> Rig:
            nonlocal counter
            counter += 1
            state_dir = kwargs.pop("state_dir", tmp_path / f"state{counter}")
            return await stack.enter_async_context(running_rig(state_dir, **kwargs))

        yield make
