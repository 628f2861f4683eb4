"""End to end: who may charge (OCPP 1.6 §3.5 local authorization, §4.1 Authorize, §5.4 ClearCache,
§5.10 GetLocalListVersion, §5.15 SendLocalList, §9.1 offline keys) against the loopback central system."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2e_helpers import Rig

pytest_plugins = ["e2e_helpers"]

TAG_A = "04A2B3C4D5"
TAG_B = "04B0B0B0B0"
TAG_C = "04C0C0C0C0"
TAG_UNKNOWN = "DEADBEEF01"


def entry(tag: str, status: str = "Accepted", parent: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"status": status}
    if parent:
        info["parentIdTag"] = parent
    return {"idTag": tag, "idTagInfo": info}


async def send_list(
    rig: Rig, version: int, entries: list[dict[str, Any]] | None, update: str = "Full"
) -> dict[str, Any]:
    payload: dict[str, Any] = {"listVersion": version, "updateType": update}
    if entries is not None:
        payload["localAuthorizationList"] = entries
    return await rig.call("SendLocalList", payload)


async def list_version(rig: Rig) -> int:
    return (await rig.call("GetLocalListVersion", {}))["listVersion"]


async def start_charging(rig: Rig, tag: str, connector: int = 1) -> dict[str, Any]:
    rig.bench.ev(connector).plug()
    rig.tap(tag)
    return await rig.wait_event("transaction_started", lambda d: d["id_tag"] == tag)


def closed(rig: Rig, connector: int = 1) -> bool:
    return rig.controller.connectors[connector].hw.contactor.is_closed


# ----------------------------------------------------------------------------------- online


async def test_online_accepted_asks_csms_then_charges(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    await start_charging(rig, TAG_A)
    assert rig.cs.received("Authorize") == [{"idTag": TAG_A}]
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["idTag"] == TAG_A and start["connectorId"] == 1 and "reservationId" not in start
    await rig.wait(lambda: closed(rig))
    await rig.wait_sent_status(1, "Charging")
    # §3.5.1: the answer is cached and persisted
    assert rig.controller.authorization.auth_cache.peek(TAG_A).status == "Accepted"
    assert [r.id_tag for r, _ in rig.controller.store.cache_rows()] == [TAG_A]


async def test_online_refused_does_not_start_and_is_cached(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    rig.cs.behaviour.authorize_status = lambda tag: "Blocked"
    rig.bench.ev(1).plug()
    rig.tap(TAG_A)
    await rig.wait_event("refused", lambda d: d["id_tag"] == TAG_A)
    await rig.settle(0.1)
    assert rig.cs.received("StartTransaction") == []
    assert not closed(rig)
    assert rig.controller.connectors[1].state.session_tag is None
    assert rig.controller.authorization.auth_cache.peek(TAG_A).status == "Blocked"
    # negative evidence wins offline (§3.5.3): the cached Blocked refuses even with AllowOfflineTxForUnknownId
    await rig.go_offline()
    rig.controller.keys.change("AllowOfflineTxForUnknownId", "true")
    assert await rig.controller.authorization.authorize(TAG_A) == (False, {"status": "Blocked"})


async def test_local_pre_authorize_list_hit_sends_no_authorize(e2e_rig: Any) -> None:
    rig = await e2e_rig(ocpp_keys={"LocalPreAuthorize": True})
    assert (await send_list(rig, 3, [entry(TAG_A)]))["status"] == "Accepted"
    await start_charging(rig, TAG_A)
    await rig.cs.wait_for_message("StartTransaction")
    assert rig.cs.received("Authorize") == []


async def test_csms_answer_differs_from_list_reports_local_list_conflict(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert (await send_list(rig, 1, [entry(TAG_A)]))["status"] == "Accepted"
    rig.cs.behaviour.authorize_status = lambda tag: "Blocked"
    rig.bench.ev(1).plug()
    rig.tap(TAG_A)
    await rig.wait_event("refused")
    note = await rig.cs.wait_for_message("StatusNotification", where=lambda p: p["errorCode"] != "NoError")
    assert note["connectorId"] == 0 and note["errorCode"] == "LocalListConflict"
    # the list stays as the central system sent it
    assert rig.controller.authorization.local_list.get(TAG_A).status == "Accepted"


# ----------------------------------------------------------------------------------- offline


async def test_offline_with_local_list(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert (await send_list(rig, 7, [entry(TAG_A), entry(TAG_B, "Blocked")]))["status"] == "Accepted"
    await rig.go_offline()
    rig.bench.ev(1).plug()
    rig.tap(TAG_B)
    await rig.wait_event("refused", lambda d: d["id_tag"] == TAG_B)
    rig.tap(TAG_UNKNOWN)
    await rig.wait_event("refused", lambda d: d["id_tag"] == TAG_UNKNOWN)
    assert not closed(rig)
    rig.tap(TAG_A)
    await rig.wait_event("transaction_started", lambda d: d["id_tag"] == TAG_A)
    await rig.wait(lambda: closed(rig))
    # queued for when the link is back
    assert [m.action for m in rig.controller.outbox.pending()][:1] == ["StartTransaction"]


async def test_offline_with_cache(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    await start_charging(rig, TAG_A)
    rig.tap(TAG_A)  # same tag stops
    await rig.cs.wait_for_message("StopTransaction")
    rig.bench.ev(1).unplug()
    await rig.wait_status(1, "Available")
    await rig.go_offline()
    await start_charging(rig, TAG_A)
    await rig.wait(lambda: closed(rig))
    rig.tap(TAG_UNKNOWN)
    await rig.wait_event("refused", lambda d: d["id_tag"] == TAG_UNKNOWN)


async def test_offline_cache_disabled_is_not_used(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert (await rig.controller.authorization.authorize(TAG_A))[0]
    rig.controller.keys.change("AuthorizationCacheEnabled", "false")
    await rig.go_offline()
    assert await rig.controller.authorization.authorize(TAG_A) == (False, None)


async def test_offline_unknown_id_refused_by_default(e2e_rig: Any) -> None:
    rig = await e2e_rig(csms=False)  # nothing listens: offline from the start
    rig.bench.ev(1).plug()
    rig.tap(TAG_UNKNOWN)
    await rig.wait_event("refused", lambda d: d["id_tag"] == TAG_UNKNOWN)
    await rig.settle(0.1)
    assert "transaction_started" not in rig.event_kinds()
    assert not closed(rig)


async def test_offline_unknown_id_allowed_by_key(e2e_rig: Any) -> None:
    rig = await e2e_rig(csms=False, ocpp_keys={"AllowOfflineTxForUnknownId": True})
    await start_charging(rig, TAG_UNKNOWN)
    await rig.wait(lambda: closed(rig))
    pending = rig.controller.outbox.pending()
    assert pending[0].action == "StartTransaction" and pending[0].payload["idTag"] == TAG_UNKNOWN


async def test_authorize_timeout_falls_back_to_offline_rules(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    rig.controller.authorization.authorize_timeout_s = 0.3
    assert (await send_list(rig, 1, [entry(TAG_A)]))["status"] == "Accepted"
    rig.cs.behaviour.silent_actions = {"Authorize"}
    assert (await rig.controller.authorization.authorize(TAG_A))[0] is True  # LocalAuthorizeOffline on a list entry
    assert (await rig.controller.authorization.authorize(TAG_UNKNOWN))[0] is False
    rig.cs.behaviour.silent_actions = set()
    rig.cs.behaviour.fail_actions = {"Authorize"}  # CALLERROR: the same fallback
    assert (await rig.controller.authorization.authorize(TAG_A))[0] is True
    assert len(rig.cs.received("Authorize")) == 3


# ----------------------------------------------------------------------------------- stopping


async def test_other_tag_of_same_group_stops_locally_confirmed(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    entries = [entry(TAG_A, parent="FLEET1"), entry(TAG_B, parent="FLEET1"), entry(TAG_C, parent="OTHER")]
    assert (await send_list(rig, 1, entries))["status"] == "Accepted"
    await start_charging(rig, TAG_A)
    await rig.cs.wait_for_message("StartTransaction")
    rig.tap(TAG_C)  # another group: does not stop (and the only connector is busy)
    await rig.wait_event("refused", lambda d: d["id_tag"] == TAG_C)
    assert rig.controller.connectors[1].tx is not None
    authorizes = len(rig.cs.received("Authorize"))
    rig.tap(TAG_B)
    stop = await rig.cs.wait_for_message("StopTransaction")
    assert stop["idTag"] == TAG_B and stop["reason"] == "Local"
    assert len(rig.cs.received("Authorize")) == authorizes  # confirmed by the list: no Authorize.req


async def test_other_tag_of_same_group_stops_after_csms_confirms(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    rig.cs.behaviour.parent_id_tag = lambda tag: "FLEET9" if tag in (TAG_A, TAG_B) else None
    await start_charging(rig, TAG_A)
    await rig.wait(lambda: rig.controller.connectors[1].tx.parent_id_tag == "FLEET9")
    rig.tap(TAG_B)
    stop = await rig.cs.wait_for_message("StopTransaction")
    assert stop["idTag"] == TAG_B
    assert rig.cs.received("Authorize")[-1] == {"idTag": TAG_B}


async def test_stop_transaction_on_invalid_id_true_stops(e2e_rig: Any) -> None:
    rig = await e2e_rig(ocpp_keys={"LocalPreAuthorize": True})
    assert (await send_list(rig, 1, [entry(TAG_A)]))["status"] == "Accepted"
    rig.cs.behaviour.start_status = lambda tag: "Invalid"
    await start_charging(rig, TAG_A)
    stop = await rig.cs.wait_for_message("StopTransaction")
    assert stop["reason"] == "DeAuthorized"
    await rig.wait(lambda: not closed(rig))
    # §3.5: a tag on the Local Authorization List is not cached; the contradiction is a LocalListConflict
    assert rig.controller.authorization.auth_cache.peek(TAG_A) is None
    conflict = await rig.cs.wait_for_message(
        "StatusNotification", where=lambda p: p["connectorId"] == 0 and p["errorCode"] == "LocalListConflict"
    )
    assert conflict["status"] == "Available"


async def test_stop_transaction_on_invalid_id_false_suspends_for_good(e2e_rig: Any) -> None:
    rig = await e2e_rig(ocpp_keys={"LocalPreAuthorize": True, "StopTransactionOnInvalidId": False})
    assert (await send_list(rig, 1, [entry(TAG_A)]))["status"] == "Accepted"
    rig.cs.behaviour.start_status = lambda tag: "Invalid"
    await start_charging(rig, TAG_A)
    await rig.wait_status(1, "SuspendedEVSE")
    rt = rig.controller.connectors[1]
    await rig.wait(lambda: not closed(rig))
    assert rt.tx is not None and rt.hw.pilot.offered_amps is None
    # a later recomputation (any status change does one) must not offer current again
    rig.controller.limits.recompute_all()
    await rig.settle(0.1)
    assert rt.hw.pilot.offered_amps is None and not closed(rig)
    assert "not accepted" in rig.controller.limits.source(rt.id)
    assert rig.cs.received("StopTransaction") == []


# ----------------------------------------------------------------------------------- cache


async def test_clear_cache(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert (await rig.controller.authorization.authorize(TAG_A))[0]
    assert len(rig.controller.authorization.auth_cache) == 1
    assert (await rig.call("ClearCache", {})) == {"status": "Accepted"}
    assert len(rig.controller.authorization.auth_cache) == 0
    assert rig.controller.store.cache_rows() == []


# ----------------------------------------------------------------------------------- SendLocalList


async def test_send_local_list_full_differential_and_persistence(tmp_path: Any, e2e_rig: Any) -> None:
    state = tmp_path / "persist"
    rig = await e2e_rig(state_dir=state)
    assert await list_version(rig) == 0
    assert (await send_list(rig, 5, [entry(TAG_A), entry(TAG_B)]))["status"] == "Accepted"
    assert await list_version(rig) == 5
    diff = [entry(TAG_C, "Blocked"), {"idTag": TAG_A}]  # add C, remove A
    assert (await send_list(rig, 6, diff, "Differential"))["status"] == "Accepted"
    assert await list_version(rig) == 6
    assert sorted(rig.controller.authorization.local_list.entries) == [TAG_B, TAG_C]
    version, rows = rig.controller.store.local_list()
    assert version == 6 and {(r.id_tag, r.status) for r in rows} == {(TAG_B, "Accepted"), (TAG_C, "Blocked")}
    await rig.stop()
    again = await e2e_rig(state_dir=state, csms=False)
    assert again.controller.authorization.local_list.version == 6
    assert await again.controller.authorization.authorize(TAG_B) == (True, {"status": "Accepted"})
    assert (await again.controller.authorization.authorize(TAG_C))[0] is False


async def test_send_local_list_errors_apply_nothing(e2e_rig: Any) -> None:
    rig = await e2e_rig(ocpp_keys={"SendLocalListMaxLength": 3, "LocalAuthListMaxLength": 4})
    assert (await send_list(rig, 2, [entry(TAG_A), entry(TAG_B)]))["status"] == "Accepted"
    before = (rig.controller.authorization.local_list, rig.controller.store.local_list())

    async def unchanged() -> None:
        assert rig.controller.authorization.local_list is before[0]
        assert rig.controller.store.local_list() == before[1]
        assert await list_version(rig) == 2

    # more entries than SendLocalListMaxLength
    many = [entry(f"TAG{i:04d}") for i in range(4)]
    assert (await send_list(rig, 3, many))["status"] == "Failed"
    await unchanged()
    # resulting list longer than LocalAuthListMaxLength
    three = [entry(f"TAG{i:04d}") for i in range(3)]
    assert (await send_list(rig, 3, three, "Differential"))["status"] == "Failed"
    await unchanged()
    # Differential not above the current version
    assert (await send_list(rig, 2, [entry(TAG_C)], "Differential"))["status"] == "VersionMismatch"
    assert (await send_list(rig, 1, [entry(TAG_C)], "Differential"))["status"] == "VersionMismatch"
    await unchanged()
    # duplicate idTag (CiString: case-insensitive)
    dup = [entry(TAG_C), entry(TAG_C.lower(), "Blocked")]
    assert (await send_list(rig, 3, dup))["status"] == "Failed"
    await unchanged()
    # Full entry without idTagInfo
    assert (await send_list(rig, 3, [{"idTag": TAG_C}]))["status"] == "Failed"
    await unchanged()
    # idTag over 20 characters: the schema check answers with a CALLERROR, the handler never runs
    answer = await send_list(rig, 3, [entry("X" * 21)])
    assert answer["__error__"] == "PropertyConstraintViolation"
    assert "maxLength" in answer["description"] or "too long" in answer["description"]
    await unchanged()
    # wrong updateType is a schema violation as well
    answer = await rig.call("SendLocalList", {"listVersion": 3, "updateType": "Partial"})
    assert answer["__error__"] == "PropertyConstraintViolation"
    await unchanged()


async def test_local_list_disabled(e2e_rig: Any) -> None:
    rig = await e2e_rig(ocpp_keys={"LocalAuthListEnabled": False})
    assert (await send_list(rig, 1, [entry(TAG_A)]))["status"] == "NotSupported"
    assert await list_version(rig) == -1
    assert len(rig.controller.authorization.local_list) == 0


async def test_full_list_empty_clears(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert (await send_list(rig, 4, [entry(TAG_A)]))["status"] == "Accepted"
    assert (await send_list(rig, 9, None))["status"] == "Accepted"
    assert len(rig.controller.authorization.local_list) == 0
    assert await list_version(rig) == 0  # §5.10: empty list → 0
    assert rig.controller.store.local_list() == (9, [])


async def test_store_failure_leaves_list_and_cache_whole(e2e_rig: Any) -> None:
    from chargepoint.store import StoreWriteError

    rig = await e2e_rig()
    assert (await send_list(rig, 1, [entry(TAG_A)]))["status"] == "Accepted"
    assert (await rig.controller.authorization.authorize(TAG_B))[0]
    store = rig.controller.store

    def broken(*_: Any, **__: Any) -> None:
        raise StoreWriteError("could not save local authorization list: disk full", "full")

    store.replace_local_list = broken
    store.update_local_list = broken
    store.cache_clear = broken
    assert (await send_list(rig, 2, [entry(TAG_C)]))["status"] == "Failed"
    assert (await send_list(rig, 2, [entry(TAG_C)], "Differential"))["status"] == "Failed"
    assert rig.controller.authorization.local_list.version == 1 and TAG_A in rig.controller.authorization.local_list
    assert await list_version(rig) == 1
    # ClearCache that cannot be persisted would come back after a restart: Rejected, cache kept
    assert (await rig.call("ClearCache", {})) == {"status": "Rejected"}
    assert rig.controller.authorization.auth_cache.peek(TAG_B) is not None
