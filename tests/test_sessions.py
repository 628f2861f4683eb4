"""Session history (chargepoint/sessions.py): written in the same commit that ends a transaction, the card
kept as its mask, filters (local days), CSV (formula-safe, parses back), retention, [sessions] config — against
the real controller and store, and against a store fed directly where a clock or a zone must be chosen."""

from __future__ import annotations

import csv
import io
import tomllib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from e2e_helpers import running_rig
from test_config import GOOD

from chargepoint.config import ConfigError, parse_config
from chargepoint.privacy import mask_id_tag
from chargepoint.sessions import CSV_COLUMNS, HistoryQueryError, SessionHistory, to_csv
from chargepoint.store import Store, StoreWriteError

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
    today = datetime.now().date()  # dates are the station's local days
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
                    {"since": "1 Jan"}, {"since": date(2026, 2, 1), "until": date(2026, 1, 1)},
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


# ------------------------------------------------------------------------------------------------ store-fed
BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def charged(store: Store, connector: int, tag: str, start: str, stop: str, wh0: int, wh1: int,
            reason: str = "EVDisconnected", tx_id: int | None = None) -> int:
    """One session through the store's own transaction calls (as the controller makes them)."""
    local = store.begin_transaction(connector, tag, start, wh0)
    if tx_id is not None:
        store.set_transaction_id(local, tx_id)
    store.mark_stop_pending(local, reason, stop, wh1)
    store.end_transaction(local)
    return local


def test_a_power_cut_keeps_the_running_session_until_its_recovered_stop(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 12, 2, 10, 30, tzinfo=UTC))
    store = Store.open(tmp_path)
    local = store.begin_transaction(1, CARD_A, "2026-12-02T10:00:00.000Z", 5000)
    store.set_transaction_id(local, 77)
    store.update_meter(local, 7500, "2026-12-02T10:20:00.000Z")
    store.close()  # the power goes
    store = Store.open(tmp_path)
    try:
        history = SessionHistory(store, now=clock, tz=BERLIN)
        [running] = history.sessions(id_tag=CARD_A)
        assert (running.stop, running.transaction_id, running.energy_wh, running.duration_s) == (None, 77, 2500, 1800)
        store.mark_stop_pending(local, "PowerLoss", "2026-12-02T10:20:00.000Z", 7500)  # recovery, as at start
        store.end_transaction(local)
        [done] = history.sessions()
        assert (done.stop, done.stop_reason, done.energy_wh, done.transaction_id) == (
            "2026-12-02T10:20:00.000Z", "PowerLoss", 2500, 77)
        assert len(history.sessions()) == 1  # counted once
    finally:
        store.close()


def test_filters_local_days_csv_and_totals(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        # 23:30 UTC on 30 November is 00:30 on 1 December in Berlin: December's reimbursement
        charged(store, 1, CARD_A, "2026-11-30T23:30:00.000Z", "2026-12-01T01:00:00.000Z", 0, 11_250, tx_id=1)
        charged(store, 2, CARD_B, "2026-12-10T17:00:00.000Z", "2026-12-10T18:00:00.000Z", 100, 7_500, tx_id=2)
        charged(store, 1, CARD_A.lower(), "2026-12-31T22:59:59.000Z", "2027-01-01T02:00:00.000Z", 0, 3_333,
                "Local", tx_id=-3)
        charged(store, 1, CARD_A, "2026-12-31T23:00:00.000Z", "2027-01-01T00:00:00.000Z", 0, 1_000, tx_id=4)
        history = SessionHistory(store, now=Clock(datetime(2027, 1, 5, tzinfo=UTC)), tz=BERLIN)
        december = {"since": date(2026, 12, 1), "until": date(2026, 12, 31)}
        mine = history.sessions(id_tag=CARD_A, **december)
        assert [r.transaction_id for r in mine] == [-3, 1]  # newest first; 00:00 on 1 January is next year
        assert {r.id_tag for r in mine} == {mask_id_tag(CARD_A)}  # case-insensitive card (CiString20)
        assert history.sessions(id_tag=mask_id_tag(CARD_A).upper(), **december) == mine  # a mask works too
        assert [r.transaction_id for r in history.sessions(connector_id=2)] == [2]
        assert history.sessions(connector_id=3) == []
        assert [r.transaction_id for r in history.sessions(since="2027-01-01")] == [4]  # ISO text from a form
        exact = history.sessions(since=datetime(2026, 12, 10, 17, tzinfo=UTC), until=datetime(2026, 12, 10, 18,
                                                                                                tzinfo=UTC))
        assert [r.transaction_id for r in exact] == [2]
        totals = history.totals(**december)
        assert totals == (3, 11_250 + 7_400 + 3_333) and totals.count == 3
        text = history.export_csv(id_tag=CARD_A, **december)
        assert text.startswith(",".join(CSV_COLUMNS) + "\r\n") and text.endswith("\r\n")
        rows = list(csv.DictReader(io.StringIO(text.encode("utf-8").decode("utf-8"))))
        assert [r["transaction_id"] for r in rows] == ["-3", "1"]  # a number, not a text cell
        assert rows[1]["start"] == "2026-11-30T23:30:00.000Z" and rows[1]["start_local"] == "2026-12-01 00:30:00"
        assert rows[1]["stop_local"] == "2026-12-01 02:00:00" and rows[1]["duration_min"] == "90.0"
        assert [r["energy_kwh"] for r in rows] == ["3.333", "11.250"]
        assert sum(float(r["energy_kwh"]) for r in rows) == pytest.approx(history.totals(mine).energy_wh / 1000)
        assert CARD_A not in text and CARD_A not in repr(store.query("SELECT * FROM sessions"))
    finally:
        store.close()


def test_csv_cells_cannot_become_formulas(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        for i, reason in enumerate(("=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "a,\"b\"\nc")):
            store.write("INSERT INTO sessions VALUES (?, 1, ?, ?, ?, 0, 1000, ?, ?)",
                        (i + 1, "=cmd|' /C calc'!A0", f"2026-12-0{i + 1}T10:00:00.000Z",
                         f"2026-12-0{i + 1}T11:00:00.000Z", reason, i + 1))
        history = SessionHistory(store, now=Clock(datetime(2026, 12, 9, tzinfo=UTC)), tz=UTC)
        rows = list(csv.DictReader(io.StringIO(history.export_csv())))
        assert len(rows) == 6
        assert {r["id_tag"] for r in rows} == {"'=cmd|' /C calc'!A0"}
        reasons = [r["stop_reason"] for r in reversed(rows)]
        assert reasons == ["'=HYPERLINK(\"http://x\")", "'+1+1", "'-2+3", "'@SUM(A1)", "'\tx", "a,\"b\"\nc"]
        assert all(not v.startswith(("=", "+", "-", "@")) for r in rows for k, v in r.items() if k != "transaction_id")
    finally:
        store.close()


def test_retention_prunes_at_the_first_use_and_then_daily(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        clock = Clock(datetime(2026, 12, 2, 12, tzinfo=UTC))
        charged(store, 1, CARD_A, "2024-12-01T12:00:00.000Z", "2024-12-01T13:00:00.000Z", 0, 1, tx_id=1)
        charged(store, 1, CARD_A, "2024-12-02T12:00:01.000Z", "2024-12-02T13:00:00.000Z", 0, 1, tx_id=2)
        charged(store, 1, CARD_A, "2026-12-02T08:00:00.000Z", "2026-12-02T09:00:00.000Z", 0, 1, tx_id=3)
        history = SessionHistory(store, retention_days=730, now=clock)
        assert history.prune_if_due() == 1  # at start: 2024-12-01 is more than 730 days ago
        assert [r.transaction_id for r in history.sessions()] == [3, 2]
        clock.now += timedelta(hours=11)  # same day: nothing to do
        assert history.prune_if_due() == 0
        clock.now += timedelta(hours=2)  # the next day: 2024-12-02 12:00:01 has aged out
        assert [r.transaction_id for r in history.sessions()] == [3]
        assert store.query("SELECT count(*) FROM sessions") == [(1,)]
    finally:
        store.close()


def test_a_store_that_cannot_be_written_still_shows_the_history(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        charged(store, 1, CARD_A, "2020-01-01T00:00:00.000Z", "2020-01-01T01:00:00.000Z", 0, 1, tx_id=1)

        class FullCard:
            def query(self, *a: Any) -> Any:
                return store.query(*a)

            def write(self, *a: Any, **k: Any) -> int:
                raise StoreWriteError("could not save session history pruning: disk full", "full")

        history = SessionHistory(FullCard(), retention_days=1, now=lambda: datetime(2026, 12, 2, tzinfo=UTC))
        assert [r.transaction_id for r in history.sessions()] == [1]  # not pruned, but readable
    finally:
        store.close()


@pytest.mark.parametrize("bad", [
    {"connector_id": 10**30}, {"connector_id": -1}, {"connector_id": 1.0}, {"id_tag": "A\nB"},
    {"id_tag": "x" * 10**6}, {"id_tag": 1234}, {"since": "9" * 10**6}, {"since": "2026-13-01"}, {"since": 20261201},
    {"until": datetime(2026, 12, 1)}, {"since": date(2026, 12, 2), "until": date(2026, 12, 1)}, {"limit": -5},
    {"limit": "10"},
])
def test_a_malformed_or_huge_filter_is_a_clear_error(tmp_path: Path, bad: dict[str, Any]) -> None:
    store = Store.memory()
    try:
        history = SessionHistory(store, tz=UTC)
        with pytest.raises(HistoryQueryError) as err:
            history.sessions(**bad)
        assert 0 < len(str(err.value)) < 120
        assert history.sessions(since=date.min, until=date.max) == []  # the extremes are fine
    finally:
        store.close()


CONFIG = GOOD  # the minimal valid configuration of tests/test_config.py


def test_sessions_config_section() -> None:
    assert parse_config(tomllib.loads(CONFIG)).session_history_days == 730
    assert parse_config(tomllib.loads(CONFIG + "[sessions]\nretention_days = 3650\n")).session_history_days == 3650
    for extra, key in (("[sessions]\nretention_days = 0\n", "sessions.retention_days"),
                       ("[sessions]\nretention_days = 7.5\n", "sessions.retention_days"),
                       ("[sessions]\nretention_days = 99999\n", "sessions.retention_days"),
                       ("[sessions]\nretention = 30\n", "sessions.retention"),
                       ("sessions = 5\n", "sessions")):
        with pytest.raises(ConfigError) as err:
            parse_config(tomllib.loads(extra + CONFIG if extra.startswith("sessions =") else CONFIG + extra))
        assert key in [p.key for p in err.value.problems], str(err.value)
    with pytest.raises(ConfigError, match="chargepoint.session_history_days"):  # the old key is gone
        parse_config(tomllib.loads(CONFIG.replace('id = "CP-1"', 'id = "CP-1"\nsession_history_days = 30', 1)))


async def test_a_filter_the_history_cannot_use_is_a_400_on_the_page(e2e_rig: Any) -> None:
    from tests.web_helpers import client_for, login

    rig = await e2e_rig()
    async with client_for(rig.controller.api) as client:
        await login(client)
        for path in ("/sessions", "/sessions.csv"):
            resp = await client.get(path, params={"from": "2026-02-01", "to": "2026-01-01"})
            assert resp.status == 400, path
        csv_text = await (await client.get("/sessions.csv")).text()
        assert csv_text.splitlines()[0].startswith("transaction_id")
