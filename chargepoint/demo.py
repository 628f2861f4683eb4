"""`chargepoint demo`: one full charging session, controller and central system both on 127.0.0.1.

The EV plugs in, the driver taps a card, the charge point asks the central system
(Authorize), starts the transaction, charges with MeterValues every few seconds,
the EV is unplugged and the transaction stops. A timeline of both sides is printed,
then a summary.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from typing import Any

from chargepoint.api import ChangeKind, Subscription
from chargepoint.config import simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem, Record

ID_TAG = "04A2B3C4D5"
CHARGE_SECONDS = 12.0
SAMPLE_INTERVAL_S = 3


class Timeline:
    def __init__(self, out: Any = sys.stdout) -> None:
        self.t0 = time.monotonic()
        self.out = out

    def line(self, who: str, text: str) -> None:
        self.out.write(f"{time.monotonic() - self.t0:6.2f}s  {who:<14} {text}\n")
        self.out.flush()

    def csms_record(self, record: Record) -> None:
        p = record.payload
        if record.direction == "in":
            detail = {
                "BootNotification": lambda: f"{p.get('chargePointVendor')} {p.get('chargePointModel')}",
                "StatusNotification": lambda: (
                    f"connector {p['connectorId']} → {p['status']}"
                    + ("" if p["errorCode"] == "NoError" else f" ({p['errorCode']})")
                ),
                "Authorize": lambda: f"idTag {p['idTag']}",
                "StartTransaction": lambda: (
                    f"connector {p['connectorId']}, idTag {p['idTag']}, meterStart {p['meterStart']} Wh"
                ),
                "MeterValues": lambda: _meter_summary(p),
                "StopTransaction": lambda: (
                    f"transaction {p.get('transactionId')}, meterStop {p['meterStop']} Wh, "
                    f"reason {p.get('reason', 'Local')}"
                ),
                "Heartbeat": lambda: "",
            }.get(record.action, lambda: "")()
            self.line("CSMS ← CP", f"{record.action} {detail}".rstrip())
        else:
            self.line("CSMS → CP", f"{record.action} {p}")

    def controller_event(self, kind: str, data: dict[str, Any]) -> None:
        text = {
            "pilot": lambda: f"connector {data['connector']}: pilot state {data['state']}",
            "contactor": lambda: (
                f"connector {data['connector']}: contactor {'CLOSED' if data['closed'] else 'open'}"
            ),
            "offer": lambda: (
                f"connector {data['connector']}: pilot "
                + (
                    "state F"
                    if data.get("state_f")
                    else f"offers {data['amps']:.0f} A"
                    if data["amps"]
                    else "offers no current"
                )
            ),
            "tap": lambda: f"RFID tap {data['id_tag']}",
            "authorized": lambda: f"connector {data['connector']}: {data['id_tag']} authorized",
            "refused": lambda: f"{data['id_tag']} refused",
            "transaction_id": lambda: (
                f"connector {data['connector']}: transactionId {data['transaction_id']}"
            ),
            "boot": lambda: f"BootNotification {data['status']}",
        }.get(kind)
        if text is not None:
            self.line("charge point", text())


#: The application API's transaction events, named as the timeline names them.
_TRANSACTION_EVENTS = {"started": "transaction_started", "ended": "transaction_stopped"}


async def _follow(changes: Subscription, timeline: Timeline) -> None:
    async for change in changes:
        event = str(change.data.get("event", change.kind.value))
        if change.kind == ChangeKind.TRANSACTION:
            event = _TRANSACTION_EVENTS.get(event, event)
        timeline.controller_event(event, dict(change.data))


def _meter_summary(p: dict[str, Any]) -> str:
    parts = []
    for mv in p.get("meterValue", []):
        for sv in mv.get("sampledValue", []):
            if sv.get("measurand") == "Energy.Active.Import.Register":
                parts.append(f"{sv['value']} Wh")
            elif sv.get("measurand") == "Power.Active.Import":
                parts.append(f"{float(sv['value']) / 1000:.1f} kW")
    return f"transaction {p.get('transactionId')}: " + ", ".join(parts)


async def run_demo(*, verbose: bool = False, charge_seconds: float = CHARGE_SECONDS) -> int:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    timeline = Timeline()
    with tempfile.TemporaryDirectory(prefix="chargepoint-demo-") as state_dir:
        async with CentralSystem(on_record=timeline.csms_record) as csms:
            timeline.line("demo", f"central system listening on {csms.url}")
            config = simulated_config(
                charge_point_id="DEMO-CP-1",
                csms_url=csms.url,
                state_dir=state_dir,
                ev_reaction_s=0.5,
                ocpp_keys={
                    "MeterValueSampleInterval": SAMPLE_INTERVAL_S,
                    "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import,Current.Import",
                },
            )
            controller = Controller(config)
            changes = controller.api.subscribe()  # the timeline is a client of the application API
            follower = asyncio.create_task(_follow(changes, timeline), name="demo-timeline")
            await controller.start()
            try:
                return await _session(controller, csms, timeline, charge_seconds)
            finally:
                await controller.stop()
                await asyncio.sleep(0)  # let the last changes reach the timeline
                changes.close()
                await follower


async def _session(
    controller: Controller, csms: CentralSystem, timeline: Timeline, charge_seconds: float
) -> int:
    bench = controller.build_context.shared["sim_bench"]  # type: ignore[union-attr]
    await csms.wait_for(lambda: controller.boot_accepted, 15)
    await csms.wait_for_message("StatusNotification", where=lambda p: p["connectorId"] == 1)
    timeline.line("driver", "plugs the car in")
    bench.ev(1).plug()
    await csms.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Preparing")
    timeline.line("driver", f"taps card {ID_TAG}")
    bench.readers[0].present(ID_TAG)
    start = await csms.wait_for_message("StartTransaction", timeout=15)
    await csms.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Charging", timeout=15)
    timeline.line("demo", f"charging for {charge_seconds:.0f} s …")
    await asyncio.sleep(charge_seconds)
    timeline.line("driver", "unplugs the car")
    bench.ev(1).unplug()
    stop = await csms.wait_for_message("StopTransaction", timeout=15)
    await csms.wait_for(lambda: len(controller.outbox or []) == 0, 10)
    await csms.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Available", count=2)
    meter_values = csms.received("MeterValues")
    energy_wh = stop["meterStop"] - start["meterStart"]
    print()
    print("Summary")
    print(f"  transaction id   {stop.get('transactionId')}")
    print(f"  energy delivered {energy_wh / 1000:.3f} kWh ({energy_wh} Wh)")
    print(f"  meter values     {len(meter_values)}")
    print(f"  stop reason      {stop.get('reason')}")
    ok = energy_wh > 0 and stop.get("transactionId") is not None and len(meter_values) > 0
    print("  result           " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1
