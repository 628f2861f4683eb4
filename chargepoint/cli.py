"""The ``chargepoint`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from chargepoint.config import (
    ConfigError,
    ConfigProblem,
    hardware_problem,
    hardware_problems,
    load_config,
    parse_config,
    read_config_data,
    simulated_config,
    simulated_from,
)
from hal.interfaces import HardwareConfigError

log = logging.getLogger("chargepoint")


def _setup_logging(level: str) -> None:
    """Journal fields under systemd, text on stderr elsewhere; secrets redacted (chargepoint.logsetup)."""
    from chargepoint.logsetup import setup_command_logging

    setup_command_logging(level)


#: Exit status asking systemd to start the service again (the unit's RestartForceExitStatus=).
EXIT_RESTART = 75


def _restart_process(kind: str) -> None:
    """Reset outside systemd: replace this process with a fresh one."""
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "chargepoint", *sys.argv[1:]])


def _release_root() -> Path:
    return Path(os.environ.get("CHARGEPOINT_RELEASE_ROOT", "/opt/chargepoint"))


def _restart_after_run(kind: str) -> int:
    """The controller asked for a restart (Reset, firmware installed) and has stopped.

    Under systemd the process ends with EXIT_RESTART and systemd starts the unit again: through the
    release links (a new firmware runs; the previous release's ExecStartPre check-boot counts the start)
    and with a fresh watchdog and start timeout. Outside systemd the process replaces itself; after a
    firmware update with the ``current`` release's entry point when there is one.
    """
    from chargepoint.logsetup import under_systemd

    if under_systemd():
        log.warning(
            "%s restart: exiting with status %d for systemd to start the service again", kind, EXIT_RESTART
        )
        return EXIT_RESTART
    logging.shutdown()
    entry = _release_root() / "current" / "venv" / "bin" / "chargepoint"
    if kind == "Firmware" and os.access(entry, os.X_OK):
        os.execv(str(entry), [str(entry), *sys.argv[1:]])
    os.execv(sys.executable, [sys.executable, "-m", "chargepoint", *sys.argv[1:]])
    return EXIT_RESTART  # not reached


async def _run_controller(controller: Any, body: Any = None, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). systemd readiness, watchdog, status line and status
    socket come with the controller (chargepoint.services.systemd)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if body is not None:
        return await body
    from chargepoint.frontends.mqtt import start_mqtt
    from chargepoint.frontends.web.server import start_web

    mqtt = web = None
    try:
        await controller.start()
        mqtt = await start_mqtt(getattr(controller, "api", None), controller.config)
        web = await start_web(controller, controller.config)  # None unless [web] enabled = true
        await stop.wait()
    finally:
        log.info("stopping: outputs go to their safe state")
        if web is not None:
            await web.stop()
        if mqtt is not None:
            await mqtt.stop()
        await controller.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    _setup_logging(config.log_level)
    from chargepoint.controller import Controller, build_hardware

    try:
        hardware, ctx = build_hardware(config)
    except HardwareConfigError as exc:
        print(_hardware_error(args.config, exc), file=sys.stderr)
        return 2
    restart: list[str] = []

    async def main() -> int:
        stop = asyncio.Event()

        def request_restart(kind: str) -> None:
            restart.append(kind)
            stop.set()

        controller = Controller(config, hardware=hardware, build_context=ctx, restart=request_restart)
        return await _run_controller(controller, stop=stop)

    code = asyncio.run(main())
    if restart:
        return _restart_after_run(restart[0])
    return code


def cmd_simulate(args: argparse.Namespace) -> int:
    keys: dict[str, Any] = {}
    for item in args.key or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"simulate: --key {item!r}: NAME=VALUE, e.g. --key HeartbeatInterval=60", file=sys.stderr)
            return 2
        keys[name] = value
    if args.config is None and (args.csms is None or args.id is None):
        print("simulate: give --csms URL and --id ID, or --config FILE (your configuration, devices simulated)",
              file=sys.stderr)
        return 2
    if args.config is not None and args.connectors is not None:
        print("simulate: --connectors comes from the [[connectors]] of --config; give one or the other",
              file=sys.stderr)
        return 2
    # Never the configuration's state_dir: that is the live service's store.
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="chargepoint-sim-")
    try:
        if args.config is not None:
            installed = load_config(args.config)
            config = simulated_from(
                installed,
                state_dir=state_dir,
                csms_url=args.csms,
                charge_point_id=args.id,
                password=args.password,
                ocpp_keys=keys,
                status_socket=args.status_socket,
            )
        else:
            config = simulated_config(
                charge_point_id=args.id,
                csms_url=args.csms,
                connectors=args.connectors or 1,
                state_dir=state_dir,
                ocpp_keys=keys,
                password=args.password,
                status_socket=args.status_socket,
            )
        if args.mqtt:
            from dataclasses import replace

            from chargepoint.frontends.mqtt import mqtt_config_for_address

            config = replace(config, mqtt=mqtt_config_for_address(args.mqtt, config.charge_point_id))
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(args.log_level or config.log_level)
    log.info("simulating %s (%d connector(s), every device simulated) against %s; state in %s",
             config.charge_point_id, len(config.connectors), config.csms.url, state_dir)
    from chargepoint.controller import Controller
    from chargepoint.simulate import run_simulator

    controller = Controller(config, restart=_restart_process)
    body = run_simulator(controller)
    if args.web:  # the local web UI on HOST:PORT (chargepoint.frontends.web)
        from chargepoint.frontends.web.server import WebContext, serve_alongside, simulator_web_config

        try:
            web_config, password = simulator_web_config(args.web, config)
        except ValueError as exc:
            print(f"simulate: {exc}", file=sys.stderr)
            return 2
        if password:
            print(f"web UI admin password: {password}", file=sys.stderr)
        body = serve_alongside(controller, web_config, WebContext(args.config, state_dir, config.status_socket),
                               body=body)
    return asyncio.run(_run_controller(controller, body))


def cmd_demo(args: argparse.Namespace) -> int:
    from chargepoint.demo import run_demo

    return asyncio.run(run_demo(verbose=args.verbose))


def _load(path: str) -> Any:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.config or args.config_option
    if not path:
        print("check-config: name the configuration file (chargepoint check-config FILE)", file=sys.stderr)
        return 2
    try:
        data = read_config_data(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from chargepoint.localcontroller.config import is_local_controller_file

    if is_local_controller_file(data):
        return _check_local_controller_config(path)
    config = None
    problems: list[ConfigProblem] = []
    try:
        config = parse_config(data, path)
    except ConfigError as exc:
        problems += exc.problems
    # Driver options too, even when the file has other problems: every problem in one run.
    problems += [p for p in hardware_problems(data) if p not in problems]
    if problems or config is None:
        print(ConfigError(path, problems), file=sys.stderr)
        return 2
    drivers = ", ".join(
        f"connector {c.id}: " + " ".join(f"{k}={v.get('driver', 'sim')}" for k, v in c.devices.items())
        for c in config.connectors
    )
    print(
        f"{path}: OK — charge point {config.charge_point_id}, {len(config.connectors)} connector(s), "
        f"CSMS {config.csms.url}\n  {drivers}"
    )
    return 0


def _check_local_controller_config(path: str) -> int:
    """check-config of a local controller's file (deploy/local-controller.example.toml): the same loader as
    ``chargepoint local-controller``, so what passes here starts there."""
    from pathlib import Path

    from chargepoint.localcontroller.config import LocalControllerConfigError, load

    try:
        lc = load(Path(path))
    except LocalControllerConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s) in [local_controller]:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    fuse = "/".join(f"{a:g}" for a in lc.site_limit_a)
    print(f"{path}: OK — local controller {lc.id}, {len(lc.charge_points)} charge point(s) "
          f"({', '.join(c.spec.id for c in lc.charge_points)}), site fuse {fuse} A, CSMS {lc.csms_url}, "
          f"listening on {lc.listen_host}:{lc.listen_port}")
    return 0


def _hardware_error(path: str, exc: HardwareConfigError) -> str:
    return f"{path}: hardware configuration: {hardware_problem(exc)}"


def _service_answers(socket_path: str) -> bool:
    """True when a controller serves its status socket there (it then owns the hardware)."""
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(socket_path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def cmd_check_hardware(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    from chargepoint.status_socket import DEFAULT_STATUS_SOCKET

    socket_path = config.status_socket or DEFAULT_STATUS_SOCKET
    if _service_answers(socket_path):
        print(
            f"check-hardware: the charge point service is running (it answers on {socket_path}) and owns the "
            "hardware. Stop it first: sudo systemctl stop chargepoint; start it again afterwards: "
            "sudo systemctl start chargepoint",
            file=sys.stderr,
        )
        return 2
    _setup_logging("warning")
    from chargepoint.controller import build_hardware

    try:
        hardware, _ = build_hardware(config)
    except HardwareConfigError as exc:
        print(_hardware_error(args.config, exc), file=sys.stderr)
        return 2
    try:
        from chargepoint.commissioning import check_hardware
    except ImportError as exc:
        print(f"check-hardware is not available: {exc}", file=sys.stderr)
        return 2

    def ask(question: str) -> str:
        return input(question + " ")

    said: list[str] = []

    def say(text: str) -> None:
        print(text)
        said.append(text)

    ok = asyncio.run(check_hardware(hardware, ask=ask, say=say, assume_yes=args.yes))
    _keep_check_hardware_results(config.state_dir, said, ok)
    return 0 if ok else 1


def _keep_check_hardware_results(state_dir: Path, lines: list[str], ok: bool) -> None:
    """The last run's report, for the web UI's installer page (``<state_dir>/check-hardware.txt``, masked)."""
    from datetime import UTC, datetime

    from chargepoint.logsetup import redact

    stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    text = f"check-hardware {stamp}: {'all checks passed' if ok else 'FAILED'}\n" + "\n".join(
        redact(line) for line in lines) + "\n"
    target = Path(state_dir) / "check-hardware.txt"
    try:
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:  # the report on the terminal is what counts; the copy is a convenience
        print(f"check-hardware: results not kept in {target}: {exc.strerror or exc}", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        from chargepoint.status_socket import StatusUnavailable, fetch_status, format_status
    except ImportError as exc:
        print(f"status is not available: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "follow", False):
        return _follow_status(args)
    try:
        snapshot = asyncio.run(fetch_status(args.socket))
    except StatusUnavailable as exc:
        print(f"chargepoint status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(snapshot, indent=2) if args.json else format_status(snapshot))
    return 0


def _follow_status(args: argparse.Namespace) -> int:
    from chargepoint.status_socket import StatusUnavailable, follow_status, format_change, format_status

    async def follow() -> None:
        first = True
        async for obj in follow_status(args.socket):
            if args.json:
                print(json.dumps(obj), flush=True)
            else:
                print(format_status(obj) + "\n" if first else format_change(obj), flush=True)
            first = False

    try:
        asyncio.run(follow())
    except StatusUnavailable as exc:
        print(f"chargepoint status: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_firmware(args: argparse.Namespace) -> int:
    try:
        from chargepoint.firmware import diagnostics as diag
        from chargepoint.firmware import update as fw
    except ImportError as exc:
        print(f"firmware management is not available: {exc}", file=sys.stderr)
        return 2
    root = Path(args.root)
    if args.command == "update":
        return fw.cli_update(args.source, root)
    if args.command == "rollback":
        return fw.cli_rollback(root)
    return _diagnostics(args, diag, fw)


class DiagnosticsSourceError(Exception):
    """The state store can be neither asked for nor read; the message says why and what to do."""


#: How long ``chargepoint diagnostics`` waits for a lock on a store no controller answers for.
STORE_LOCK_TIMEOUT_S = 2.0


def _copy_state_dir_directly(state_dir: Path, dest: Path, why_not_asked: str) -> list[str]:
    """Copy the SQLite files of a state directory that no running controller answers for.

    Read-only, inside a read transaction (so a controller starting meanwhile cannot switch the file under
    the copy) and with a short lock timeout: a store still held by a controller fails within seconds instead
    of waiting forever (CPython's ``backup()`` retries a busy source without end). Returns notes.
    """
    import sqlite3

    notes: list[str] = [] if state_dir.is_dir() else [f"state directory {state_dir} does not exist"]
    try:
        candidates = sorted(state_dir.iterdir()) if state_dir.is_dir() else []
    except PermissionError:
        raise DiagnosticsSourceError(
            f"cannot read the state directory {state_dir}: run as root (sudo chargepoint diagnostics …)"
        ) from None
    for db in candidates:
        if not db.is_file() or db.name.endswith(("-wal", "-shm", "-journal")):
            continue
        try:
            with db.open("rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    continue
        except OSError as exc:
            notes.append(f"{db} unreadable: {exc.strerror or exc}")
            continue
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=STORE_LOCK_TIMEOUT_S)
        try:
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            dst = sqlite3.connect(dest / db.name)
            try:
                src.backup(dst)
            finally:
                dst.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise DiagnosticsSourceError(
                    f"the state store {db} is locked by a running controller, and no controller answered on "
                    f"its status socket ({why_not_asked}). Give the socket with --socket (the configuration's "
                    "chargepoint.status_socket), or stop the service (sudo systemctl stop chargepoint) and "
                    "run it again"
                ) from None
            notes.append(f"{db.name} could not be read: {exc}")
        except sqlite3.DatabaseError as exc:
            notes.append(f"{db.name} could not be read: {exc}")
        finally:
            src.close()
    return notes


def _diagnostics(args: argparse.Namespace, diag: Any, fw: Any) -> int:
    """``chargepoint diagnostics OUT``: the running controller copies its (exclusively locked) store over
    the status socket; without a controller the state directory is read directly."""
    import shutil
    import time
    from datetime import UTC, datetime, timedelta

    from chargepoint import __version__
    from chargepoint.status_socket import DEFAULT_STATUS_SOCKET, StatusUnavailable, fetch_store_copy

    root = Path(args.root)
    versions: dict[str, Any] = {"chargepoint": __version__}
    if root.is_dir():
        with contextlib.suppress(OSError):
            versions["releases"] = fw.ReleaseManager(root).status()
    since = datetime.now(UTC) - timedelta(hours=args.hours) if args.hours else None
    config = Path(args.config) if args.config else None
    if config is not None and not config.is_file():
        print(f"error: configuration file {config} does not exist", file=sys.stderr)
        return 2
    socket_path = args.socket
    if socket_path is None and config is not None:
        with contextlib.suppress(ConfigError):
            socket_path = load_config(config).status_socket
    socket_path = socket_path or DEFAULT_STATUS_SOCKET
    out_path = Path(args.out)
    if out_path.is_dir():
        out_path = out_path / f"diagnostics-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz"
    partial = out_path.with_name(out_path.name + ".tmp")
    copy_dir = Path(tempfile.mkdtemp(prefix="chargepoint-diagnostics-"))  # 0700: the copy holds id tags
    code = 1
    try:
        try:
            asyncio.run(fetch_store_copy(socket_path, copy_dir, timeout=60.0))
            print(f"state store: copied by the running controller ({socket_path})")
        except StatusUnavailable as exc:
            for note in _copy_state_dir_directly(Path(args.state_dir), copy_dir, str(exc)):
                print(f"note: {note}", file=sys.stderr)
        code = diag.cli_diagnostics(out_path, config, copy_dir, since=since, versions=versions)
    except DiagnosticsSourceError as exc:
        print(f"chargepoint diagnostics: {exc}", file=sys.stderr)
        code = 1
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)
        if code != 0:
            partial.unlink(missing_ok=True)  # never leave a half-written archive behind
    return code


def cmd_mask_tag(args: argparse.Namespace) -> int:
    from chargepoint.privacy import cli_mask_tag

    state_dir = args.state_dir
    if args.config:
        config = _load(args.config)
        if config is None:
            return 2
        state_dir = config.state_dir
    return cli_mask_tag(args.tag, state_dir or "/var/lib/chargepoint")


def build_parser() -> argparse.ArgumentParser:
    from chargepoint import __version__

    parser = argparse.ArgumentParser(prog="chargepoint", description="OCPP 1.6J charge point controller")
    parser.add_argument("--version", action="version", version=f"chargepoint {__version__}",
                        help="print the software version (for the commissioning record) and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the controller on the hardware the configuration names")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "simulate",
        help="the whole controller with simulated hardware, commands on stdin",
        description="The whole controller with every device simulated, driven by commands on standard input "
        "(plug C, unplug C, tap IDTAG, ev C suspend|resume, fault C KIND, clear C KIND, status, quit). Either "
        "--csms and --id, or --config with your own configuration file: its identity, central system, limits, "
        "OCPP keys and station settings, every device simulated (--csms, --id, --password and --key then "
        "override the file). The state is kept in --state-dir (default: a new temporary directory), never in "
        "the file's state_dir.",
    )
    p.add_argument("--config", help="your configuration file, every device simulated")
    p.add_argument("--csms", help="central system URL, e.g. ws://127.0.0.1:9000/ocpp (overrides --config's)")
    p.add_argument("--id", help="charge point identity (overrides --config's)")
    p.add_argument("--connectors", type=int, help="number of connectors without --config (default 1)")
    p.add_argument("--state-dir", help="where the simulated charge point keeps its state (default: a new "
                                       "temporary directory)")
    p.add_argument("--password", help="HTTP Basic authentication password")
    p.add_argument("--key", action="append", help="initial OCPP configuration key, NAME=VALUE (repeatable)")
    p.add_argument("--status-socket", help="serve `chargepoint status --socket PATH` here (default: "
                                           "chargepoint.status_socket of --config; none without --config)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="default: the configuration's logging.level, else info")
    p.add_argument("--web", metavar="HOST:PORT", help="serve the web UI there, e.g. 127.0.0.1:8080")
    p.add_argument("--mqtt", metavar="HOST:PORT", help="publish to this MQTT broker (anonymous, Home Assistant "
                                                       "discovery on), e.g. 127.0.0.1:1883")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="a full charging session against an embedded central system")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("check-config", help="validate a configuration file, driver options included")
    p.add_argument("config", nargs="?")
    p.add_argument("--config", dest="config_option", help="the same, as an option")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("check-hardware", help="walk through the wallbox's devices (commissioning)")
    p.add_argument("--config", required=True)
    p.add_argument("--yes", action="store_true", help="answer yes to every confirmation (scripted use)")
    p.set_defaults(func=cmd_check_hardware)

    p = sub.add_parser("status", help="what the running controller is doing")
    p.add_argument("--socket", default="/run/chargepoint/status.sock", help="the service's status socket")
    p.add_argument("--json", action="store_true")
    p.add_argument("--follow", "-f", action="store_true",
                   help="then print every change as it happens (status, pilot, transactions, faults …) until ^C")
    p.set_defaults(func=cmd_status)

    default_root = os.environ.get("CHARGEPOINT_RELEASE_ROOT", "/opt/chargepoint")
    p = sub.add_parser("update", help="install a release (wheel or archive) from a file or URL")
    p.add_argument("source")
    p.add_argument("--root", default=default_root)
    p.set_defaults(func=cmd_firmware)
    p = sub.add_parser("rollback", help="switch back to the previous release")
    p.add_argument("--root", default=default_root)
    p.set_defaults(func=cmd_firmware)
    p = sub.add_parser("diagnostics", help="write a diagnostics archive")
    p.add_argument("out")
    p.add_argument(
        "--config",
        default="/etc/chargepoint/chargepoint.toml",
        help="configuration to include (secrets removed); '' for none",
    )
    p.add_argument("--state-dir", default="/var/lib/chargepoint",
                   help="read directly only when no controller answers on the status socket")
    p.add_argument("--socket", help="the running controller's status socket, which copies its state store "
                                    "(default: chargepoint.status_socket of --config, else "
                                    "/run/chargepoint/status.sock)")
    p.add_argument("--hours", type=float, default=24.0, help="journal window: the last N hours (default 24)")
    p.add_argument("--root", default=default_root)
    p.set_defaults(func=cmd_firmware)
    p = sub.add_parser("mask-tag", help="the mask this charger logs for an id tag (journalctl ID_TAG=…)")
    p.add_argument("tag")
    p.add_argument("--state-dir", help="state directory (default /var/lib/chargepoint)")
    p.add_argument("--config", help="take the state directory from this configuration")
    p.set_defaults(func=cmd_mask_tag)
    from chargepoint.frontends.web.setpassword import add_parser as add_set_password  # the web UI's password

    add_set_password(sub)
    from chargepoint.localcontroller.cli import add_parser as add_local_controller  # issue 15

    add_local_controller(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
