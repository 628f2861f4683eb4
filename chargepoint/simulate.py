"""`chargepoint simulate`: the whole controller with simulated hardware, driven by stdin commands.

Commands, one per line (answers on stdout, logs on stderr):
  plug C [AMPS] | unplug C | tap IDTAG | ev C suspend | ev C resume
                                  (AMPS: the cable's PP rating, default 32; 0 = an invalid cable)
  temp C CELSIUS                  (the connector's simulated socket temperature)
  fault C KIND | clear C KIND     (KIND: rcd, weld, meter, overcurrent, diode, cp_short, lock, overtemp)
  status                          (one JSON line)
  quit                            (end of input also quits)

With ``--config FILE`` the installer's own configuration runs with every device simulated (see
:func:`chargepoint.config.simulated_from`); with a status socket, ``chargepoint status`` works against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from chargepoint.controller import Controller
from chargepoint.frontends.mqtt import start_mqtt
from hal.interfaces import FaultKind
from hal.sim.board import SimBench

log = logging.getLogger(__name__)

HELP = "commands: plug C [AMPS] | unplug C | temp C CELSIUS | tap IDTAG | ev C suspend|resume | fault C KIND | clear C KIND | status | quit"


class Simulator:
    """Executes the text commands against a controller built on simulated hardware."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    @property
    def bench(self) -> SimBench:
        assert self.controller.build_context is not None
        return self.controller.build_context.shared["sim_bench"]

    def _connector(self, word: str) -> int:
        try:
            cid = int(word)
        except ValueError:
            raise ValueError(f"connector must be a number, not {word!r}") from None
        if cid not in self.controller.connectors:
            raise ValueError(f"no connector {cid} (this charge point has {len(self.controller.connectors)})")
        return cid

    async def execute(self, line: str) -> dict[str, Any] | None:
        """Run one command. Returns what to print (as JSON) or None."""
        words = line.split()
        if not words or words[0].startswith("#"):
            return None
        cmd, args = words[0].lower(), words[1:]
        if cmd == "status":
            return self.controller.snapshot()
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
