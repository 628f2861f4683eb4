"""Core profile end to end: the controller against a real websocket central system on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import Station, running_station


async def test_boot_and_initial_status(station: Station) -> None:
    boot = station.csms.received("BootNotification")[0]
    assert boot["chargePointVendor"] == "OpenWallbox"
    assert boot["firmwareVersion"]
    statuses = await station.csms.wait_for(
        lambda: (
            len(station.csms.received("StatusNotification")) >= 2
            and station.csms.received("StatusNotification")
        )
    )
    assert {(s["connectorId"], s["status"]) for s in statuses[:2]} == {(0, "Available"), (1, "Available")}


async def test_full_session_rfid(station: Station) -> None:
    cs = station.csms
    start = await station.start_charging(tag="ABC123")
    assert start["idTag"] == "ABC123" and start["connectorId"] == 1
    assert cs.received("Authorize")[0]["idTag"] == "ABC123"
    rt = station.controller.connectors[1]
    assert rt.hw.contactor.is_closed and rt.hw.pilot.offered_amps == 32.0
    await asyncio.sleep(0.3)
    station.bench.ev(1).unplug()
    stop = await cs.wait_for_message("StopTransaction")
    assert stop["transactionId"] == rt.tx.transaction_id if rt.tx else stop["transactionId"] == 1001
    assert stop["reason"] == "EVDisconnected"
    assert stop["meterStop"] > start["meterStart"]
    await cs.wait_for_message(
        "StatusNotification", where=lambda p: p["status"] == "Available" and p["connectorId"] == 1, count=2
    )
    assert not rt.hw.contactor.is_closed
    # status order: Preparing, then Charging after StartTransaction, Available after StopTransaction
    order = [
        (r.action, r.payload.get("status"))
        for r in cs.records
        if r.direction == "in"
        and r.action in ("StartTransaction", "StopTransaction", "StatusNotification")
        and r.payload.get("connectorId", 1) == 1
    ]
    assert order.index(("StartTransaction", None)) < order.index(("StatusNotification", "Charging"))
    assert order.index(("StopTransaction", None)) < len(order) - 1
    assert order[-1] == ("StatusNotification", "Available")


async def test_refused_tag_does_not_start(station: Station) -> None:
    station.csms.behaviour.authorize_status = lambda tag: "Blocked"
    station.bench.ev(1).plug()
    station.bench.readers[0].present("BAD1")
    await station.csms.wait_for_message("Authorize")
    await asyncio.sleep(0.2)
    assert station.csms.received("StartTransaction") == []
    assert not station.controller.connectors[1].hw.contactor.is_closed
    assert station.status() == "Preparing"


async def test_tap_again_stops_with_reason_local_and_finishing(station: Station) -> None:
    await station.start_charging(tag="T1")
    station.bench.readers[0].present("T1")
    stop = await station.csms.wait_for_message("StopTransaction")
    assert stop["reason"] == "Local" and stop["idTag"] == "T1"
    await station.wait_status("Finishing")
    assert not station.controller.connectors[1].hw.contactor.is_closed
    station.bench.ev(1).unplug()
    await station.wait_status("Available")


async def test_meter_values_sampled(tmp_path: Path) -> None:
    keys = {
        "MeterValueSampleInterval": 1,
        "MeterValuesSampledData": "Energy.Active.Import.Register,Current.Import,Voltage",
        "StopTxnSampledData": "Energy.Active.Import.Register",
    }
    async with running_station(tmp_path, keys=keys) as st:
        start = await st.start_charging()
        mv = await st.csms.wait_for_message("MeterValues", count=2, timeout=5)
        assert mv["transactionId"] == 1001 and mv["connectorId"] == 1
        values = mv["meterValue"][0]["sampledValue"]
        measurands = {(v["measurand"], v.get("phase")) for v in values}
        assert ("Energy.Active.Import.Register", None) in measurands
        assert {("Current.Import", "L1"), ("Current.Import", "L2"), ("Current.Import", "L3")} <= measurands
        assert ("Voltage", "L1-N") in measurands
        assert all(v["context"] == "Sample.Periodic" for v in values)
        st.bench.ev(1).unplug()
        stop = await st.csms.wait_for_message("StopTransaction")
        contexts = [sv["context"] for mv in stop["transactionData"] for sv in mv["sampledValue"]]
        assert contexts[0] == "Transaction.Begin" and contexts[-1] == "Transaction.End"
        energy = [int(v["value"]) for v in values if v["measurand"] == "Energy.Active.Import.Register"][0]
        assert start["meterStart"] <= energy <= stop["meterStop"]


async def test_remote_start_and_stop(station: Station) -> None:
    station.bench.ev(1).plug()
    answer = await station.call("RemoteStartTransaction", {"idTag": "REMOTE1", "connectorId": 1})
    assert answer == {"status": "Accepted"}
    start = await station.csms.wait_for_message("StartTransaction")
    assert start["idTag"] == "REMOTE1"
    await station.wait_status("Charging")
    rt = station.controller.connectors[1]
    tx_id = await station.csms.wait_for(lambda: rt.tx and rt.tx.transaction_id)
    assert (await station.call("RemoteStopTransaction", {"transactionId": 999}))["status"] == "Rejected"
    assert (await station.call("RemoteStopTransaction", {"transactionId": tx_id}))["status"] == "Accepted"
    stop = await station.csms.wait_for_message("StopTransaction")
    assert stop["reason"] == "Remote" and stop["transactionId"] == tx_id


async def test_remote_start_rejected_on_unknown_or_busy_connector(station: Station) -> None:
    assert (await station.call("RemoteStartTransaction", {"idTag": "X", "connectorId": 5}))[
        "status"
    ] == "Rejected"
    await station.start_charging()
    assert (await station.call("RemoteStartTransaction", {"idTag": "X", "connectorId": 1}))[
        "status"
    ] == "Rejected"


async def test_remote_start_waits_for_plug_then_times_out(tmp_path: Path) -> None:
    async with running_station(tmp_path, keys={"ConnectionTimeOut": 1}) as st:
        assert (await st.call("RemoteStartTransaction", {"idTag": "R2", "connectorId": 1}))[
            "status"
        ] == "Accepted"
        await st.wait_status("Preparing")
        await st.wait_status("Available", timeout=3)
        assert st.csms.received("StartTransaction") == []


async def test_change_availability(station: Station) -> None:
    ans = await station.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
    assert ans["status"] == "Accepted"
    await station.wait_status("Unavailable")
    assert station.bench.ev(1).cp_state.value == "F"
    ans = await station.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"})
    await station.wait_status("Available")
    assert (await station.call("ChangeAvailability", {"connectorId": 7, "type": "Operative"}))[
        "status"
    ] == "Rejected"


async def test_change_availability_scheduled_during_transaction(station: Station) -> None:
    await station.start_charging()
    ans = await station.call("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"})
    assert ans["status"] == "Scheduled"
    assert station.status() == "Charging"
    station.bench.ev(1).unplug()
    await station.csms.wait_for_message("StopTransaction")
    await station.wait_status("Unavailable")
    await station.csms.wait_for_message(
        "StatusNotification", where=lambda p: p["connectorId"] == 0 and p["status"] == "Unavailable"
    )


async def test_configuration_get_and_change(station: Station) -> None:
    conf = await station.call("GetConfiguration", {})
    keys = {k["key"]: k for k in conf["configurationKey"]}
    assert keys["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True, "value": "1"}
    assert "AuthorizationKey" not in keys  # write-only (security extension)
    conf = await station.call("GetConfiguration", {"key": ["HeartbeatInterval", "NoSuchKey"]})
    assert conf["unknownKey"] == ["NoSuchKey"] and conf["configurationKey"][0]["key"] == "HeartbeatInterval"
    assert (await station.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "120"}))[
        "status"
    ] == "Accepted"
    assert (await station.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "abc"}))[
        "status"
    ] == "Rejected"
    assert (await station.call("ChangeConfiguration", {"key": "NumberOfConnectors", "value": "3"}))[
        "status"
    ] == "Rejected"
    assert (await station.call("ChangeConfiguration", {"key": "Nope", "value": "1"}))[
        "status"
    ] == "NotSupported"
    assert (
        await station.call(
            "ChangeConfiguration",
            {"key": "MeterValuesSampledData", "value": "Energy.Active.Import.Register,SoC"},
        )
    )["status"] == "Rejected"
    assert station.controller.keys["HeartbeatInterval"] == 120
    # persisted: a new controller on the same state directory sees the value
    assert station.controller.store.get_config()["HeartbeatInterval"] == "120"


async def test_heartbeat_and_data_transfer(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        st.controller.keys.change("HeartbeatInterval", "1")
        await st.csms.wait_for_message("Heartbeat", timeout=4)
        ans = await st.call("DataTransfer", {"vendorId": "com.example", "messageId": "x", "data": "y"})
        assert ans["status"] == "UnknownVendorId"
        assert (await st.call("ClearCache", {}))["status"] == "Accepted"


async def test_unlock_connector_stops_transaction(station: Station) -> None:
    await station.start_charging()
    ans = await station.call("UnlockConnector", {"connectorId": 1})
    assert ans["status"] == "Unlocked"
    stop = await station.csms.wait_for_message("StopTransaction")
    assert stop["reason"] == "UnlockCommand"
    assert (await station.call("UnlockConnector", {"connectorId": 9}))["status"] == "NotSupported"


async def test_reset_stops_transactions_and_restarts(tmp_path: Path) -> None:
    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        await st.start_charging()
        assert (await st.call("Reset", {"type": "Soft"}))["status"] == "Accepted"
        stop = await st.csms.wait_for_message("StopTransaction")
        assert stop["reason"] == "SoftReset"
        await st.csms.wait_for(lambda: restarts == ["Soft"], 5)
        assert not st.controller.connectors[1].hw.contactor.is_closed


async def test_start_transaction_not_accepted_stops(station: Station) -> None:
    station.csms.behaviour.start_status = lambda tag: "Invalid"
    station.bench.ev(1).plug()
    station.bench.readers[0].present("T9")
    stop = await station.csms.wait_for_message("StopTransaction")
    assert stop["reason"] == "DeAuthorized"
    await station.wait_status("Finishing")


async def test_ev_suspend_and_resume(station: Station) -> None:
    await station.start_charging()
    station.bench.ev(1).suspend()
    await station.wait_status("SuspendedEV")
    assert not station.controller.connectors[1].hw.contactor.is_closed
    station.bench.ev(1).resume()
    await station.wait_status("Charging")


async def test_faults_open_contactor_and_report(station: Station) -> None:
    await station.start_charging()
    station.bench.inject(1, __import__("hal.interfaces", fromlist=["FaultKind"]).FaultKind.RCD)
    await station.wait_status("Faulted")
    rt = station.controller.connectors[1]
    assert not rt.hw.contactor.is_closed
    assert station.bench.ev(1).cp_state.value == "F"
    sn = await station.csms.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Faulted")
    assert sn["errorCode"] == "GroundFailure"
    # latched: clearing the hardware signal does not clear the fault
    station.bench.clear(1, __import__("hal.interfaces", fromlist=["FaultKind"]).FaultKind.RCD)
    await asyncio.sleep(0.5)
    assert station.status() == "Faulted"


async def test_basic_auth(tmp_path: Path) -> None:
    async with running_station(
        tmp_path, password="s3cret-pass-123456", csms_password="s3cret-pass-123456"
    ) as st:
        assert st.controller.boot_accepted
        assert st.csms.last_request_headers["Authorization"].startswith("Basic ")
    async with running_station(
        tmp_path / "b", password="wrong-password-1234", csms_password="s3cret-pass-123456"
    ) as st:
        await asyncio.sleep(0.5)
        assert not st.controller.boot_accepted and st.csms.received("BootNotification") == []


async def test_boot_pending_then_accepted(tmp_path: Path) -> None:
    from chargepoint.config import simulated_config
    from chargepoint.controller import Controller
    from chargepoint.csms import CentralSystem

    async with CentralSystem() as cs:
        cs.behaviour.boot_status = "Pending"
        cs.behaviour.boot_interval = 1
        config = simulated_config(
            charge_point_id="CP-P", csms_url=cs.url, state_dir=tmp_path, ev_reaction_s=0
        )
        c = Controller(config)
        await c.start()
        try:
            await cs.wait_for_message("BootNotification")
            assert (await cs.call("CP-P", "RemoteStartTransaction", {"idTag": "A"}))["status"] == "Rejected"
            await asyncio.sleep(0.3)
            assert cs.received("StatusNotification") == []  # nothing but responses while not accepted
            cs.behaviour.boot_status = "Accepted"
            await cs.wait_for_message("BootNotification", count=2, timeout=4)
            await cs.wait_for_message("StatusNotification")
            assert c.boot_accepted
        finally:
            await c.stop()


async def test_reconnect_sends_current_status(tmp_path: Path) -> None:
    """After a reconnect (same process, already booted) the central system gets connector 0 and every
    connector once, each with the status it is in now, whether it changed or not; no second boot.

    Waits for conditions only: the statuses sent before the drop must have arrived before it (a drop can
    cut one off, which is not what this test is about), and the reconnect's statuses are counted after."""
    async with running_station(tmp_path, connectors=2) as st:
        cs = st.csms

        def delivered() -> set[tuple[int, str]]:
            return {(p["connectorId"], p["status"]) for p in cs.received("StatusNotification")}

        await cs.wait_for(lambda: {(0, "Available"), (1, "Available"), (2, "Available")} <= delivered())
        st.bench.ev(1).plug()
        await cs.wait_for(lambda: (1, "Preparing") in delivered())
        before = len(cs.received("StatusNotification"))
        await cs.drop_connections()
        await cs.wait_for(lambda: cs.connections >= 2, 10)

        def after_reconnect() -> dict[int, str] | None:
            sent = {p["connectorId"]: p["status"] for p in cs.received("StatusNotification")[before:]}
            return sent if set(sent) >= {0, 1, 2} else None

        sent = await cs.wait_for(after_reconnect, 10)
        assert sent == {0: "Available", 1: "Preparing", 2: "Available"}
        assert len(cs.received("BootNotification")) == 1


async def test_authorization_key_change_reconnects_with_new_password(tmp_path: Path) -> None:
    async with running_station(
        tmp_path, password="first-password-12345", csms_password="first-password-12345"
    ) as st:
        new_key = "second-password-1234"
        ans = await st.call("ChangeConfiguration", {"key": "AuthorizationKey", "value": new_key})
        assert ans["status"] == "Accepted"
        st.csms.password = new_key
        await st.csms.wait_for(lambda: st.csms.connections >= 2, 10)
        await st.csms.wait_for(lambda: st.controller.link.session is not None, 10)
        import base64

        expected = "Basic " + base64.b64encode(f"CP-TEST:{new_key}".encode()).decode()
        assert st.csms.last_request_headers["Authorization"] == expected
        conf = await st.call("GetConfiguration", {"key": ["AuthorizationKey"]})
        assert conf["unknownKey"] == ["AuthorizationKey"]  # write-only


async def test_data_transfer_from_the_charge_point(station: Station) -> None:
    answer = await station.controller.station_link.data_transfer("org.openwallbox", "hello", "42")
    assert answer["status"] == "Accepted"
    assert station.csms.received("DataTransfer") == [
        {"vendorId": "org.openwallbox", "messageId": "hello", "data": "42"}
    ]


async def test_clock_aligned_meter_values(tmp_path: Path) -> None:
    keys = {"ClockAlignedDataInterval": 1, "MeterValuesAlignedData": "Energy.Active.Import.Register,Voltage"}
    async with running_station(tmp_path, keys=keys) as st:
        idle = await st.csms.wait_for_message("MeterValues", timeout=4)
        assert (
            "transactionId" not in idle
            and idle["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
        )
        ts = idle["meterValue"][0]["timestamp"]
        assert ts[17:19].isdigit() and ts.endswith("Z")
        await st.start_charging()
        tx_mv = await st.csms.wait_for_message("MeterValues", where=lambda p: "transactionId" in p, timeout=4)
        assert tx_mv["transactionId"] == 1001
        assert {v["measurand"] for v in tx_mv["meterValue"][0]["sampledValue"]} == {
            "Energy.Active.Import.Register",
            "Voltage",
        }


async def test_hard_reset(tmp_path: Path) -> None:
    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        await st.start_charging()
        assert (await st.call("Reset", {"type": "Hard"}))["status"] == "Accepted"
        stop = await st.csms.wait_for_message("StopTransaction")
        assert stop["reason"] == "HardReset"
        await st.csms.wait_for(lambda: restarts == ["Hard"], 5)


async def test_unlock_waits_until_the_car_stopped_drawing(station: Station) -> None:
    await station.start_charging()
    ev = station.bench.ev(1)
    drawing_at_unlock: list[float] = []
    lock = station.controller.connectors[1].hw.lock
    original_unlock = lock.unlock

    async def unlock() -> bool:
        drawing_at_unlock.append(ev.drawn_a)
        return await original_unlock()

    lock.unlock = unlock
    # a slow car: it keeps asking for power for 1 s after the offer is withdrawn
    original = ev.set_offer

    def slow_set_offer(amps: float | None, unavailable: bool = False) -> None:
        if amps is None and not unavailable:
            asyncio.get_running_loop().call_later(1.0, original, amps, unavailable)
        else:
            original(amps, unavailable)

    ev.set_offer = slow_set_offer
    assert (await station.call("UnlockConnector", {"connectorId": 1}))["status"] == "Unlocked"
    assert drawing_at_unlock == [0.0]
    assert not station.controller.connectors[1].hw.contactor.is_closed
