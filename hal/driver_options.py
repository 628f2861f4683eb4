"""Option parsing shared by the real drivers.

Every wrong option becomes a ``HardwareConfigError`` that names the dotted key, the
value and what is allowed, so that an installer never sees a traceback. Unknown
options are rejected too: a typo such as ``baud_rate`` must not silently fall back
to a default on a device that switches mains power.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hal.interfaces import HardwareConfigError

# Pins a driver must not take by default: GPIO18 is the hardware PWM of the pilot,
# 8-11 the SPI0 bus of the MCP3008, 14/15 the UART, 2/3 I2C.
BCM_PINS = range(0, 28)
RESERVED_PINS = {2: "I2C SDA", 3: "I2C SCL", 8: "SPI CE0", 9: "SPI MISO", 10: "SPI MOSI", 11: "SPI SCLK",
                 14: "UART TX", 15: "UART RX", 18: "pilot hardware PWM"}


class Options:
    """Typed access to one device's TOML table, with errors that name the key."""

    def __init__(self, options: Mapping[str, Any], key: str) -> None:
        self._opts = dict(options)
        self.key = key
        self._seen: set[str] = set()

    def _k(self, name: str) -> str:
        return f"{self.key}.{name}"

    def has(self, name: str) -> bool:
        return name in self._opts

    def raw(self, name: str, default: Any = None) -> Any:
        self._seen.add(name)
        return self._opts.get(name, default)

    def int(self, name: str, default: int | None, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self.raw(name, default)
        if value is None:
            raise HardwareConfigError(self._k(name), value, "required: an integer")
        if isinstance(value, bool) or not isinstance(value, int):
            raise HardwareConfigError(self._k(name), value, _range_text("an integer", lo, hi))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise HardwareConfigError(self._k(name), value, _range_text("an integer", lo, hi))
        return value

    def float(self, name: str, default: float | None, *, lo: float | None = None,
              hi: float | None = None) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HardwareConfigError(self._k(name), value, _range_text("a number", lo, hi))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise HardwareConfigError(self._k(name), value, _range_text("a number", lo, hi))
        return float(value)

    def str(self, name: str, default: str | None, *, choices: Iterable[str] | None = None) -> str:
        value = self.raw(name, default)
        allowed = sorted(choices) if choices is not None else None
        if not isinstance(value, str) or not value:
            what = "one of " + ", ".join(repr(c) for c in allowed) if allowed else "a non-empty string"
            raise HardwareConfigError(self._k(name), value, what)
        if allowed is not None and value not in allowed:
            raise HardwareConfigError(self._k(name), value, "one of " + ", ".join(repr(c) for c in allowed))
        return value

    def bool(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise HardwareConfigError(self._k(name), value, "true or false")
        return value

    def pin(self, name: str, default: int | None, *, optional: bool = False) -> int | None:
        """A BCM GPIO number. ``optional`` pins may be disabled with the string "none"."""
        value = self.raw(name, default)
        if optional and (value is None or value == "none"):
            return None
        allowed = "a BCM GPIO number 0-27" + (' or "none"' if optional else "")
        if isinstance(value, bool) or not isinstance(value, int) or value not in BCM_PINS:
            raise HardwareConfigError(self._k(name), value, allowed)
        return value

    def finish(self) -> None:
        """Reject options nobody asked for (typos)."""
        unknown = sorted(set(self._opts) - self._seen)
        if unknown:
            name = unknown[0]
            raise HardwareConfigError(
                self._k(name), self._opts[name], "unknown option; known: " + ", ".join(sorted(self._seen))
            )


def _range_text(what: str, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{what} from {lo} to {hi}"
    if lo is not None:
        return f"{what} >= {lo}"
    if hi is not None:
        return f"{what} <= {hi}"
    return what


def claim_pins(ctx: Any, key: str, pins: Mapping[str, int | None]) -> None:
    """Record which option uses which GPIO so two devices cannot drive the same pin.

    ``ctx`` is the registry's BuildContext; the claims live in ``ctx.shared["gpio.pins"]``.
    """
    claims: dict[int, str] = ctx.get_or_create("gpio.pins", dict)
    local: dict[int, str] = {}
    for name, pin in pins.items():
        if pin is None:
            continue
        owner = claims.get(pin) or local.get(pin)
        if owner is not None:
            raise HardwareConfigError(f"{key}.{name}", pin, f"a GPIO not already used (taken by {owner})")
        if pin in RESERVED_PINS:
            raise HardwareConfigError(
                f"{key}.{name}", pin, f"a free GPIO (GPIO{pin} is {RESERVED_PINS[pin]})"
            )
        local[pin] = f"{key}.{name}"
    claims.update(local)


TAG_FORMATS = ("hex", "hex_lower", "hex_reversed", "decimal")


def format_tag(uid: bytes, fmt: str) -> str:
    """How a card UID becomes an OCPP idTag (max. 20 characters, OCPP 1.6 IdToken = CiString20Type).

    ``hex``: uppercase hex as most CSMS and printed card lists use; ``hex_reversed``: byte order reversed
    (what some readers/libraries report for MIFARE UIDs); ``decimal``: the big-endian number (the
    10-digit number printed on EM4100 125 kHz cards).
    """
    if fmt == "hex_lower":
        return uid.hex()
    if fmt == "hex_reversed":
        return uid[::-1].hex().upper()
    if fmt == "decimal":
        return str(int.from_bytes(uid, "big"))
    return uid.hex().upper()
