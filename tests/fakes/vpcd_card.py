"""A contactless card for vsmartcard's virtual reader (vpcd), speaking the vpcd socket protocol.

vpcd (the pcscd driver) listens on a TCP port; a card "is placed" by connecting to it and "removed"
by disconnecting. Every message has a 2-byte big-endian length prefix. One-byte messages are control
codes (0 power off, 1 power on, 2 reset, 4 send ATR); longer ones are APDUs. The card answers the
PC/SC part 3 GET DATA UID command ``FF CA 00 00 00`` with UID + 90 00.
"""

from __future__ import annotations

import socket
import struct
import threading

# ATR of a MIFARE Classic 1K as a PC/SC part 3 contactless reader reports it.
ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")


class FakeCard:
    def __init__(self, port: int, uid: bytes, host: str = "127.0.0.1") -> None:
        self.port, self.uid, self.host = port, uid, host
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.apdus: list[bytes] = []

    def place(self, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
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
