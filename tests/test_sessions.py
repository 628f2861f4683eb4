"""Session history (chargepoint/sessions.py): written in the same commit that ends a transaction, the card
kept as its mask, filters, CSV, retention — against the real controller and store."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import running_rig

from chargepoint.frontends.web.sessions_page import to_csv
from chargepoint.privacy import mask_id_tag
from chargepoint.sessions import HistoryQueryError, SessionHistory
from chargepoint.store import Store

pytest_plugins = ["e2e_helpers"]

CARD_A, CARD_B = "04A2B3C4D5", "0499887766"


async def charge(rig: Any, tag: str, connector: int = 1, seconds: float = 0.3) -> None:
    n = len(rig.cs.received("StopTransaction"))
    rig.bench.ev(connector).plug()
    rig.tap(tag)
    await rig.wait(lambda: rig.controller.connectors[connector].hw.contactor.is_closed)
    await rig.settle(seconds)
    rig.bench.ev(connector).unplug()
    await rig.cs.wait_for_message("StopTransaction", count=n + 1)
    await rig.wait_status(connector, "Available")


async def test_sessions_are_recorded_with_masked_cards_and_filtered(e2e_rig: Any) -> None:
    rig = await e2e_rig(connectors=2, ocpp_keys={"MeterValueSampleInterval": 1})
    history = rig.controller.api.history
    await charge(rig, CARD_A, 1, seconds=1.2)
    await charge(rig, CARD_B, 2)
    await charge(rig, CARD_A, 2)
    records = history.query()
    assert [r.connector_id for r in records] == [2, 2, 1]  # newest first
    assert all(r.stop and r.stop_reason == "EVDisconnected" and r.transaction_id for r in records)
    assert [r.transaction_id for r in records] == sorted((r.transaction_id for r in records), reverse=True)
    assert records[-1].energy_wh and records[-1].energy_wh > 0 and records[-1].duration_s >= 1.0
    mine = history.query(id_tag=CARD_A)
    assert len(mine) == 2 and {r.id_tag for r in mine} == {mask_id_tag(CARD_A)}
    assert history.query(id_tag=mask_id_tag(CARD_B))[0].connector_id == 2
    assert len(history.query(connector_id=1)) == 1
    today = datetime.now(UTC).date()
    assert len(history.query(since=today, until=today)) == 3
    assert history.query(until=today - timedelta(days=1)) == []
    # the store never holds the card numbers in the history
    raw = rig.controller.store.query("SELECT * FROM sessions")
    assert CARD_A not in repr(raw) and CARD_B not in repr(raw)
    # the CSV parses back, totals match, energy in kWh with 3 decimals
    rows = list(csv.DictReader(io.StringIO(to_csv(records))))
    assert len(rows) == 3 and rows[-1]["energy_kwh"] == f"{records[-1].energy_wh / 1000:.3f}"
    assert sum(float(r["energy_kwh"]) for r in rows) == pytest.approx(history.totals(records)[1] / 1000, abs=0.002)


async def test_a_running_session_is_listed_and_a_power_cut_one_is_closed_at_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running_rig(state) as rig:
        rig.bench.ev(1).plug()
        rig.tap(CARD_A)
        await rig.wait(lambda: rig.controller.connectors[1].hw.contactor.is_closed)
        await rig.cs.wait_for_message("StartTransaction")
        await rig.wait(lambda: rig.controller.api.history.query()[0].transaction_id is not None)
        running = rig.controller.api.history.query()
        assert len(running) == 1 and running[0].stop is None and running[0].id_tag == mask_id_tag(CARD_A)
        rig.controller.store.close()  # the power goes: nothing more is written
        rig.controller.store = None  # type: ignore[assignment]
    async with running_rig(state) as rig:
        await rig.cs.wait_for_message("StopTransaction")
        records = rig.controller.api.history.query()
        assert len(records) == 1 and records[0].stop is not None
        assert records[0].stop_reason in ("PowerLoss", "Reboot")


def test_retention_and_bad_filters(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
        for i, start in enumerate(("2024-11-01T10:00:00Z", "2025-06-01T10:00:00Z", "2026-12-01T10:00:00Z")):
            store.write("INSERT INTO sessions VALUES (?, 1, ?, ?, ?, 0, 1000, 'Local', ?)",
                        (i + 1, mask_id_tag(CARD_A), start, start.replace("10:00", "11:00"), 100 + i))
        history = SessionHistory(store, retention_days=365, now=lambda: now)
        assert [r.transaction_id for r in history.query()] == [102]  # the first read prunes the old ones
        assert store.query("SELECT count(*) FROM sessions")[0][0] == 1
        assert history.query()[0].duration_s == 3600 and history.query()[0].energy_wh == 1000
        for bad in ({"connector_id": "1"}, {"connector_id": True}, {"id_tag": "x" * 21}, {"id_tag": ""},
                    {"since": "2026-01-01"}, {"since": date(2026, 2, 1), "until": date(2026, 1, 1)},
                    {"limit": 0}, {"limit": 10**9}):
            with pytest.raises(HistoryQueryError):
                history.query(**bad)
    finally:
        store.close()


async def test_the_web_ui_lists_and_exports_the_real_history(e2e_rig: Any) -> None:
    from tests.web_helpers import client_for, login

    rig = await e2e_rig()
    await charge(rig, CARD_A)
    await charge(rig, CARD_B)
    async with client_for(rig.controller.api) as client:
        await login(client)
        page = await (await client.get("/sessions")).text()
        assert mask_id_tag(CARD_A) in page and CARD_A not in page
        resp = await client.get("/sessions.csv", params={"card": CARD_A})
        assert resp.status == 200
        rows = list(csv.DictReader(io.StringIO(await resp.text())))
        assert len(rows) == 1 and rows[0]["id_tag"] == mask_id_tag(CARD_A) and rows[0]["stop_reason"] == "EVDisconnected"
        assert (await client.get("/sessions.csv", params={"from": "2026-13-01"})).status == 400
