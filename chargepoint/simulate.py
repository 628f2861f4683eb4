"""`chargepoint simulate`: the whole controller with simulated hardware, driven by stdin commands.

Commands, one per line (answers on stdout, logs on stderr):
  plug C [AMPS] | unplug C | tap IDTAG | ev C suspend | ev C resume
                                  (AMPS: the cable's PP rating, default 32; 0 = an invalid cable)
  temp C CELSIUS                  (the connector's simulated socket temperature)
  fault C KIND | clear C KIND     (KIND: rcd, weld, meter, overcurrent, diode, cp_short, lock, overtemp)
  status                          (one JSON line)
  start C [IDTAG] | stop C        (a session through the application API, as the web UI does; no IDTAG:
                                   free vend, when configured)
  limit C AMPS|none               (the owner's local current limit; 0 pauses)
  available C on|off | reset-fault C   (availability; clear a latched fault as an admin)
  charge-now C on|off             (override the [energy.schedule] off-peak windows for this session)
  quit                            (end of input also quits)

The car, the cable, the card reader and the faults are the simulated *hardware* (the bench); ``status`` and
the session commands go through :mod:`chargepoint.api`, the same door the web UI and MQTT use.

With ``--config FILE`` the installer's own configuration runs with every device simulated (see
:func:`chargepoint.config.simulated_from`); with a status socket, ``chargepoint status`` works against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from chargepoint.api import CommandError, Role, StationApi
from chargepoint.controller import Controller
from chargepoint.frontends.mqtt import start_mqtt
from hal.interfaces import FaultKind
from hal.sim.board import SimBench
from hal.sim.energy import energy_command

log = logging.getLogger(__name__)

HELP = ("commands: plug C [AMPS] | unplug C | temp C CELSIUS | tap IDTAG | ev C suspend|resume | fault C KIND | "
        "clear C KIND | status | start C [IDTAG] | stop C | limit C AMPS|none | available C on|off | "
        "reset-fault C | charge-now C on|off | dim on|off | sun W | phases C 1|3 | quit")


class Simulator:
    """Executes the text commands against a controller built on simulated hardware."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    @property
    def bench(self) -> SimBench:
        assert self.controller.build_context is not None
        return self.controller.build_context.shared["sim_bench"]

    @property
    def api(self) -> StationApi:
        return self.controller.api  # type: ignore[no-any-return]

    def _connector(self, word: str) -> int:
        try:
            cid = int(word)
        except ValueError:
            raise ValueError(f"connector must be a number, not {word!r}") from None
        known = [c.id for c in self.api.snapshot().connectors]
        if cid not in known:
            raise ValueError(f"no connector {cid} (this charge point has {len(known)})")
        return cid

    async def _api_command(self, cmd: str, args: list[str]) -> dict[str, Any] | None:
        """The session commands: the simulator's operator is the owner (admin role)."""
        api, admin = self.api, Role.ADMIN
        try:
            if cmd == "start" and len(args) in (1, 2):
                result = await api.start_session(self._connector(args[0]), args[1] if len(args) == 2 else None,
                                                 role=admin)
            elif cmd == "stop" and len(args) == 1:
                result = await api.stop_session(self._connector(args[0]), role=admin)
            elif cmd == "limit" and len(args) == 2:
                amps: float | None = None
                if args[1].lower() != "none":
                    try:
                        amps = float(args[1])
                    except ValueError:
                        raise ValueError(f"limit must be a number of amps or none, not {args[1]!r}") from None
                result = await api.set_local_limit(self._connector(args[0]), amps, role=admin)
            elif cmd == "available" and len(args) == 2 and args[1].lower() in ("on", "off"):
                result = await api.set_available(self._connector(args[0]), args[1].lower() == "on", role=admin)
            elif cmd == "charge-now" and len(args) == 2 and args[1].lower() in ("on", "off"):
                result = await api.charge_now(self._connector(args[0]), args[1].lower() == "on",  # type: ignore[attr-defined]
                                              role=admin)
            elif cmd == "reset-fault" and len(args) == 1:
                result = await api.clear_fault(self._connector(args[0]), role=admin)
            else:
                return None
        except CommandError as exc:
            return {"ok": False, "error": exc.message, "code": exc.code}
        return {"ok": result.accepted, "message": result.message} if result.accepted else \
            {"ok": False, "error": result.message}

    async def execute(self, line: str) -> dict[str, Any] | None:
        """Run one command. Returns what to print (as JSON) or None."""
        words = line.split()
        if not words or words[0].startswith("#"):
            return None
        cmd, args = words[0].lower(), words[1:]
        if cmd == "status":
            return self.api.snapshot().as_dict()
        if cmd in ("start", "stop", "limit", "available", "reset-fault", "charge-now"):
            answer = await self._api_command(cmd, args)
            if answer is not None:
                return answer
        if cmd in ("plug", "unplug") and len(args) == 1:
            ev = self.bench.ev(self._connector(args[0]))
            ev.plug(32.0) if cmd == "plug" else ev.unplug()
            return {"ok": True}
        if cmd == "plug" and len(args) == 2:
            cid = self._connector(args[0])
            try:
                amps = float(args[1])
            except ValueError:
                raise ValueError(f"cable rating must be a number of amps (0 = invalid), not {args[1]!r}") from None
            if not 0 <= amps <= 80:
                raise ValueError("cable rating: 13, 20, 32 or 63 A (0 to 80; 0 = an invalid cable)")
            self.bench.ev(cid).plug(amps)
            return {"ok": True}
        if cmd == "temp" and len(args) == 2:
            cid = self._connector(args[0])
            sensors = self.controller.build_context.shared.get("sim_temperatures", {})  # type: ignore[union-attr]
            if cid not in sensors:
                raise ValueError(f"connector {cid} has no simulated temperature sensor")
            try:
                celsius = float(args[1])
            except ValueError:
                raise ValueError(f"temperature must be a number (°C), not {args[1]!r}") from None
            if not -40 <= celsius <= 150:
                raise ValueError("temperature: -40 to 150 °C")
            sensors[cid].set(celsius)
            return {"ok": True}
        if cmd == "tap" and len(args) == 1:
            if len(args[0]) > 20:
                raise ValueError("an idTag has at most 20 characters (OCPP 1.6 CiString20)")
            if not self.bench.readers:
                raise ValueError("this configuration has no RFID reader ([[readers]]): start a session with "
                                 "RemoteStartTransaction from the central system")
            self.bench.readers[0].present(args[0])
            return {"ok": True}
        if cmd == "ev" and len(args) == 2 and args[1] in ("suspend", "resume"):
            ev = self.bench.ev(self._connector(args[0]))
            ev.suspend() if args[1] == "suspend" else ev.resume()
            return {"ok": True}
        if cmd in ("fault", "clear") and len(args) == 2:
            cid = self._connector(args[0])
            try:
                kind = FaultKind(args[1].lower())
            except ValueError:
                raise ValueError(
                    f"unknown fault kind {args[1]!r}; one of {', '.join(k.value for k in FaultKind)}"
                ) from None
            if cmd == "fault":
                self.bench.inject(cid, kind)
            else:
                self.bench.clear(cid, kind)
            return {"ok": True}
        if cmd in ("dim", "sun", "phases"):  # [energy] hardware (issue 16): hal/sim/energy.py
            return energy_command(self.controller.build_context.shared, cmd, args)  # type: ignore[union-attr]
        raise ValueError(f"unknown command {line.strip()!r}; {HELP}")


async def _stdin_lines() -> Any:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line


async def run_simulator(controller: Controller, *, settle_s: float = 0.05) -> int:
    await controller.start()
    mqtt = await start_mqtt(getattr(controller, "api", None), controller.config)
    sim = Simulator(controller)
    out = sys.stdout
    try:
        async for line in _stdin_lines():
            if line.strip().lower() in ("quit", "exit"):
                break
            try:
                result = await sim.execute(line)
            except (ValueError, KeyError) as exc:
                result = {"ok": False, "error": str(exc).strip("'\"")}
            await asyncio.sleep(settle_s)  # let the controller react before the next command
            if result is not None and ("status" in line or not result.get("ok", True)):
                out.write(json.dumps(result) + "\n")
                out.flush()
    finally:
        if mqtt is not None:
            await mqtt.stop()
        await controller.stop()
    return 0
