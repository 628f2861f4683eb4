"""hardware-docs: the pin map is the agreed one, and the wiring diagram is valid SVG that shows every pin."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "hardware-docs"
EXPECTED = {
    "contactor relay": 17, "contactor mirror contact": 27, "lock motor: lock": 22, "lock motor: unlock": 23,
    "lock feedback": 24, "RCM fault": 5, "RCM test": 6, "LED green": 16, "LED red": 20, "LED blue": 12,
    "buzzer": 21, "pilot PWM": 18, "MCP3008 CE0": 8, "MCP3008 MISO": 9, "MCP3008 MOSI": 10, "MCP3008 SCLK": 11,
    "UART TXD": 14, "UART RXD": 15,
}
# Optional inputs/outputs ([energy]): in the pin map, not (yet) in wiring.svg's reference build.
OPTIONAL = {"1p/3p relay (optional, `[energy.phase_switch]`)": 26, "§14a dimming input (optional, `[energy.dimming]`)": 13}
# BCM GPIO -> physical header pin (Raspberry Pi 40-pin header)
PHYSICAL = {17: 11, 27: 13, 22: 15, 23: 16, 24: 18, 5: 29, 6: 31, 16: 36, 20: 38, 12: 32, 21: 40, 18: 12,
            8: 24, 9: 21, 10: 19, 11: 23, 14: 8, 15: 10, 26: 37, 13: 33}


def pinout_rows() -> dict[str, tuple[int, int]]:
    rows = {}
    for line in (DOCS / "pinout.md").read_text().splitlines():
        m = re.match(r"^\| ([^|]+?) \| GPIO(\d+) \| (\d+) \|", line)
        if m:
            rows[m[1]] = (int(m[2]), int(m[3]))
    return rows


def test_pinout_matches_the_agreed_map() -> None:
    rows = pinout_rows()
    assert {k: v[0] for k, v in rows.items()} == {**EXPECTED, **OPTIONAL}
    for function, (gpio, physical) in rows.items():
        assert PHYSICAL[gpio] == physical, function
    gpios = [g for g, _ in rows.values()]
    assert len(gpios) == len(set(gpios)), "a GPIO is used twice"


def svg_text() -> str:
    root = ET.parse(DOCS / "wiring.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return " ".join("".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text"))


def test_wiring_diagram_shows_every_pin_and_block() -> None:
    text = svg_text()
    for gpio in set(EXPECTED.values()):
        assert re.search(rf"GPIO{gpio}\s+\({PHYSICAL[gpio]}\)", text), f"GPIO{gpio} missing"
    for block in ("Relay driver", "Contactor", "mirror", "MCP3008", "OpenEVSE", "RS-485", "120 Ω", "A+", "B−",
                  "ACR122U", "RCM", "lock", "LED", "RCD type A", "Type 2"):
        assert block in text, block


def test_wiring_diagram_renders(tmp_path: Path) -> None:
    exe = shutil.which("rsvg-convert")
    if exe is None:
        pytest.skip("rsvg-convert not installed (apt-get install -y librsvg2-bin)")
    out = tmp_path / "wiring.png"
    subprocess.run([exe, str(DOCS / "wiring.svg"), "-o", str(out)], check=True, timeout=60)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 50_000  # a real drawing, not an empty canvas


def test_docs_link_to_each_other() -> None:
    for name in ("pinout.md", "bom.md", "commissioning.md", "safety.md", "maintainers.md"):
        text = (DOCS / name).read_text()
        for target in re.findall(r"\]\(([^)#]+\.(?:md|svg))\)", text):
            assert (DOCS / target).is_file(), f"{name} links to missing {target}"
    assert "check-hardware --config /etc/chargepoint/chargepoint.toml" in (DOCS / "commissioning.md").read_text()
    assert "journalctl -u chargepoint CONNECTOR_ID=2" in (DOCS / "maintainers.md").read_text()
