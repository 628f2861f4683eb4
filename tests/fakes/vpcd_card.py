"""A contactless card for vsmartcard's virtual reader (vpcd), speaking the vpcd socket protocol.

vpcd (the pcscd driver) listens on a TCP port; a card "is placed" by connecting to it and "removed"
by disconnecting. Every message has a 2-byte big-endian length prefix. One-byte messages are control
codes (0 power off, 1 power on, 2 reset, 4 send ATR); longer ones are APDUs. The card answers the
PC/SC part 3 GET DATA UID command ``FF CA 00 00 00`` with UID + 90 00.

vpcd binds its listening socket to 0.0.0.0 (no option to change that), and its reverse mode crashes
Debian's pcscd (vsmartcard issue #131). Tests therefore run pcscd in a network namespace of its own
that has nothing but a loopback interface (``unshare --net``), so the 0.0.0.0 listener is reachable
only from inside that namespace; the card connects from inside it via ``setns`` (``in_netns``).
pyscard still reaches pcscd through its unix socket in /run/pcscd, which namespaces do not hide.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

# ATR of a MIFARE Classic 1K as a PC/SC part 3 contactless reader reports it.
ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
# vpcd's default port; any port is free inside a namespace of our own.
VPCD_PORT = 0x8C7B

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sH22x"  # struct ifreq: name[IFNAMSIZ], then a union of 24 bytes (flags are a short)

T = TypeVar("T")


def vpcd_reader_conf(port: int = VPCD_PORT) -> str:
    """A pcscd reader.conf.d entry for one vpcd reader in listen mode on `port` ("Virtual PCD 00 00")."""
    return (f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x{port:04X}\n'
            f"LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{port:04X}\n")


def pcscd_command(conf_dir: Path) -> list[str]:
    """pcscd in the foreground in a fresh network namespace (only a loopback interface, down).

    `unshare` without --fork execs pcscd, so the Popen pid is pcscd's pid and /proc/<pid>/ns/net
    names its namespace once the unshare has happened (see `wait_own_netns`).
    """
    return ["unshare", "--net", "pcscd", "--foreground", "--config", str(conf_dir)]


def netns_path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


def wait_own_netns(pid: int, timeout: float = 5.0) -> bool:
    """True once process `pid` is in a network namespace other than ours (unshare has run)."""
    mine = os.readlink(netns_path(os.getpid()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.readlink(netns_path(pid)) != mine:
                return True
        except OSError:
            return False  # the process is gone
        time.sleep(0.01)
    return False


def in_netns(netns: str | os.PathLike[str], fn: Callable[[], T]) -> T:
    """Run `fn` on a new thread that has joined the network namespace `netns` and return its result.

    WHY a new thread: setns(CLONE_NEWNET) moves only the calling thread (Python 3.11 has no os.setns);
    the thread ends afterwards, so no pooled thread is left behind in the other namespace. A socket
    stays in the namespace it was created in, so `fn` may return one for use from any thread.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            results.append(fn())
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    thread = threading.Thread(target=run, name="netns", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def loopback_up() -> None:
    """Bring `lo` up in the calling thread's network namespace (what `ip link set lo up` does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _, flags = struct.unpack(_IFREQ, fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0)))
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def tcp_listeners(pid: int, port: int) -> list[str]:
    """Local addresses ("0.0.0.0", "::", ...) listening on TCP `port` in the network namespace of `pid`.

    /proc/<pid>/net/tcp{,6} show the sockets of that process's namespace, so nothing has to connect
    (a connection to vpcd would count as a card being placed).
    """
    found: list[str] = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, _remote, state = line.split()[1:4]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = TCP_LISTEN
                continue
            raw = bytes.fromhex(addr_hex)
            # the kernel prints the address as 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(socket.inet_ntop(family, raw))
    return found


class FakeCard:
    """A card that is placed on the vpcd reader at host:port, from inside network namespace `netns`
    (a /proc/<pid>/ns/net path) when given."""

    def __init__(self, port: int, uid: bytes, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.port, self.uid, self.host, self.netns = port, uid, host, netns
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.apdus: list[bytes] = []

    def place(self, timeout: float = 5.0) -> None:
        def connect() -> socket.socket:
            return socket.create_connection((self.host, self.port), timeout=timeout)

        self.sock = connect() if self.netns is None else in_netns(self.netns, connect)
        self.sock.settimeout(None)
        self.thread = threading.Thread(target=self._serve, args=(self.sock,), daemon=True)
        self.thread.start()

    def remove(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        if self.thread is not None:
            self.thread.join(2)
            self.thread = None

    def _recv(self, sock: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _send(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(struct.pack(">H", len(data)) + data)

    def _serve(self, sock: socket.socket) -> None:
        while True:
            head = self._recv(sock, 2)
            if head is None:
                return
            (length,) = struct.unpack(">H", head)
            msg = self._recv(sock, length)
            if msg is None:
                return
            try:
                if len(msg) == 1:
                    if msg[0] == 4:
                        self._send(sock, ATR)
                    continue  # power on/off and reset need no answer
                self.apdus.append(msg)
                if msg == bytes([0xFF, 0xCA, 0x00, 0x00, 0x00]):
                    self._send(sock, self.uid + b"\x90\x00")
                else:
                    self._send(sock, b"\x6D\x00")  # instruction not supported
            except OSError:
                return
