"""The pilot / PP board schematic (hardware-docs/pilot-board.svg), drawn from hardware-docs/pilot/values.toml.

Every value label is formatted from values.toml, so the drawing cannot disagree with the netlist the tests
simulate. Regenerate with ``python -m tests.pilot_sim --write``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def fmt(value: float, unit: str) -> str:
    """17400, "Ω" -> "17.4 kΩ"; 1e-7, "F" -> "100 nF"."""
    for factor, prefix in ((1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):
        if abs(value) >= factor * 0.9999:
            return f"{value / factor:.4g} {prefix}{unit}"
    return f"{value:g} {unit}"


def pct(tol: float) -> str:
    return f"{tol * 100:g} %"


def labels(values: Mapping[str, Any]) -> dict[str, str]:
    g, m, pp, r, s = values["generator"], values["measurement"], values["pp"], values["reference"], values["supply"]
    gt, mt = pct(g["resistor_tolerance"]), pct(m["resistor_tolerance"])
    return {
        "Rpd": f"R1 {fmt(g['gpio_pulldown_ohm'], 'Ω')}",
        "Ra": f"R2 {fmt(g['ra_ohm'], 'Ω')} {gt}",
        "Rb": f"R3 {fmt(g['rb_ohm'], 'Ω')} {gt}",
        "Rf": f"R4 {fmt(g['rf_ohm'], 'Ω')} {gt}",
        "Rs": f"R5 {fmt(g['source_ohm'], 'Ω')} {pct(g['source_tolerance'])} ≥0.25 W",
        "Rt": f"R6 {fmt(m['r_top_ohm'], 'Ω')} {mt}",
        "Rg": f"R7 {fmt(m['r_gnd_ohm'], 'Ω')} {mt}",
        "Rr": f"R8 {fmt(m['r_ref_ohm'], 'Ω')} {mt}",
        "Rk0": f"R9 {fmt(m['charge_ohm'], 'Ω')}", "Rk1": f"R13 {fmt(m['charge_ohm'], 'Ω')}",
        "Rbl0": f"R10 {fmt(m['bleed_ohm'], 'Ω')} {pct(m['bleed_tolerance'])}",
        "Rbl1": f"R14 {fmt(m['bleed_ohm'], 'Ω')} {pct(m['bleed_tolerance'])}",
        "Rfb0": f"R11 {fmt(m['feedback_ohm'], 'Ω')}", "Rfb1": f"R15 {fmt(m['feedback_ohm'], 'Ω')}",
        "Radc0": f"R12 {fmt(m['adc_series_ohm'], 'Ω')}", "Radc1": f"R16 {fmt(m['adc_series_ohm'], 'Ω')}",
        "Ch0": f"C1 {fmt(m['hold_f'], 'F')}", "Ch1": f"C2 {fmt(m['hold_f'], 'F')}",
        "Rpu": f"R17 {fmt(pp['pullup_ohm'], 'Ω')} {pct(pp['resistor_tolerance'])}",
        "Rps": f"R18 {fmt(pp['series_ohm'], 'Ω')}",
        "Cpf": f"C3 {fmt(pp['filter_f'], 'F')}",
        "Rntc": f"R20 {fmt(values['ntc']['series_ohm'], 'Ω')} {pct(values['ntc']['resistor_tolerance'])}",
        "Ntc": f"NTC {fmt(values['ntc']['r25_ohm'], 'Ω')} B{values['ntc']['beta']:g}",
        "Cntc": f"C4 {fmt(values['ntc']['filter_f'], 'F')}",
        "Rref": f"R19 {fmt(r['feed_ohm'], 'Ω')}",
        "Vref": f"U3 {r['v']:g} V {pct(r['tolerance'])} reference",
        "rails": f"±{s['rail_v']:g} V ± {pct(s['rail_tolerance'])}",
    }


def labelled_values(values: Mapping[str, Any]) -> list[str]:
    return list(labels(values).values())


class Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(self, x: float, y: float, s: str, cls: str = "s", anchor: str = "start") -> None:
        s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        self.add(f'<text x="{x:g}" y="{y:g}" class="{cls}" text-anchor="{anchor}">{s}</text>')

    def wire(self, *pts: tuple[float, float], color: str = "#111") -> None:
        d = " ".join(f"{'M' if i == 0 else 'L'}{x:g},{y:g}" for i, (x, y) in enumerate(pts))
        self.add(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.6"/>')

    def dot(self, x: float, y: float) -> None:
        self.add(f'<circle cx="{x:g}" cy="{y:g}" r="3.2" fill="#111"/>')

    def res_h(self, x: float, y: float, label: str, length: float = 80) -> tuple[float, float]:
        """Horizontal resistor from (x, y) to (x + length, y), IEC box; label above."""
        b = 36
        x0 = x + (length - b) / 2
        self.wire((x, y), (x0, y))
        self.add(f'<rect x="{x0:g}" y="{y - 7:g}" width="{b}" height="14" fill="white" stroke="#111" '
                 f'stroke-width="1.6"/>')
        self.wire((x0 + b, y), (x + length, y))
        self.text(x + length / 2, y - 12, label, "v", "middle")
        return x + length, y

    def res_v(self, x: float, y: float, label: str, length: float = 80, side: str = "right") -> tuple[float, float]:
        b = 36
        y0 = y + (length - b) / 2
        self.wire((x, y), (x, y0))
        self.add(f'<rect x="{x - 7:g}" y="{y0:g}" width="14" height="{b}" fill="white" stroke="#111" '
                 f'stroke-width="1.6"/>')
        self.wire((x, y0 + b), (x, y + length))
        if side == "right":
            self.text(x + 12, y + length / 2 + 4, label, "v")
        else:
            self.text(x - 12, y + length / 2 + 4, label, "v", "end")
        return x, y + length

    def cap_v(self, x: float, y: float, label: str, length: float = 60) -> None:
        mid = y + length / 2
        self.wire((x, y), (x, mid - 4))
        self.wire((x - 12, mid - 4), (x + 12, mid - 4))
        self.wire((x - 12, mid + 4), (x + 12, mid + 4))
        self.wire((x, mid + 4), (x, y + length))
        self.text(x + 16, mid + 4, label, "v")

    def diode(self, x: float, y: float, direction: str, label: str = "") -> None:
        """Diode centred at (x, y); direction = where the current flows: right, left, up, down."""
        pts = {"right": ((-8, -8), (-8, 8), (8, 0), ((8, -8), (8, 8))),
               "left": ((8, -8), (8, 8), (-8, 0), ((-8, -8), (-8, 8))),
               "down": ((-8, -8), (8, -8), (0, 8), ((-8, 8), (8, 8))),
               "up": ((-8, 8), (8, 8), (0, -8), ((-8, -8), (8, -8)))}[direction]
        a, b, c, (k1, k2) = pts
        self.add(f'<path d="M{x + a[0]:g},{y + a[1]:g} L{x + b[0]:g},{y + b[1]:g} L{x + c[0]:g},{y + c[1]:g} Z" '
                 f'fill="white" stroke="#111" stroke-width="1.6"/>')
        self.wire((x + k1[0], y + k1[1]), (x + k2[0], y + k2[1]))
        if label:
            self.text(x, y - 14 if direction in ("left", "right") else y + 4, label, "v", "middle")

    def gnd(self, x: float, y: float) -> None:
        self.wire((x, y), (x, y + 8))
        for i, w in enumerate((12, 8, 4)):
            self.wire((x - w, y + 8 + 4 * i), (x + w, y + 8 + 4 * i))

    def opamp(self, x: float, y: float, label: str) -> tuple[tuple[float, float], tuple[float, float],
                                                             tuple[float, float]]:
        """Triangle with its left edge at x, centre line y: returns (+ input, − input, output) points."""
        self.add(f'<path d="M{x:g},{y - 34:g} L{x:g},{y + 34:g} L{x + 60:g},{y:g} Z" fill="white" stroke="#111" '
                 f'stroke-width="1.8"/>')
        self.text(x + 6, y - 12, "+", "p")
        self.text(x + 6, y + 20, "−", "p")
        self.text(x + 30, y - 36, label, "v", "middle")
        return (x, y - 16), (x, y + 16), (x + 60, y)

    def terminal(self, x: float, y: float, label: str, left: bool = False) -> None:
        self.add(f'<circle cx="{x:g}" cy="{y:g}" r="5" fill="white" stroke="#c62828" stroke-width="2"/>')
        if left:
            self.text(x - 9, y + 5, label, "t", "end")
        else:
            self.text(x + 9, y + 5, label, "t")

    def box(self, x: float, y: float, w: float, h: float, title: str, lines: list[str],
            color: str = "#1f5fbf", fill: str = "#e8f0fe") -> None:
        self.add(f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" rx="5" fill="{fill}" stroke="{color}" '
                 f'stroke-width="1.6"/>')
        self.text(x + 8, y + 18, title, "t")
        for i, line in enumerate(lines):
            self.text(x + 8, y + 36 + 16 * i, line, "s")


def schematic_svg(values: Mapping[str, Any]) -> str:
    lb = labels(values)
    g, adc = values["generator"], values["adc"]
    w, h = 1640, 1180
    s = Svg()
    s.add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
          'font-family="DejaVu Sans, Arial, Helvetica, sans-serif">')
    s.add("<title>Pilot / PP board: reference schematic</title>")
    s.add("<style>.h{font-size:22px;font-weight:bold;fill:#111}.t{font-size:15px;font-weight:bold;fill:#111}"
          ".s{font-size:12.5px;fill:#222}.v{font-size:12.5px;fill:#0d3b8c}.n{font-size:12px;fill:#555;"
          "font-style:italic}.p{font-size:16px;font-weight:bold;fill:#111}</style>")
    s.add(f'<rect width="{w}" height="{h}" fill="white"/>')
    s.text(20, 32, "Pilot / PP board (one connector): reference schematic", "h")
    s.text(20, 54, "Values from hardware-docs/pilot/values.toml (generated; simulated by tests/test_pilot_circuit.py)."
           " Part numbers are candidates: check datasheet. GND of this board = PE, tied at ONE point (J3).", "n")

    # ---------------------------------------------------------------- power and reference (top left)
    s.box(20, 75, 330, 150, "Supply and reference", [
        "PS1 isolated DC-DC 12 V → " + lb["rails"],
        "  regulated, ≥ 1 W (check datasheet)",
        "  common = GND; input fused (F3, wiring.svg)",
        "+15 V → " + lb["Rref"] + " → VREF node",
        lb["Vref"] + " (e.g. LM4040-3.0)",
        "VREF feeds: U4 supply, R2, R8, R17, MCP3008 VREF",
    ], "#2e7d32", "#eaf5ea")

    # ---------------------------------------------------------------- generator (top)
    s.text(400, 92, "Generator: GPIO18 → Schmitt buffer (0 / VREF) → U1 ×8 around 1.714 V → ±12.0 V", "t")
    s.terminal(385, 170, "GPIO18", left=False)
    s.wire((390, 170), (470, 170))
    s.dot(470, 170)
    s.res_v(470, 170, lb["Rpd"], 70, "left")
    s.gnd(470, 240)
    s.wire((470, 170), (520, 170))
    s.add('<path d="M520,150 L520,190 L556,170 Z" fill="white" stroke="#111" stroke-width="1.8"/>')
    s.text(538, 140, "U4 74LVC1G17", "v", "middle")
    s.text(538, 205, "supply = VREF", "n", "middle")
    s.wire((556, 170), (600, 170), (600, 154), (640, 154))
    plus, minus, out = s.opamp(640, 170, "U1 (±15 V)")
    s.wire(minus, (620, 186), (620, 250))
    s.dot(620, 250)
    s.res_h(540, 250, lb["Ra"], 80)
    s.text(500, 254, "VREF", "s")
    s.res_v(620, 250, lb["Rb"], 70, "left")
    s.gnd(620, 320)
    s.wire((620, 250), (700, 250))
    s.res_h(700, 250, lb["Rf"], 90)
    s.wire((790, 250), (790, 170))
    s.wire(out, (800, 170))
    s.dot(790, 170)
    s.res_h(800, 170, lb["Rs"], 110)
    s.wire((910, 170), (990, 170))
    s.dot(960, 170)
    s.diode(960, 205, "down", "")
    s.text(975, 210, "D1 TVS SMBJ15CA", "v")
    s.wire((960, 170), (960, 197))
    s.wire((960, 213), (960, 235))
    s.gnd(960, 235)
    s.terminal(995, 170, "CP (J1)")
    s.text(700, 114, "U1: ≥ " + f"{g['opamp']['slew_v_per_us']:g} V/µs, ≥ {g['opamp']['gbw_hz'] / 1e6:g} MHz, "
           f"≤ {g['opamp']['headroom_v']:g} V headroom at 15 mA", "n")

    # ---------------------------------------------------------------- measurement (middle)
    y0 = 420
    s.text(20, y0 - 60, "Measurement: CP → divider (−12…+12 V → 0…VREF) → peak holds → MCP3008 CH0 / CH1", "t")
    s.terminal(70, y0 + 40, "CP", left=True)
    s.res_h(70, y0 + 40, lb["Rt"], 110)
    s.wire((180, y0 + 40), (250, y0 + 40))
    s.dot(250, y0 + 40)
    s.res_v(250, y0 + 40, lb["Rg"], 80, "left")
    s.gnd(250, y0 + 120)
    s.wire((250, y0 + 40), (250, y0 + 10))
    s.res_v(250, y0 - 30, lb["Rr"], 40, "left")
    s.text(256, y0 - 34, "VREF", "s")
    s.text(30, y0 + 170, "node M: BAT54S clamps to 3.3 V / GND", "n")
    # positive hold
    for row, (title, ch, direction, bleed_to) in enumerate(
            (("CH0: high phase (positive peak)", "CH0", "right", "GND"),
             ("CH1: low phase (negative peak, diode check)", "CH1", "left", "VREF"))):
        y = y0 + 20 + row * 230
        x = 330
        s.text(x, y - 60, title, "t")
        s.wire((250, y0 + 40), (300, y0 + 40), (300, y - 16), (x, y - 16))
        plus, minus, out = s.opamp(x, y, "U2A" if row == 0 else "U2C")
        s.wire(out, (420, y))
        s.diode(440, y, direction, "D2" if row == 0 else "D4")
        s.wire((420, y), (432, y))
        s.wire((448, y), (460, y))
        s.res_h(460, y, lb[f"Rk{row}"], 110)
        s.wire((570, y), (610, y))
        s.dot(610, y)
        s.cap_v(610, y, lb[f"Ch{row}"], 70)
        s.gnd(610, y + 70)
        s.wire((610, y), (760, y))
        s.dot(760, y)
        s.res_v(760, y, lb[f"Rbl{row}"], 70)
        if bleed_to == "GND":
            s.gnd(760, y + 70)
        else:
            s.wire((760, y + 70), (760, y + 80))
            s.text(770, y + 84, "VREF", "s")
        s.wire((760, y), (870, y), (870, y - 16), (900, y - 16))
        bplus, bminus, bout = s.opamp(900, y, "U2B" if row == 0 else "U2D")
        s.wire(bminus, (885, y + 16), (885, y + 50), (980, y + 50), (980, y))
        s.wire(bout, (1010, y))
        s.dot(980, y)
        s.res_h(1010, y, lb[f"Radc{row}"], 90)
        s.wire((1100, y), (1110, y))
        s.text(1114, y + 5, "→ " + ch, "t")
        # feedback from the follower back to the detector's inverting input, with the anti-saturation diode
        fb_y = y + 110
        s.wire((980, y + 50), (980, fb_y))
        s.res_h(600, fb_y, lb[f"Rfb{row}"], 380)
        s.wire((600, fb_y), (316, fb_y), (316, minus[1]), minus)
        s.dot(400, fb_y)
        s.wire((400, fb_y), (400, fb_y - 20))
        s.diode(400, fb_y - 32, "up" if row == 0 else "down", "")
        s.text(412, fb_y - 30, "D3" if row == 0 else "D5", "v")
        s.wire((400, fb_y - 40), (400, y))
        s.dot(400, y)

    # ---------------------------------------------------------------- PP (bottom left)
    yp = 950
    s.text(20, yp - 20, "Proximity pilot (socket only): pull-up from VREF, ratiometric", "t")
    s.text(40, yp + 14, "VREF", "s")
    s.wire((80, yp + 10), (120, yp + 10))
    s.res_h(120, yp + 10, lb["Rpu"], 110)
    s.wire((230, yp + 10), (300, yp + 10))
    s.dot(270, yp + 10)
    s.wire((270, yp + 10), (270, yp + 60))
    s.terminal(270, yp + 66, "PP (J2)")
    s.res_h(300, yp + 10, lb["Rps"], 110)
    s.wire((410, yp + 10), (470, yp + 10))
    s.dot(450, yp + 10)
    s.cap_v(450, yp + 10, lb["Cpf"], 60)
    s.gnd(450, yp + 70)
    s.text(476, yp + 15, f"→ MCP3008 CH{adc['pp_channel']}", "t")
    s.text(40, yp + 110, "D6 TVS SMBJ15CA on PP. Cable Rc (PP–PE): 1.5 kΩ 13 A · 680 Ω 20 A · 220 Ω 32 A · 100 Ω 63 A;",
           "n")
    s.text(40, yp + 126, "ADC bands for the driver: values.toml [[pp.adc_band]] (accept = Rc ± 3 % over all tolerances).",
           "n")

    # ---------------------------------------------------------------- NTC (bottom middle)
    xn = 700
    s.text(xn, yp - 20, "Temperature (optional): NTC at the socket terminals, ratiometric", "t")
    s.text(xn + 20, yp + 14, "VREF", "s")
    s.wire((xn + 60, yp + 10), (xn + 90, yp + 10))
    s.res_h(xn + 90, yp + 10, lb["Rntc"], 110)
    s.wire((xn + 200, yp + 10), (xn + 330, yp + 10))
    s.dot(xn + 230, yp + 10)
    s.wire((xn + 230, yp + 10), (xn + 230, yp + 60))
    s.terminal(xn + 230, yp + 66, "J6: " + lb["Ntc"] + " to GND", left=True)
    s.dot(xn + 300, yp + 10)
    s.cap_v(xn + 300, yp + 10, lb["Cntc"], 60)
    s.gnd(xn + 300, yp + 70)
    s.text(xn + 336, yp + 15, f"→ MCP3008 CH{adc['ntc_channel']}", "t")
    s.text(xn, yp + 110, "The NTC touches parts near mains: reinforced insulation (check datasheet).", "n")
    s.text(xn, yp + 126, "Open NTC reads < −40 °C, shorted > 150 °C: sensor fault, charging stops.", "n")

    # ---------------------------------------------------------------- ADC and notes (right)
    s.box(1230, 380, 390, 200, "U5 MCP3008 (SPI0 CE0)", [
        f"CH{adc['cp_channel']} ← high-phase hold (state A–F)",
        f"CH{adc['cp_negative_channel']} ← low-phase hold (EV diode check)",
        f"CH{adc['pp_channel']} ← PP",
        f"CH{adc['ntc_channel']} ← NTC (temperature, optional)",
        "VREF pin ← U3 " + f"{values['reference']['v']:g} V (ratiometric with the divider)",
        "VDD 3.3 V and GND from the Pi; 100 nF at VDD and VREF",
        "SCLK GPIO11 · MOSI GPIO10 · MISO GPIO9 · CS GPIO8",
        f"driver: volts = code/1023 × 24 − 12; error budget ±{adc['error_lsb']} LSB",
    ])
    s.box(1230, 600, 390, 230, "Why these values", [
        "U1 works linearly from a 0 / 3.000 V buffer: the levels are",
        "set by U3 and 0.1 % resistors, not by how far an op-amp",
        "swings to its rails (a TL082 on ±12 V reaches only ±10.5 V).",
        "R5 1 kΩ: IEC 61851-1 source resistance (1 kΩ ± 3 %).",
        "Holds: 150 ms bleed → droop < 1 % per period; 47 kΩ charge",
        "resistor → no overshoot after a step; D3/D5 keep U2A/U2C",
        "out of saturation so they catch 50 µs pulses (5 % duty).",
        "Simulated: tests/test_pilot_circuit.py; see pilot-circuit.md.",
        "GND = PE at J3 only; PP/CP return = PE of the socket.",
        "Supplies: PS1 input fuse; TVS D1/D6 at the connector.",
    ], "#b26a00", "#fff7e6")
    s.box(1230, 75, 390, 136, "Connectors", [
        "J1 CP · J2 PP · J3 PE (the single PE–GND tie) → socket",
        "J6 NTC (socket terminals, optional)",
        "J4 to the Pi: GPIO18, SPI0 (8–11), 3.3 V, GND",
        "J5 +12 V in (from the DIN-rail PSU, fused)",
        "Mount ≥ creepage from mains; no mains on this board",
    ], "#6a1b9a", "#f3e5f5")
    s.text(20, h - 20, "Reference designs consulted: Horowitz & Hill improved peak detector; OpenEVSE pilot circuit "
           "(op-amp + 1 kΩ); TI TIDA-00637. Drawn by tests/pilot_schematic.py.", "n")
    s.add("</svg>")
    return "\n".join(s.parts) + "\n"
