"""MQTT end to end: the whole controller on simulated hardware with the loopback central system, its
application API, the MQTT front end and a real mosquitto; a subscriber sees what Home Assistant would."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import running_rig
from mqtt_helpers import (
    Mosquitto,
    Subscriber,
    controller_api,
    loop_lag,
    publish,
    run_broker,
    running_frontend,
)

P = "chargepoint/CP-MQTT"  # running_frontend's prefix


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from run_broker(tmp_path)


def api_of(rig: Any) -> Any:
    api = controller_api(rig.controller)
    if api is None:
        pytest.skip("needs the application API's implementation (issue 13)")
    return api


async def test_a_session_seen_through_mqtt_and_commands_from_it(broker: Mosquitto, tmp_path: Path) -> None:
    async with running_rig(tmp_path / "state") as rig:
        api = api_of(rig)
        async with Subscriber(broker) as sub, running_frontend(api, broker) as fe:
            await fe.wait_idle()
            cfg = json.loads((await sub.wait_for("homeassistant/number/CP-MQTT/c1_current_limit/config")).payload)
            assert cfg["max"] == rig.controller.config.connectors[0].max_current_a
            fw = json.loads((await sub.wait_for("homeassistant/sensor/CP-MQTT/c1_power/config")).payload)
            assert fw["device"]["sw_version"] == api.snapshot().firmware_version
            await sub.wait_value(f"{P}/1/status", "Available")
            await sub.wait_value(f"{P}/link", "connected")

            rig.bench.ev(1).plug()
            rig.tap("04A2B3C4")
            await sub.wait_value(f"{P}/1/status", "Charging")
            await sub.wait_value(f"{P}/1/pilot", "C")
            await sub.wait_for(f"{P}/1/power", where=lambda m: m.text not in ("None", "0"))
            await publish(broker, f"{P}/1/set/current_limit", "10")
            await sub.wait_value(f"{P}/1/limit", "10")
            await sub.wait_value(f"{P}/1/current_limit", "10")
            assert sub.last(f"{P}/1/limit_source").text.startswith("local")
            await publish(broker, f"{P}/1/set/current_limit", "abc")
            err = json.loads((await sub.wait_for(f"{P}/error")).payload)
            assert err["error"] == "bad_value" and err["payload"] == "abc"
            assert api.snapshot().connector(1).local_limit_a == 10
            await publish(broker, f"{P}/1/stop", "PRESS")
            await sub.wait_for(f"{P}/1/status", where=lambda m: m.text in ("Finishing", "Available"))
            await sub.wait_for(f"{P}/1/session_energy", where=lambda m: m.text != "None")
            stop = await rig.cs.wait_for_message("StopTransaction")
            assert stop["reason"] == "Local"


async def test_the_dispatcher_is_not_slowed_while_the_broker_is_away(broker: Mosquitto, tmp_path: Path) -> None:
    async with running_rig(tmp_path / "state") as rig:
        api = api_of(rig)
        async with running_frontend(api, broker, reconnect_min_s=0.05, reconnect_max_s=0.2) as fe:
            await fe.wait_idle()
            rig.bench.ev(1).plug()
            rig.tap("04A2B3C4")
            await rig.wait_status(1, "Charging", timeout=10)
            await asyncio.to_thread(broker.stop)
            lag_task = asyncio.create_task(loop_lag(2.0))
            reactions = []
            for _ in range(5):
                start = len(rig.events)
                t0 = time.perf_counter()
                rig.bench.ev(1).suspend()  # the pilot leaves C: the contactor must open at once
                await rig.wait(lambda s=start: any(k == "contactor" and not d["closed"]
                                                   for k, d in rig.events[s:]), 5)
                reactions.append(time.perf_counter() - t0)
                rig.bench.ev(1).resume()
                await rig.wait(lambda: rig.controller.connectors[1].state.contactor_closed, 5)
            lags = await lag_task
            assert not fe.stats.connected
            assert max(lags) < 0.1, max(lags)
            assert max(reactions) < 0.5, reactions


async def test_simulate_publishes_to_the_broker_given_with_mqtt(broker: Mosquitto, tmp_path: Path) -> None:
    import sys

    from chargepoint.csms import CentralSystem

    # simulate --mqtt is anonymous: a second listener without the password file
    anon = tmp_path / "anon.conf"
    anon.write_text(broker.conf.read_text().replace("allow_anonymous false", "allow_anonymous true")
                    .replace(f"password_file {broker.passwd}\n", ""))
    await asyncio.to_thread(broker.stop)
    broker.conf = anon
    await asyncio.to_thread(broker.start)
    async with CentralSystem() as cs:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chargepoint", "simulate", "--csms", cs.url, "--id", "CP-SIM",
            "--state-dir", str(tmp_path / "sim"), "--mqtt", f"127.0.0.1:{broker.port}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stderr is not None
        try:
            async with Subscriber(broker, "chargepoint/CP-SIM/#") as sub:
                try:
                    await sub.wait_value("chargepoint/CP-SIM/1/status", "Available", timeout=15)
                except TimeoutError:
                    proc.stdin.close()
                    err = (await proc.stderr.read()).decode(errors="replace")
                    if "no application API" in err:
                        pytest.skip("needs the application API's implementation (issue 13)")
                    raise AssertionError(err[-3000:]) from None
                proc.stdin.write(b"plug 1\ntap 04A2B3C4\n")
                await proc.stdin.drain()
                await sub.wait_value("chargepoint/CP-SIM/1/status", "Charging", timeout=15)
                proc.stdin.write(b"quit\n")
                await proc.stdin.drain()
                await sub.wait_value("chargepoint/CP-SIM/status", "offline", timeout=15)
            async with asyncio.timeout(20):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
