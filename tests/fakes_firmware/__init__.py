"""Test helpers for the firmware tests: real loopback HTTP and FTP servers, release artifacts, a fast venv
installer, a virtual clock.  Everything binds to 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import atexit
import io
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections import Counter
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------
# HTTP


class HttpServer:
    """ThreadingHTTPServer on 127.0.0.1:0.  ``files[path] = bytes`` are served on GET; ``truncate[path] = n``
    announces the full Content-Length but sends only n bytes; ``status[path] = code`` answers with that
    code; PUT/POST bodies land in ``received[path]``; ``upload_status`` forces an answer to uploads."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.received: dict[str, bytes] = {}
        self.received_headers: dict[str, dict[str, str]] = {}
        self.upload_status: int | None = None
        self.hits: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                logging.getLogger("test-http").debug(format, *args)

            def _path(self) -> str:
                return self.path.split("?", 1)[0]

            def do_GET(self) -> None:  # noqa: N802
                p = self._path()
                outer.hits[p] += 1
                if p in outer.status:
                    self._send(outer.status[p], b"forced status\n")
                    return
                body = outer.files.get(p)
                if body is None:
                    self._send(404, b"not found\n")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if p in outer.truncate:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: outer.truncate[p]])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                self.wfile.write(body)

            def _upload(self) -> None:
                p = self._path()
                outer.hits[p] += 1
                n = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(n)
                if outer.upload_status is not None:
                    self._send(outer.upload_status, b"upload refused\n")
                    return
                outer.received[p] = data
                outer.received_headers[p] = dict(self.headers.items())
                self._send(201, b"stored\n")

            do_PUT = _upload  # noqa: N815
            do_POST = _upload  # noqa: N815

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> HttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


# ---------------------------------------------------------------------------------------------------------
# FTP (pyftpdlib)


class FtpServer:
    """pyftpdlib on 127.0.0.1:0 serving ``root``.  Users: ``fw``/``fwpass`` read-only,
    ``up``/``uppass`` read-write, ``ro``/``ropass`` read-only (refuses STOR with 550)."""

    def __init__(self, root: Path) -> None:
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler
        from pyftpdlib.servers import FTPServer

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        auth = DummyAuthorizer()
        auth.add_user("fw", "fwpass", str(self.root), perm="elr")
        auth.add_user("up", "uppass", str(self.root), perm="elradfmw")
        auth.add_user("ro", "ropass", str(self.root), perm="elr")
        handler = type("Handler", (FTPHandler,), {"authorizer": auth, "passive_ports": None, "auth_failed_timeout": 0.05,
                                                   "banner": "test ftpd"})
        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
        self.server = FTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.address[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, user: str, password: str, path: str) -> str:
        return f"ftp://{user}:{password}@127.0.0.1:{self.port}/{path.lstrip('/')}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        self.server.close_all()

    def __enter__(self) -> FtpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------------------------------------
# Artifacts


def make_wheel(directory: Path, version: str, *, metadata_name: str = "pi-chargepoint",
               metadata_version: str | None = None, filename: str | None = None,
               marker: str = "") -> Path:
    """A minimal wheel with the project's name and METADATA (fast stand-in for a real build)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (filename or f"pi_chargepoint-{version}-py3-none-any.whl")
    di = f"pi_chargepoint-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("chargepoint/__init__.py", f"__version__ = {version!r}\nMARKER = {marker!r}\n")
        zf.writestr(f"{di}/METADATA",
                    f"Metadata-Version: 2.1\nName: {metadata_name}\nVersion: {metadata_version or version}\n")
        zf.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{di}/RECORD", "")
    return path


def make_sdist(directory: Path, version: str, *, metadata_name: str = "pi-chargepoint") -> Path:
    import tarfile

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"pi_chargepoint-{version}.tar.gz"
    top = f"pi_chargepoint-{version}"
    with tarfile.open(path, "w:gz") as tf:
        for name, text in ((f"{top}/PKG-INFO", f"Metadata-Version: 2.1\nName: {metadata_name}\nVersion: {version}\n"),
                           (f"{top}/chargepoint/__init__.py", "")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def extract_installer(venv: Path, artifact: Path, version: str) -> None:
    """Fast VenvInstaller for tests: unpack the wheel into ``venv/site-packages`` (no interpreter copy)."""
    site = venv / "site-packages"
    site.mkdir(parents=True)
    with zipfile.ZipFile(artifact) as zf:
        zf.extractall(site)
    (venv / "bin").mkdir()
    (venv / "bin" / "chargepoint").write_text(f"#!/bin/sh\necho chargepoint {version}\n")


def failing_installer(venv: Path, artifact: Path, version: str) -> None:
    from chargepoint.firmware.update import InstallFailed

    venv.mkdir(parents=True)
    raise InstallFailed(f"pip install of {artifact.name} failed (exit 1): simulated")


_REAL_WHEELS: dict[str, Path] = {}
_REAL_DIR: Path | None = None


def build_project_wheel(version: str, extra_dependency: str | None = None) -> Path:
    """Build the real project wheel (from a copy of the repo with its version set), once per session.

    A copy, because pip builds in-tree and would leave build/ and *.egg-info in the shared checkout."""
    global _REAL_DIR
    if version in _REAL_WHEELS:
        return _REAL_WHEELS[version]  # a version is built once; it must always come with the same deps
    if _REAL_DIR is None:
        _REAL_DIR = Path(tempfile.mkdtemp(prefix="cp-wheels-"))
        atexit.register(shutil.rmtree, _REAL_DIR, ignore_errors=True)  # source copies and wheels, per run
    src = _REAL_DIR / f"src-{version}"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    src.mkdir()
    for name in ("chargepoint", "hal"):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, src / name)
    text = (src / "pyproject.toml").read_text()
    import re

    text, n = re.subn(r'(?m)^version\s*=\s*"[^"]*"', f'version = "{version}"', text, count=1)
    assert n == 1, "pyproject.toml has no version line"
    if extra_dependency:
        text, n = re.subn(r"(?m)^dependencies\s*=\s*\[", f'dependencies = [\n    "{extra_dependency}",', text, count=1)
        assert n == 1, "pyproject.toml has no dependencies list"
    (src / "pyproject.toml").write_text(text)
    out = _REAL_DIR / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(src)], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building the project wheel failed:\n{proc.stdout}\n{proc.stderr}")
    wheel = next(out.glob(f"pi_chargepoint-{version}-*.whl"))
    _REAL_WHEELS[version] = wheel
    return wheel


# ---------------------------------------------------------------------------------------------------------
# Time


class FakeClock:
    """Virtual time: ``sleep`` advances ``now`` instantly and records the requested delays."""

    def __init__(self, start: datetime) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += timedelta(seconds=max(0.0, seconds))
        await asyncio.sleep(0)


class Recorder:
    """An async ``notify`` that records statuses."""

    def __init__(self) -> None:
        self.statuses: list[str] = []

    async def __call__(self, status: str) -> None:
        self.statuses.append(status)
