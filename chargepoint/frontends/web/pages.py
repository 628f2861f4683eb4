"""Server-rendered HTML of the web UI: every value goes through :func:`html.escape`.

The status page is made of live blocks (:func:`connector_live`, :func:`station_live`) that the server also
sends over server-sent events, already rendered, so the page's few lines of JavaScript only swap them in:
one renderer, no template logic in the browser. Control forms sit outside the live blocks, so a live update
never wipes what someone is typing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from chargepoint.api import ConnectorView, Role, StationView

ROLE_NAMES = {Role.VIEWER: "viewer", Role.USER: "user", Role.ADMIN: "admin"}


def e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def amps(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} A"


def watts(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} kW" if abs(value) >= 1000 else f"{value:.0f} W"


def kwh(value: float | None) -> str:
    return "—" if value is None else f"{value / 1000:.3f} kWh"


PILOT_TEXT = {"A": "A — no car", "B": "B — car connected", "C": "C — charging", "D": "D — charging, ventilation",
              "E": "E — no power / short", "F": "F — charger unavailable"}


def layout(title: str, body: str, *, role: Role | None, csrf: str | None, active: str = "",
           nav: Sequence[tuple[str, str]] | None = None) -> str:
    """``nav``: (href, text) of the header's links; None: the charge point's (by role). The local
    controller's site page passes its own (it has no sessions or installer pages)."""
    if nav is None:
        nav = [("/", "Status")]
        if role is not None and role >= Role.USER:
            nav.append(("/sessions", "Sessions"))
        if role is not None and role >= Role.ADMIN:
            nav.append(("/installer", "Installer"))
    links = "".join(f'<a href="{href}"{" class=active" if href == active else ""}>{e(text)}</a>'
                    for href, text in nav)
    if role is not None and role > Role.VIEWER:
        who = (f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" '
               f'value="{e(csrf)}"><button type="submit" class="link">Log out ({ROLE_NAMES[role]})</button></form>')
    else:
        who = '<a href="/login" id="login-link">Log in</a>'
    meta_csrf = f'<meta name="csrf" content="{e(csrf)}">' if csrf else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{meta_csrf}<title>{e(title)}</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
</head><body>
<header><nav>{links}</nav><div class="who">{who}</div></header>
<main>
<div id="flash" role="status" aria-live="polite"></div>
{body}
</main></body></html>"""


def _row(label: str, value: str, key: str = "") -> str:
    attr = f' data-k="{e(key)}"' if key else ""
    return f"<tr><th>{e(label)}</th><td{attr}>{value}</td></tr>"


def connector_live(c: ConnectorView) -> str:
    """The part of a connector's card that changes: replaced whole by a live update."""
    status_class = "st-" + "".join(ch for ch in c.status.lower() if ch.isalnum())
    rows = [
        _row("Status", f'<span class="badge {status_class}">{e(c.status)}</span>'
             + (f" <small>{e(c.error_code)}</small>" if c.error_code and c.error_code != "NoError" else ""),
             "status"),
        _row("Pilot", e(PILOT_TEXT.get(c.pilot, c.pilot)), "pilot"),
        _row("Cable", amps(c.cable_a), "cable"),
        _row("Offered", amps(c.offered_a), "offered"),
        _row("Measured", amps(c.measured_a), "measured"),
        _row("Power", watts(c.power_w), "power"),
        _row("Session energy", kwh(c.session_energy_wh), "session_energy"),
        _row("Meter", kwh(c.energy_wh), "energy"),
        _row("Contactor", e(c.contactor), "contactor"),
        _row("Available", "yes" if c.available else "no (Inoperative)", "available"),
    ]
    if c.transaction_id is not None or c.id_tag:
        rows.append(_row("Session", f"transaction {e(c.transaction_id)} · {e(c.id_tag)} · since "
                         f"{e(c.session_started)}", "session"))
    rows.append(_row("Limit in force", f"{amps(c.limit_a)} <small>from {e(c.limit_source)}</small>", "limit"))
    claims = "".join(
        f"<li{' class=decides' if cl.source == c.limit_source else ''}><b>{e(cl.source)}</b>: "
        f"{amps(cl.amps) if cl.amps is not None else 'no limit'}"
        f"{(' — ' + e(cl.detail)) if cl.detail else ''}</li>"
        for cl in c.claims
    )
    faults = "".join(
        f'<li class="fault"><b>{e(f.kind)}</b>{" (latched)" if f.latched else ""}: {e(f.action)}</li>'
        for f in c.faults
    )
    return (f'<table class="kv">{"".join(rows)}</table>'
            f'<details><summary>Limit claims ({len(c.claims)})</summary><ul class="claims">{claims}</ul></details>'
            + (f'<ul class="faults" data-k="faults">{faults}</ul>' if faults else ""))


def station_live(s: StationView) -> str:
    link = s.link
    rows = [
        _row("Central system", f'<span class="badge link-{e(link.state)}">{e(link.state)}</span> '
             f"<small>{e(link.registration)}</small>", "link"),
        _row("Connected since", e(link.connected_since or "—"), "since"),
        _row("Queued messages", e(link.queued), "queued"),
        _row("Last error", e(link.last_error or "—"), "last_error"),
        _row("Firmware", e(s.firmware_version), "firmware"),
    ]
    dropped = ""
    if s.dropped:
        dropped = f'<p class="warn">{len(s.dropped)} transaction message(s) given up on by the outbox.</p>'
    return f'<table class="kv">{"".join(rows)}</table>{dropped}'


def _hidden(csrf: str | None) -> str:
    return f'<input type="hidden" name="csrf" value="{e(csrf)}">'


def connector_controls(c: ConnectorView, *, role: Role | None, csrf: str | None, free_vend: bool) -> str:
    if role is None or role < Role.USER:
        return '<p class="hint"><a href="/login">Log in</a> to control this connector.</p>'
    base = f"/connectors/{c.id}"
    h = _hidden(csrf)
    start_label = "Start" + (" (empty tag: free vend)" if free_vend else "")
    parts = [
        f'<form method="post" action="{base}/start" class="ctl">{h}'
        f'<label>Id tag <input name="id_tag" maxlength="20" autocomplete="off" '
        f'{"" if free_vend else "required "}placeholder="{"free vend" if free_vend else "card id"}"></label>'
        f'<button type="submit" name="go" value="start">{e(start_label)}</button></form>',
        f'<form method="post" action="{base}/stop" class="ctl">{h}<button type="submit">Stop session</button></form>',
        f'<form method="post" action="{base}/limit" class="ctl">{h}'
        f'<label>Local limit <input name="amps" inputmode="decimal" size="5" '
        f'value="{e(f"{c.local_limit_a:g}" if c.local_limit_a is not None else "")}" placeholder="none"> A</label>'
        f'<button type="submit">Set</button></form>',
        f'<form method="post" action="{base}/available" class="ctl">{h}'
        f'<input type="hidden" name="available" value="{"0" if c.available else "1"}">'
        f'<button type="submit">{"Make Inoperative" if c.available else "Make Operative"}</button></form>',
    ]
    if any(cl.source.startswith("schedule") for cl in c.claims):  # the off-peak schedule holds it back
        parts.append(f'<form method="post" action="{base}/charge-now" class="ctl">{h}'
                     '<input type="hidden" name="on" value="1"><button type="submit">Charge now</button></form>')
    if role >= Role.ADMIN:
        parts.append(f'<form method="post" action="{base}/clear-fault" class="ctl">{h}'
                     f'<button type="submit" class="danger">Clear latched fault</button></form>')
    return f'<div class="controls">{"".join(parts)}</div>'


def status_page(s: StationView, *, role: Role | None, csrf: str | None) -> str:
    cards = "".join(
        f'<section class="card connector" id="c{c.id}"><h2>Connector {c.id}</h2>'
        f'<div class="live" data-live="c{c.id}">{connector_live(c)}</div>'
        f"{connector_controls(c, role=role, csrf=csrf, free_vend=s.free_vend)}</section>"
        for c in s.connectors
    )
    station = (f'<section class="card station"><h2>{e(s.charge_point_id)} '
               f'<span id="live-dot" class="dot" title="live updates"></span></h2>'
               f'<div class="live" data-live="station">{station_live(s)}</div></section>')
    body = f'<div class="grid" data-events="/events">{station}{cards}</div>'
    return layout(f"{s.charge_point_id} — status", body, role=role, csrf=csrf, active="/")


def login_page(*, csrf: str | None, message: str = "", next_url: str = "/",
               nav: Sequence[tuple[str, str]] | None = None) -> str:
    msg = f'<p class="error">{e(message)}</p>' if message else ""
    body = (f'<section class="card narrow"><h1>Log in</h1>{msg}<form method="post" action="/login">{_hidden(csrf)}'
            f'<input type="hidden" name="next" value="{e(next_url)}">'
            '<label>Password <input type="password" name="password" id="password" autocomplete="current-password" '
            'required autofocus></label><button type="submit" id="login-button">Log in</button></form></section>')
    return layout("Log in", body, role=None, csrf=csrf, nav=nav)


def message_page(title: str, message: str, *, role: Role | None, csrf: str | None, ok: bool,
                 back: str = "/", nav: Sequence[tuple[str, str]] | None = None) -> str:
    body = (f'<section class="card narrow"><h1>{e(title)}</h1><p class="{"ok" if ok else "error"}" id="message">'
            f'{e(message)}</p><p><a href="{e(back)}">Back</a></p></section>')
    return layout(title, body, role=role, csrf=csrf, nav=nav)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, cls: str = "list") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
