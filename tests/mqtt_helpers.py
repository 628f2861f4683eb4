"""MQTT test rig: a real mosquitto on 127.0.0.1 (own config, password file, persistence directory; never the
system service), a subscriber that records what the broker forwards, and a fake :class:`StationApi` for tests
that need no controller.

A test module makes its ``broker`` fixture with ``yield from run_broker(tmp_path)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from chargepoint.api import (
    Change,
    ChangeKind,
    CommandError,
    CommandResult,
    ConnectorView,
    LimitClaimView,
    LinkView,
    Role,
    StationView,
)

USER = "chargepoint"
PASSWORD = "s3cret-broker-pw"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One mosquitto process on 127.0.0.1:``port``; ``stop()``/``start()`` restart it on the same port."""

    def __init__(self, directory: Path, port: int | None = None, *, tls: Any = None) -> None:
        """``tls``: a trustme CA; the listener then speaks TLS with a certificate for 127.0.0.1 from it."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.passwd = self.dir / "passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(self.passwd), USER, PASSWORD], check=True,
                       capture_output=True)
        self.passwd.chmod(0o600)
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {self.passwd}",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "log_type all",
        ]
        if tls is not None:
            server = tls.issue_cert("127.0.0.1", "localhost")
            server.cert_chain_pems[0].write_to_path(str(self.dir / "server.pem"))
            server.private_key_pem.write_to_path(str(self.dir / "server.key"))
            tls.cert_pem.write_to_path(str(self.dir / "ca.pem"))
            lines += [f"cafile {self.dir / 'ca.pem'}", f"certfile {self.dir / 'server.pem'}",
                      f"keyfile {self.dir / 'server.key'}"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to the 'mosquitto' user, who cannot read tmp_path
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {self.log()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not listen in time")

    def stop(self, *, forget: bool = False) -> None:
        """SIGTERM (mosquitto saves its sessions and retained messages); ``forget``: delete them too."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if forget:
            (self.dir / "mosquitto.db").unlink(missing_ok=True)

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


def run_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs Debian's mosquitto (scripts/test.sh installs it)")
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


class Subscriber:
    """Records every message under ``pattern`` (what Home Assistant would see)."""

    def __init__(self, broker: Mosquitto, pattern: str = "#") -> None:
        self.broker = broker
        self.pattern = pattern
        self.messages: list[Received] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.client: Any = None

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self._ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def _run(self) -> None:
        import aiomqtt

        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.broker.port, username=USER, password=PASSWORD,
                                          protocol=aiomqtt.ProtocolVersion.V5) as client:
                    self.client = client
                    await client.subscribe(self.pattern, qos=1)
                    self._ready.set()
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes | bytearray) else str(m.payload).encode()
                        self.messages.append(Received(str(m.topic), bytes(payload), bool(m.retain),
                                                      asyncio.get_running_loop().time()))
            except aiomqtt.MqttError:
                self.client = None
                await asyncio.sleep(0.1)

    def last(self, topic: str) -> Received | None:
        return next((m for m in reversed(self.messages) if m.topic == topic), None)

    def latest(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in self.messages:
            out[m.topic] = m.text
        return out

    async def wait_for(self, topic: str, where: Callable[[Received], bool] = lambda m: True,
                       timeout: float = 10.0, after: int = 0) -> Received:
        async with asyncio.timeout(timeout):
            while True:
                for m in self.messages[after:]:
                    if m.topic == topic and where(m):
                        return m
                await asyncio.sleep(0.01)

    async def wait_value(self, topic: str, value: str, timeout: float = 10.0) -> Received:
        """Until the topic's *latest* payload is ``value``."""
        async with asyncio.timeout(timeout):
            while True:
                m = self.last(topic)
                if m is not None and m.text == value:
                    return m
                await asyncio.sleep(0.01)


async def publish(broker: Mosquitto, topic: str, payload: str | bytes, *, qos: int = 1,
                  retain: bool = False) -> None:
    """Publish as Home Assistant would (QoS 1: returns once the broker acknowledged it)."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", broker.port, username=USER, password=PASSWORD,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(topic, payload, qos=qos, retain=retain)


# ------------------------------------------------------------------------------------------- fake API
def connector_view(cid: int = 1, **kw: Any) -> ConnectorView:
    base = dict(
        id=cid, status="Available", error_code="NoError", pilot="A", available=True, cable_a=None,
        offered_a=None, measured_a=0.0, power_w=0.0, energy_wh=1000.0, session_energy_wh=None,
        contactor="open", transaction_id=None, id_tag=None, session_started=None, limit_a=32.0,
        limit_source="connector", claims=(LimitClaimView("connector", 32.0), LimitClaimView("fuse", 32.0)),
    )
    base.update(kw)
    return ConnectorView(**base)


class FakeSubscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.closed = False

    def put(self, change: Change) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(change)

    def __aiter__(self) -> FakeSubscription:
        return self

    async def __anext__(self) -> Change:
        return await self.queue.get()

    async def get(self) -> Change:
        return await self.queue.get()

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeApi:
    """A StationApi over a mutable view: commands are recorded and change the view as a controller would."""

    connectors: dict[int, ConnectorView] = field(default_factory=lambda: {1: connector_view(1)})
    firmware_version: str = "1.2.3"
    link: LinkView = LinkView("connected", "Accepted", "2024-01-01T00:00:00Z", 0, None)
    calls: list[tuple[str, int | None, Any, Role]] = field(default_factory=list)
    subscriptions: list[FakeSubscription] = field(default_factory=list)
    free_vend: bool = True
    snapshots: int = 0

    def snapshot(self) -> StationView:
        self.snapshots += 1
        return StationView("CP-MQTT", self.firmware_version, self.link, tuple(self.connectors.values()),
                           free_vend=self.free_vend)

    def subscribe(self, maxsize: int = 256) -> FakeSubscription:
        sub = FakeSubscription(maxsize)
        self.subscriptions.append(sub)
        return sub

    def update(self, cid: int, kind: ChangeKind = ChangeKind.METER, **kw: Any) -> None:
        self.connectors[cid] = replace(self.connectors[cid], **kw)
        for sub in self.subscriptions:
            sub.put(Change(kind, cid, dict(kw)))

    def _check(self, cid: int | None, role: Role) -> None:
        if cid is not None and cid not in self.connectors:
            raise CommandError(CommandError.UNKNOWN_CONNECTOR, f"no connector {cid}")
        if role < Role.USER:
            raise CommandError(CommandError.NOT_PERMITTED, "viewers may not do that")

    async def start_session(self, connector_id: int, id_tag: str | None = None, *,
                            role: Role = Role.USER) -> CommandResult:
        self._check(connector_id, role)
        self.calls.append(("start", connector_id, id_tag, role))
        if id_tag is None and not self.free_vend:
            raise CommandError(CommandError.NOT_POSSIBLE, "free vend is not enabled")
        return CommandResult(True, "started")

    async def stop_session(self, connector_id: int, *, role: Role = Role.USER) -> CommandResult:
        self._check(connector_id, role)
        self.calls.append(("stop", connector_id, None, role))
        if self.connectors[connector_id].transaction_id is None:
            raise CommandError(CommandError.NOT_POSSIBLE, "no session to stop")
        return CommandResult(True)

    async def set_local_limit(self, connector_id: int | None, amps: float | None, *,
                              role: Role = Role.USER) -> CommandResult:
        self._check(connector_id, role)
        if amps is not None and not 6 <= amps <= 32:
            raise CommandError(CommandError.BAD_VALUE, "6 to 32 A")
        self.calls.append(("limit", connector_id, amps, role))
        assert connector_id is not None
        self.update(connector_id, ChangeKind.LIMIT, local_limit_a=amps)
        return CommandResult(True)

    async def set_available(self, connector_id: int, available: bool, *,
                            role: Role = Role.USER) -> CommandResult:
        self._check(connector_id, role)
        self.calls.append(("available", connector_id, available, role))
        self.update(connector_id, ChangeKind.STATUS, available=available,
                    status="Available" if available else "Unavailable")
        return CommandResult(True)

    async def clear_fault(self, connector_id: int, *, role: Role = Role.ADMIN) -> CommandResult:
        raise CommandError(CommandError.NOT_PERMITTED, "not over MQTT")


async def loop_lag(duration: float, interval: float = 0.005) -> list[float]:
    """How late a periodic task wakes up on this loop (what the controller's dispatcher would feel)."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    end = loop.time() + duration
    while loop.time() < end:
        t0 = loop.time()
        await asyncio.sleep(interval)
        lags.append(loop.time() - t0 - interval)
    return lags


@contextlib.asynccontextmanager
async def running_frontend(api: Any, broker: Mosquitto, **kw: Any) -> AsyncIterator[Any]:
    from chargepoint.frontends.mqtt import DeviceInfo, MqttConfig, MqttFrontend

    cfg_kw = {k: kw.pop(k) for k in list(kw) if k in MqttConfig.__dataclass_fields__}
    base = {"enabled": True, "host": "127.0.0.1", "port": broker.port, "username": USER, "password": PASSWORD,
            "topic_prefix": "chargepoint/CP-MQTT"}
    cfg = MqttConfig(**{**base, **cfg_kw})
    fe = MqttFrontend(api, cfg, DeviceInfo("CP-MQTT", "OpenWallbox", "PiEVSE", "SN1"),
                      reconnect_min_s=kw.pop("reconnect_min_s", 0.1), reconnect_max_s=kw.pop("reconnect_max_s", 1.0),
                      **kw)
    await fe.start()
    try:
        yield fe
    finally:
        await fe.stop()


def controller_api(controller: Any) -> Any:
    """The application API's implementation over a running controller (issue 13), or None before it exists."""
    api = getattr(controller, "api", None)
    if api is not None and hasattr(api, "snapshot") and hasattr(api, "subscribe"):
        return api
    import chargepoint.api as api_module

    for name in ("ControllerApi", "StationApiImpl"):
        cls = getattr(api_module, name, None)
        if cls is not None:
            return cls(controller)
    return None
