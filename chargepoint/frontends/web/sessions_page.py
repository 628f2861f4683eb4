"""Sessions page: charging history per connector and per card, filters by date and card, CSV download.

The history itself is kept by the session store (chargepoint.sessions, issue 14); this page reads it
through :class:`SessionHistory`, which :class:`chargepoint.frontends.web.app.WebContext` carries
(``history``). Without one the page says that history is not available. Id tags are shown and exported as
their masks only (chargepoint.privacy.mask_id_tag): the card filter takes a card's number and compares masks.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from aiohttp import web

from chargepoint.api import Role
from chargepoint.frontends.web import pages
from chargepoint.frontends.web.forms import FormError, field, parse_connector_id, parse_date, parse_id_tag

CSV_COLUMNS = ("transaction_id", "connector_id", "id_tag", "start", "stop", "duration_min", "energy_kwh",
               "stop_reason")
MAX_ROWS = 10_000


@dataclass(frozen=True)
class SessionRecord:
    transaction_id: int | None
    connector_id: int
    id_tag: str  # masked
    start: str  # ISO 8601 UTC
    stop: str | None
    duration_s: float | None
    energy_wh: float | None
    stop_reason: str | None


class SessionHistory(Protocol):
    def query(self, *, connector_id: int | None = None, id_tag: str | None = None, since: date | None = None,
              until: date | None = None, limit: int = MAX_ROWS) -> Sequence[SessionRecord]:
        """Sessions, newest first; ``id_tag`` is a card's number (the history compares masks);
        ``since``/``until`` are inclusive dates (the station's local days)."""
        ...


def _filters(request: web.Request) -> dict[str, Any]:
    q = request.query
    cid = field(q, "connector")
    tag = field(q, "card")
    return {
        "connector_id": parse_connector_id(cid) if cid else None,
        "id_tag": parse_id_tag(tag) if tag else None,
        "since": parse_date(field(q, "from"), "from"),
        "until": parse_date(field(q, "to"), "to"),
    }


def _row(r: SessionRecord) -> list[object]:
    return [r.transaction_id if r.transaction_id is not None else "", r.connector_id, r.id_tag, r.start,
            r.stop or "", f"{r.duration_s / 60:.1f}" if r.duration_s is not None else "",
            f"{r.energy_wh / 1000:.3f}" if r.energy_wh is not None else "", r.stop_reason or ""]


def to_csv(records: Sequence[SessionRecord]) -> str:
    """One header line, one line per session; energy in kWh with 3 decimals (what reimbursement forms ask)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow(_row(r))
    return out.getvalue()


def _query(history: SessionHistory, request: web.Request) -> Sequence[SessionRecord]:
    try:
        return history.query(**_filters(request), limit=MAX_ROWS)
    except ValueError as exc:  # the history's HistoryQueryError: a filter it cannot use (from after to …)
        raise FormError(400, str(exc)) from None


def add_routes(app: web.Application, ui: Any) -> None:
    async def page(request: web.Request) -> web.Response:
        role = ui.need(request, Role.USER)
        history: SessionHistory | None = ui.context.history
        q = request.query
        form = (
            '<form method="get" action="/sessions" class="ctl filters">'
            f'<label>Connector <input name="connector" size="3" value="{pages.e(q.get("connector", ""))}"></label>'
            f'<label>Card <input name="card" size="12" maxlength="20" value="{pages.e(q.get("card", ""))}"></label>'
            f'<label>From <input type="date" name="from" value="{pages.e(q.get("from", ""))}"></label>'
            f'<label>To <input type="date" name="to" value="{pages.e(q.get("to", ""))}"></label>'
            '<button type="submit">Filter</button></form>')
        if history is None:
            body = '<section class="card"><h1>Sessions</h1><p>Session history is not available here.</p></section>'
            return ui.html(pages.layout("Sessions", body, role=role, csrf=ui.csrf(request), active="/sessions"))
        records = _query(history, request)
        total_kwh = sum((r.energy_wh or 0) for r in records) / 1000
        csv_link = "/sessions.csv" + (("?" + request.query_string) if request.query_string else "")
        body = (f'<section class="card"><h1>Sessions</h1>{form}'
                f'<p>{len(records)} session(s), {total_kwh:.3f} kWh. '
                f'<a id="csv" href="{pages.e(csv_link)}" download>Download CSV</a></p>'
                + pages.table(["Transaction", "Connector", "Card", "Start", "Stop", "Minutes", "kWh", "Stop reason"],
                              [_row(r) for r in records]) + "</section>")
        return ui.html(pages.layout("Sessions", body, role=role, csrf=ui.csrf(request), active="/sessions"))

    async def download(request: web.Request) -> web.Response:
        ui.need(request, Role.USER)
        history: SessionHistory | None = ui.context.history
        if history is None:
            raise FormError(404, "session history is not available here")
        records = _query(history, request)
        # the history's own export when it has one (formula-safe cells, local-time columns)
        text = history.to_csv(records) if hasattr(history, "to_csv") else to_csv(records)
        name = f"sessions-{date.today().isoformat()}.csv"
        return web.Response(text=text, content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    app.router.add_get("/sessions", page)
    app.router.add_get("/sessions.csv", download)
