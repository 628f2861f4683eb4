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

from chargepoint.config import ConfigError, load_config, simulated_config
from hal.interfaces import HardwareConfigError

log = logging.getLogger("chargepoint")


def _setup_logging(level: str) -> None:
    """Journal fields under systemd, text on stderr elsewhere; secrets redacted (chargepoint.logsetup)."""
    from chargepoint.logsetup import setup_logging

    try:
        setup_logging(level)
    except ValueError as exc:  # a bad level from the command line or the configuration
        setup_logging("info")
        log.warning("%s; using info", exc)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if level != "debug":
        logging.getLogger("ocpp").setLevel(logging.WARNING)


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
    socket come with the controller (chargepoint.features.service)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if body is not None:
        return await body
    try:
        await controller.start()
        await stop.wait()
    finally:
        log.info("stopping: outputs go to their safe state")
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
        print(f"{args.config}: hardware configuration: {exc}", file=sys.stderr)
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
    _setup_logging(args.log_level)
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="chargepoint-sim-")
    keys: dict[str, Any] = {}
    for item in args.key or []:
        name, _, value = item.partition("=")
        keys[name] = value
    try:
        config = simulated_config(
            charge_point_id=args.id,
            csms_url=args.csms,
            connectors=args.connectors,
            state_dir=state_dir,
            ocpp_keys=keys,
            password=args.password,
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from chargepoint.controller import Controller
    from chargepoint.simulate import run_simulator

    controller = Controller(config, restart=_restart_process)
    return asyncio.run(_run_controller(controller, run_simulator(controller)))


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
    args.config = path
    config = _load(path)
    if config is None:
        return 2
    problem = _check_driver_options(config)
    if problem:
        print(f"{path}: hardware configuration: {problem}", file=sys.stderr)
        return 2
    drivers = ", ".join(
        f"connector {c.id}: " + " ".join(f"{k}={v.get('driver', 'sim')}" for k, v in c.devices.items())
        for c in config.connectors
    )
    print(
        f"{args.config}: OK — charge point {config.charge_point_id}, {len(config.connectors)} connector(s), "
        f"CSMS {config.csms.url}\n  {drivers}"
    )
    return 0


def _check_driver_options(config: Any) -> str | None:
    """Build every driver against mock GPIO pins: options are checked (names, pins, conflicts, ports given)
    without touching hardware a running service owns. Returns the problem, or None."""
    from chargepoint.controller import build_hardware
    from hal.registry import BuildContext

    try:
        from gpiozero.pins.mock import MockFactory

        ctx = BuildContext(gpio_pin_factory=MockFactory())
    except ImportError:
        ctx = BuildContext()
    try:
        build_hardware(config, ctx)
    except HardwareConfigError as exc:
        return str(exc)
    except Exception as exc:  # a driver that cannot even be constructed: say which
        return f"{type(exc).__name__}: {exc}"
    return None


def cmd_check_hardware(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    _setup_logging("warning")
    from chargepoint.controller import build_hardware

    try:
        hardware, _ = build_hardware(config)
    except HardwareConfigError as exc:
        print(f"{args.config}: hardware configuration: {exc}", file=sys.stderr)
        return 2
    try:
        from chargepoint.commissioning import check_hardware
    except ImportError as exc:
        print(f"check-hardware is not available: {exc}", file=sys.stderr)
        return 2

    def ask(question: str) -> str:
        return input(question + " ")

    ok = asyncio.run(check_hardware(hardware, ask=ask, say=print, assume_yes=args.yes))
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    try:
        from chargepoint.status_socket import StatusUnavailable, fetch_status, format_status
    except ImportError as exc:
        print(f"status is not available: {exc}", file=sys.stderr)
        return 2
    try:
        snapshot = asyncio.run(fetch_status(args.socket))
    except StatusUnavailable as exc:
        print(f"chargepoint status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(snapshot, indent=2) if args.json else format_status(snapshot))
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
    from datetime import UTC, datetime, timedelta

    from chargepoint import __version__

    versions: dict[str, Any] = {"chargepoint": __version__}
    if root.is_dir():
        with contextlib.suppress(OSError):
            versions["releases"] = fw.ReleaseManager(root).status()
    since = datetime.now(UTC) - timedelta(hours=args.hours) if args.hours else None
    config = Path(args.config) if args.config else None
    return diag.cli_diagnostics(Path(args.out), config, Path(args.state_dir), since=since, versions=versions)


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
    parser = argparse.ArgumentParser(prog="chargepoint", description="OCPP 1.6J charge point controller")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the controller on the hardware the configuration names")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("simulate", help="the whole controller with simulated hardware, commands on stdin")
    p.add_argument("--csms", required=True, help="central system URL, e.g. ws://127.0.0.1:9000/ocpp")
    p.add_argument("--id", required=True, help="charge point identity")
    p.add_argument("--connectors", type=int, default=1)
    p.add_argument("--state-dir")
    p.add_argument("--password", help="HTTP Basic authentication password")
    p.add_argument("--key", action="append", help="initial OCPP configuration key, NAME=VALUE (repeatable)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
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
    p.add_argument("--state-dir", default="/var/lib/chargepoint")
    p.add_argument("--hours", type=float, default=24.0, help="journal window: the last N hours (default 24)")
    p.add_argument("--root", default=default_root)
    p.set_defaults(func=cmd_firmware)
    p = sub.add_parser("mask-tag", help="the mask this charger logs for an id tag (journalctl ID_TAG=…)")
    p.add_argument("tag")
    p.add_argument("--state-dir", help="state directory (default /var/lib/chargepoint)")
    p.add_argument("--config", help="take the state directory from this configuration")
    p.set_defaults(func=cmd_mask_tag)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
