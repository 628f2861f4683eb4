"""``chargepoint local-controller --config FILE``: run the local controller until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from chargepoint.localcontroller.config import LocalControllerConfigError, load
from chargepoint.localcontroller.server import LocalController
from chargepoint.localcontroller.store import LcStore
from chargepoint.service import ServiceNotifier, Watchdog, watchdog_interval

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="TOML file with a [local_controller] section")
    parser.add_argument("--state-dir", type=Path, help="overrides local_controller.state_dir")
    parser.add_argument("--status-socket", type=Path, help="overrides local_controller.status_socket")
    parser.add_argument("--log-level", default="info", help="debug, info (default), warning, error")


async def run(config_path: Path, state_dir: Path | None = None, status_socket: Path | None = None) -> int:
    from chargepoint.status_socket import StatusServer

    try:
        config = load(config_path)
    except LocalControllerConfigError as exc:
        print(f"{config_path}: {len(exc.problems)} problem(s) in [local_controller]:", file=sys.stderr)
        for p in exc.problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    state = state_dir or config.state_dir
    if state is not None:  # id tags in log lines (queued or refused frames) are masked with this site's secret
        from chargepoint.privacy import use_installation_salt

        use_installation_salt(state)
    store = LcStore.open(state)
    meter = None
    if config.site_meter is not None:
        from hal.registry import BuildContext, build

        meter = build("meter", config.site_meter.meter, "local_controller.site_meter.meter", 0, BuildContext())
    lc = LocalController(config, store, meter=meter)
    await lc.start()
    sock_path = status_socket or config.status_socket
    status = StatusServer(sock_path, lc.snapshot) if sock_path else None
    if status is not None:
        try:
            await status.start()
        except OSError as exc:
            log.error("status socket %s: %s (the local controller runs without it)", sock_path, exc)
            status = None
    print(f"local controller {config.id} listening on {lc.url}", flush=True)
    web = mqtt = None
    if config.web is not None or config.mqtt is not None:  # the site view's front ends (read-only)
        from chargepoint.localcontroller.api import SiteApi

        site = SiteApi(lc)
        if config.web is not None and config.web.enabled:
            from chargepoint.localcontroller.web import start_site_web

            web = await start_site_web(site, config.web)
            if web is not None:
                print(f"site page: {web.url}", flush=True)
        if config.mqtt is not None and config.mqtt.enabled:
            from chargepoint.localcontroller.mqtt import start_site_mqtt

            mqtt = await start_site_mqtt(site, config.mqtt, config.id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # systemd (systemd/chargepoint-local-controller.service, Type=notify): ready once the server listens;
    # the watchdog is fed by the planner (every plan, at least once a second) and stops on a dead task.
    notifier = ServiceNotifier()
    interval = watchdog_interval()
    # The planner plans at least once a second: a stall is two seconds and more without a plan, however short
    # WatchdogSec is (the default stall bound, half of WatchdogSec, would be under that idle period).
    watchdog = Watchdog(notifier, problem=lc.health_problem, interval=interval,
                        stall_after=None if interval is None else max(interval, 2.5))

    # The status line walks every box: under systemd only, and at most once a second (plans come up to 4 a second).
    status_every_s = 1.0 if os.environ.get("NOTIFY_SOCKET") else None
    status_at = [float("-inf")]  # the first plan sets it

    def on_plan() -> None:
        watchdog.tick()
        if status_every_s is None or time.monotonic() - status_at[0] < status_every_s:
            return
        status_at[0] = time.monotonic()
        try:
            notifier.status(lc.summary_line())
        except Exception:  # the status line is cosmetic; the planner must not see its bugs
            log.debug("status line failed", exc_info=True)

    lc.on_plan.append(on_plan)
    watchdog.start()
    notifier.ready()
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        await watchdog.stop()
        if mqtt is not None:
            await mqtt.stop()
        if web is not None:
            await web.stop()
        if status is not None:
            await status.stop()
        await lc.stop()
        store.close()
    return 0


def main(args: argparse.Namespace) -> int:
    from chargepoint.logsetup import setup_command_logging

    setup_command_logging(args.log_level)
    return asyncio.run(run(args.config, args.state_dir, args.status_socket))


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``chargepoint local-controller``: wired into chargepoint/cli.py with one call."""
    p = sub.add_parser("local-controller", help="share a site's connection among charge points (OCPP 1.6)")
    add_arguments(p)
    p.set_defaults(func=main)
