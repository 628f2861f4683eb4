"""PC/SC RFID reader (e.g. ACR122U) through pyscard's SCard API, polled in a thread.

Each card insertion reads the UID with the PC/SC part 3 pseudo-APDU ``FF CA 00 00 00`` (answer:
UID + 90 00) and emits TagPresented. A reader that disappears (unplugged, or pcscd gone) emits
FaultRaised(READER) once; when it is back, FaultCleared(READER).

pyscard is an optional extra (``pip install pi-chargepoint[pcsc]``; needs libpcsclite-dev to build).
On a Pi, blacklist the kernel's pn533/nfc modules or pcscd cannot claim an ACR122U.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hal.driver_options import TAG_FORMATS, Options, format_tag
from hal.interfaces import Emit, FaultKind, TagPresented
from hal.threaded import ThreadedDevice

log = logging.getLogger(__name__)

GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]


class PcscReader(ThreadedDevice):
    def __init__(self, *, reader: str | None = None, tag_format: str = "hex", poll_ms: int = 250,
                 name: str = "reader", fault_connector: int = 0) -> None:
        super().__init__(fault_connector=fault_connector)
        self.reader_filter = reader
        self.tag_format = tag_format
        self.poll_ms = poll_ms
        self.name = name
        self.reader_name: str | None = None
        self.cycles = 0

    async def start(self, emit: Emit) -> None:
        import smartcard.scard  # noqa: F401  (fail early with ImportError if pyscard is missing)

        await super().start(emit)

    def _thread_name(self) -> str:
        return "pcsc-reader"

    def _reader_gone(self, why: str) -> None:
        if self._fault_once(FaultKind.READER, why):
            log.error("RFID reader: %s", why)

    def _reader_back(self) -> None:
        if self._clear_once(FaultKind.READER):
            log.info("RFID reader %s is back", self.reader_name)

    def _pick(self, readers: list[str]) -> str | None:
        for r in sorted(readers):
            if self.reader_filter is None or self.reader_filter in r:
                return r
        return None

    def _run(self) -> None:
        from smartcard import scard as sc

        ctx = None
        present = False
        while not self._stop.is_set():
            self.cycles += 1
            if ctx is None:
                rv, ctx = sc.SCardEstablishContext(sc.SCARD_SCOPE_USER)
                if rv != sc.SCARD_S_SUCCESS:
                    ctx = None
                    self._reader_gone(f"PC/SC service unavailable: {sc.SCardGetErrorMessage(rv)}")
                    self._stop.wait(1.0)
                    continue
            rv, readers = sc.SCardListReaders(ctx, [])
            if rv in (sc.SCARD_E_NO_SERVICE, sc.SCARD_E_SERVICE_STOPPED, sc.SCARD_E_INVALID_HANDLE):
                sc.SCardReleaseContext(ctx)
                ctx, present = None, False
                self._reader_gone(f"PC/SC service stopped: {sc.SCardGetErrorMessage(rv)}")
                self._stop.wait(1.0)
                continue
            name = self._pick(list(readers) if rv == sc.SCARD_S_SUCCESS else [])
            if name is None:
                present = False
                want = f"matching {self.reader_filter!r}" if self.reader_filter else "at all"
                self._reader_gone(f"no PC/SC reader {want} (plugged in? pcscd running?)")
                self._stop.wait(1.0)
                continue
            self.reader_name = name
            self._reader_back()
            rv, states = sc.SCardGetStatusChange(ctx, self.poll_ms, [(name, sc.SCARD_STATE_UNAWARE)])
            if rv == sc.SCARD_E_TIMEOUT:
                continue
            if rv != sc.SCARD_S_SUCCESS:
                if rv in (sc.SCARD_E_NO_SERVICE, sc.SCARD_E_SERVICE_STOPPED, sc.SCARD_E_INVALID_HANDLE):
                    sc.SCardReleaseContext(ctx)
                    ctx, present = None, False
                self._stop.wait(self.poll_ms / 1000.0)
                continue
            _, event_state, _atr = states[0]
            now_present = bool(event_state & sc.SCARD_STATE_PRESENT) and not (event_state & sc.SCARD_STATE_MUTE)
            if now_present and not present:
                uid = self._read_uid(sc, ctx, name)
                if uid:
                    tag = format_tag(uid, self.tag_format)
                    log.info("RFID tap on %s", name)
                    self._hand_over(TagPresented(tag, self.name))
            present = now_present
            # Without a change, GetStatusChange above returned at once (UNAWARE): wait one poll period.
            self._stop.wait(self.poll_ms / 1000.0)
        if ctx is not None:
            sc.SCardReleaseContext(ctx)

    def _read_uid(self, sc: Any, ctx: Any, name: str) -> bytes | None:
        rv, card, proto = sc.SCardConnect(ctx, name, sc.SCARD_SHARE_SHARED,
                                          sc.SCARD_PROTOCOL_T0 | sc.SCARD_PROTOCOL_T1)
        if rv != sc.SCARD_S_SUCCESS:
            log.warning("RFID: cannot connect to the card: %s", sc.SCardGetErrorMessage(rv))
            return None
        try:
            rv, resp = sc.SCardTransmit(card, proto, GET_UID)
            if rv != sc.SCARD_S_SUCCESS or len(resp) < 3 or resp[-2:] != [0x90, 0x00]:
                log.warning("RFID: card did not return its UID (rv=%s, answer=%s)", rv, bytes(resp or []).hex())
                return None
            return bytes(resp[:-2])
        finally:
            sc.SCardDisconnect(card, sc.SCARD_LEAVE_CARD)


def build_reader(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> PcscReader:
    o = Options(options, key)
    dev = PcscReader(
        reader=o.str("reader", None) if o.has("reader") else None,
        tag_format=o.str("tag_format", "hex", choices=TAG_FORMATS),
        poll_ms=o.int("poll_ms", 250, lo=50, hi=2000),
        name=o.str("name", key.rsplit(".", 1)[-1] or "reader"),
        fault_connector=connector_id,
    )
    o.finish()
    return dev
