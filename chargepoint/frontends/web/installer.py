"""Installer pages (admin only): the configuration (read, and edit with check-config's validation), the last
``check-hardware`` results, the log of the last hour, a diagnostics archive.

* Secrets never reach the browser: the configuration is shown through the diagnostics archive's
  redaction (:func:`chargepoint.firmware.diagnostics.redact_config_text`: AuthorizationKey, passwords,
  password hashes, URL credentials). An edited line that still reads ``"<redacted>"`` gets its original
  value back; any other hidden value must be written out in full.
* An edit is checked exactly as ``chargepoint check-config`` checks a file (TOML, :func:`parse_config`, then
  :func:`hardware_problems` for the driver options); with any problem nothing is written. Every accepted
  change needs a restart (the controller reads its configuration at start), and the page says so.
* The service cannot write /etc/chargepoint (ProtectSystem=strict; the file is root:chargepoint 0640), so an
  accepted edit is saved as ``<state_dir>/chargepoint.toml.proposed`` with the command that installs it;
  a configuration file the process may write (a simulator's, a developer's) is replaced directly.
* Log lines are kept in memory by :class:`RecentLog` (the last hour, bounded) and redacted again with
  :func:`chargepoint.logsetup.redact`, which masks id tags too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from chargepoint.api import Role
from chargepoint.frontends.web import pages
from chargepoint.frontends.web.forms import FormError

log = logging.getLogger(__name__)

LOG_WINDOW_S = 3600.0
LOG_MAX_LINES = 5000
MAX_CONFIG_BYTES = 200 * 1024
DIAGNOSTICS_TIMEOUT_S = 120.0
CHECK_HARDWARE_RESULTS = "check-hardware.txt"


class RecentLog(logging.Handler):
    """The log of the last hour in memory (at most :data:`LOG_MAX_LINES` lines), redacted when shown."""

    def __init__(self, window_s: float = LOG_WINDOW_S, max_lines: int = LOG_MAX_LINES) -> None:
        super().__init__(logging.INFO)
        self.window_s = window_s
        self.lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=max_lines)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append((record.created, self.format(record)))
        except Exception:  # never let logging fail the caller
            self.handleError(record)

    def recent(self, now: float | None = None) -> list[str]:
        from chargepoint.logsetup import redact

        now = time.time() if now is None else now
        return [redact(line) for t, line in list(self.lines) if now - t <= self.window_s]


def check_config_text(text: str, source: str) -> list[str]:
    """The problems ``chargepoint check-config`` reports for this text (empty: it would pass)."""
    import tomllib

    from chargepoint.config import ConfigError, ConfigProblem, hardware_problems, parse_config

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [str(ConfigProblem("(syntax)", str(exc), "valid TOML (https://toml.io)"))]
    problems: list[ConfigProblem] = []
    try:
        parse_config(data, source)
    except ConfigError as exc:
        problems += exc.problems
    problems += [p for p in hardware_problems(data) if p not in problems]
    return [str(p) for p in problems]


def redacted_config(text: str) -> str:
    from chargepoint.firmware.diagnostics import redact_config_text

    return redact_config_text(text)[0]


def restore_hidden(new_text: str, original: str) -> str:
    """Put back the original of every line that still carries a hidden value unchanged; FormError for a
    hidden value that cannot be matched to its original line (the secret would be lost)."""
    from chargepoint.firmware.diagnostics import REDACTED

    originals: dict[str, list[str]] = {}
    for line in original.splitlines(keepends=True):
        shown = redacted_config(line)
        if shown != line and REDACTED in shown:
            originals.setdefault(shown.rstrip("\r\n"), []).append(line.rstrip("\r\n"))
    out = []
    for line in new_text.splitlines(keepends=True):
        if REDACTED in line:
            body, end = line.rstrip("\r\n"), line[len(line.rstrip("\r\n")):]
            candidates = originals.get(body)
            if not candidates:
                raise FormError(400, f"a hidden value ({REDACTED}) was changed or moved in {body.strip()[:60]!r}: "
                                     "write the new value in full, or leave the line as it was")
            line = candidates.pop(0) + end
        out.append(line)
    return "".join(out)


def _write_atomic(path: Path, text: str, mode: int = 0o640) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".chargepoint-web-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def add_routes(app: web.Application, ui: Any) -> None:
    recent = RecentLog()
    ui.recent_log = recent

    async def attach(app: web.Application) -> None:
        logging.getLogger().addHandler(recent)

    async def detach(app: web.Application) -> None:
        logging.getLogger().removeHandler(recent)

    app.on_startup.append(attach)
    app.on_cleanup.append(detach)

    def page(request: web.Request, title: str, body: str) -> web.Response:
        return ui.html(pages.layout(title, body, role=Role.ADMIN, csrf=ui.csrf(request), active="/installer"))

    def config_path() -> Path:
        if not ui.context.config_path:
            raise FormError(404, "this controller runs without a configuration file (simulator)")
        return Path(ui.context.config_path)

    async def overview(request: web.Request) -> web.Response:
        ui.need(request, Role.ADMIN)
        body = ('<section class="card"><h1>Installer</h1><ul>'
                '<li><a href="/installer/config">Configuration</a> (read and edit, checked like check-config)</li>'
                '<li><a href="/installer/hardware">check-hardware results</a></li>'
                '<li><a href="/installer/logs">Log of the last hour</a> (id tags masked)</li>'
                '<li><a href="/installer/diagnostics.tar.gz" download>Diagnostics archive</a> (secrets removed)</li>'
                "</ul></section>")
        return page(request, "Installer", body)

    def config_form(request: web.Request, text: str, message: str = "", ok: bool = True) -> str:
        msg = f'<p class="{"ok" if ok else "error"}" id="message">{pages.e(message)}</p>' if message else ""
        return (f'<section class="card"><h1>Configuration</h1><p><small>{pages.e(ui.context.config_path)}</small>'
                "</p>" + msg +
                f'<form method="post" action="/installer/config"><input type="hidden" name="csrf" '
                f'value="{pages.e(ui.csrf(request))}"><textarea name="config" id="config" spellcheck="false">'
                f"{pages.e(text)}</textarea><p><button type=\"submit\">Check and save</button> "
                "<small>Hidden values (&lt;redacted&gt;) stay as they are unless written out in full. Every "
                "change takes effect after a restart.</small></p></form></section>")

    async def show_config(request: web.Request) -> web.Response:
        ui.need(request, Role.ADMIN)
        path = config_path()
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except OSError as exc:
            raise FormError(404, f"cannot read {path}: {exc.strerror or exc}") from None
        return page(request, "Configuration", config_form(request, redacted_config(text)))

    async def save_config(request: web.Request) -> web.Response:
        ui.need(request, Role.ADMIN)
        path = config_path()
        new = request[_form_key()].get("config", "")
        if not isinstance(new, str) or not new.strip():
            raise FormError(400, "config: the configuration's text")
        if len(new.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
            raise FormError(413, "config: too large")
        new = new.replace("\r\n", "\n")
        original = await asyncio.to_thread(path.read_text, encoding="utf-8")
        full = restore_hidden(new, original)
        problems = await asyncio.to_thread(check_config_text, full, str(path))
        if problems:
            message = f"Not saved: {len(problems)} problem(s), as check-config reports them:\n" + "\n".join(
                f"- {p}" for p in problems)
            return ui.html(pages.layout("Configuration", config_form(request, new, message, ok=False),
                                        role=Role.ADMIN, csrf=ui.csrf(request), active="/installer"), 400)
        if full == original:
            return page(request, "Configuration", config_form(request, new, "No change."))
        if os.access(path, os.W_OK):
            await asyncio.to_thread(_write_atomic, path, full, path.stat().st_mode & 0o7777)
            message = (f"Saved to {path}. It passes check-config. A restart is needed for it to take effect "
                       "(sudo systemctl restart chargepoint).")
        else:
            state = Path(ui.context.state_dir or tempfile.gettempdir())
            proposed = state / "chargepoint.toml.proposed"
            await asyncio.to_thread(_write_atomic, proposed, full)
            message = (f"It passes check-config. The service may not write {path}, so it is saved as {proposed}. "
                       f"Install it and restart (a restart is needed): sudo install -m 0640 -g chargepoint "
                       f"{proposed} {path} && sudo systemctl restart chargepoint")
        log.warning("web UI: configuration edited by an admin (%s)", message.split(".")[0])
        return page(request, "Configuration", config_form(request, new, message))

    async def hardware(request: web.Request) -> web.Response:
        ui.need(request, Role.ADMIN)
        results = Path(ui.context.state_dir or "/nonexistent") / CHECK_HARDWARE_RESULTS
        try:
            text = await asyncio.to_thread(results.read_text, encoding="utf-8")
            shown = f"<pre class=\"log\">{pages.e(text)}</pre>"
        except OSError:
            shown = "<p>No results recorded yet.</p>"
        body = ('<section class="card"><h1>check-hardware</h1><p>check-hardware switches the contactor and the '
                "pilot, so it runs with the service stopped: <code>sudo systemctl stop chargepoint; sudo -u "
                "chargepoint chargepoint check-hardware --config /etc/chargepoint/chargepoint.toml</code> "
                f"(hardware-docs/commissioning.md).</p>{shown}</section>")
        return page(request, "check-hardware", body)

    async def logs(request: web.Request) -> web.Response:
        ui.need(request, Role.ADMIN)
        lines = recent.recent()
        body = (f'<section class="card"><h1>Log of the last hour</h1><p>{len(lines)} line(s); id tags masked. '
                "The full journal: <code>journalctl -u chargepoint</code>.</p>"
                f'<pre class="log" id="log">{pages.e(chr(10).join(lines))}</pre></section>')
        return page(request, "Log", body)

    async def diagnostics(request: web.Request) -> web.StreamResponse:
        ui.need(request, Role.ADMIN)
        workdir = Path(tempfile.mkdtemp(prefix="chargepoint-web-diag-"))
        out = workdir / "diagnostics.tar.gz"
        cmd = [sys.executable, "-m", "chargepoint", "diagnostics", str(out), "--hours", "24",
               "--config", ui.context.config_path or ""]
        if ui.context.status_socket:
            cmd += ["--socket", ui.context.status_socket]
        if ui.context.state_dir:
            cmd += ["--state-dir", ui.context.state_dir]
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            try:
                async with asyncio.timeout(DIAGNOSTICS_TIMEOUT_S):
                    output, _ = await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise FormError(503, "the diagnostics archive took too long; try `chargepoint diagnostics`") from None
            if proc.returncode != 0 or not out.is_file():
                from chargepoint.logsetup import redact

                raise FormError(503, "the diagnostics archive could not be made: "
                                + redact(output.decode(errors="replace").strip()[-500:]))
            data = await asyncio.to_thread(out.read_bytes)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        name = time.strftime("diagnostics-%Y%m%dT%H%M%SZ.tar.gz", time.gmtime())
        return web.Response(body=data, content_type="application/gzip",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    app.router.add_get("/installer", overview)
    app.router.add_get("/installer/config", show_config)
    app.router.add_post("/installer/config", save_config)
    app.router.add_get("/installer/hardware", hardware)
    app.router.add_get("/installer/logs", logs)
    app.router.add_get("/installer/diagnostics.tar.gz", diagnostics)


def _form_key() -> Any:
    from chargepoint.frontends.web.app import FORM

    return FORM
