"""The reference pilot / PP board as a SPICE circuit: netlists from hardware-docs/pilot/values.toml, ngspice runs.

One source of truth: every component value and tolerance comes from ``values.toml``. This module turns it
into ngspice netlists (DC operating points for Monte Carlo samples, a transient at 1 kHz for a few
corners), runs ``ngspice -b`` and parses its ASCII raw files. ``python -m tests.pilot_sim --write``
regenerates the committed nominal netlist (hardware-docs/pilot/pilot.cir) and the schematic
(hardware-docs/pilot-board.svg); the tests check that both are up to date.

Models (deliberately simple, parameters = the minimum requirements in values.toml, not one vendor's part):
op-amp = transconductance stage with a current limit (slew rate) into an integrator (gain-bandwidth), output
clamped ``headroom_v`` inside each rail, output resistance; Schmitt buffer = ideal switch between GND and its
supply (VREF) with an output resistance; diodes = SPICE diode models.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VALUES_FILE = ROOT / "hardware-docs" / "pilot" / "values.toml"
NETLIST_FILE = ROOT / "hardware-docs" / "pilot" / "pilot.cir"
SCHEMATIC_FILE = ROOT / "hardware-docs" / "pilot-board.svg"

VT_27C = 0.025865  # thermal voltage at 27 °C (ngspice's default temperature)
DIODE_N = 2.0  # emission coefficient of the vehicle's diode model
VEHICLE_STATES = ("A", "B", "C", "D", "E", "Bnd")  # Bnd: state B resistor without the diode


def load_values(path: Path = VALUES_FILE) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def ngspice() -> str | None:
    return shutil.which("ngspice")


# --------------------------------------------------------------------------------------------- samples

@dataclass
class Sample:
    """One board + vehicle: every toleranced quantity at one value."""

    name: str
    p: dict[str, float] = field(default_factory=dict)


def nominal(values: Mapping[str, Any]) -> Sample:
    g, m, v, s, r, pp = (values[k] for k in ("generator", "measurement", "vehicle", "supply", "reference", "pp"))
    return Sample("nominal", {
        "vrail_p": s["rail_v"], "vrail_n": s["rail_v"], "vref": r["v"],
        "ra": g["ra_ohm"], "rb": g["rb_ohm"], "rf": g["rf_ohm"], "rs": g["source_ohm"],
        "rt": m["r_top_ohm"], "rg": m["r_gnd_ohm"], "rr": m["r_ref_ohm"],
        "ch1": m["hold_f"], "ch2": m["hold_f"], "rbl1": m["bleed_ohm"], "rbl2": m["bleed_ohm"],
        "vos1": 0.0, "vos2": 0.0, "vos3": 0.0,
        "rpu": pp["pullup_ohm"], "rps": pp["series_ohm"],
        "r2": v["r2_ohm"], "rc": v["r_c_ohm"], "rd": v["r_d_ohm"], "vf": sum(v["diode_vf_v"]) / 2,
    })


def _tolerances(values: Mapping[str, Any]) -> dict[str, tuple[float, bool]]:
    """Parameter -> (tolerance, relative?) ; relative tolerances are fractions of the nominal value."""
    g, m, v = values["generator"], values["measurement"], values["vehicle"]
    return {
        "vrail_p": (values["supply"]["rail_tolerance"], True), "vrail_n": (values["supply"]["rail_tolerance"], True),
        "vref": (values["reference"]["tolerance"], True),
        "ra": (g["resistor_tolerance"], True), "rb": (g["resistor_tolerance"], True),
        "rf": (g["resistor_tolerance"], True), "rs": (g["source_tolerance"], True),
        "rt": (m["resistor_tolerance"], True), "rg": (m["resistor_tolerance"], True),
        "rr": (m["resistor_tolerance"], True),
        "ch1": (m["hold_tolerance"], True), "ch2": (m["hold_tolerance"], True),
        "rbl1": (m["bleed_tolerance"], True), "rbl2": (m["bleed_tolerance"], True),
        "vos1": (g["opamp"]["offset_v"], False), "vos2": (m["opamp"]["offset_v"], False),
        "vos3": (m["opamp"]["offset_v"], False),
        "rpu": (values["pp"]["resistor_tolerance"], True), "rps": (values["pp"]["resistor_tolerance"], True),
        "r2": (v["resistor_tolerance"], True), "rc": (v["resistor_tolerance"], True),
        "rd": (v["resistor_tolerance"], True),
        "vf": ((v["diode_vf_v"][1] - v["diode_vf_v"][0]) / 2, False),
    }


def monte_carlo(values: Mapping[str, Any], count: int | None = None, seed: int | None = None) -> list[Sample]:
    """Nominal, the two all-low / all-high corners, then ``count`` uniform samples (fixed seed)."""
    checks = values["checks"]
    rng = random.Random(checks["seed"] if seed is None else seed)
    base = nominal(values)
    tol = _tolerances(values)

    def at(name: str, pick: Iterable[float]) -> Sample:
        p = dict(base.p)
        for (key, (t, rel)), u in zip(sorted(tol.items()), pick, strict=True):
            p[key] = base.p[key] * (1 + u * t) if rel else base.p[key] + u * t
        return Sample(name, p)

    n = len(tol)
    out = [base, at("corner-low", [-1.0] * n), at("corner-high", [1.0] * n)]
    for i in range(checks["monte_carlo_samples"] if count is None else count):
        out.append(at(f"mc{i}", [rng.uniform(-1.0, 1.0) for _ in range(n)]))
    return out


# --------------------------------------------------------------------------------------------- netlists

def _opamp_subckt() -> str:
    return """\
* Op-amp macro model: gm stage with current limit (slew rate) into Cc (gain-bandwidth), clamp headroom_v inside
* the rails, output resistance. Pins: non-inverting, inverting, output, V+, V-.
.subckt opamp inp inn out vcc vee params: gbw=5e6 sr=15e6 hd=1.5 rout=20 vos=0
.param cc=1e-9
.param gm={2*3.14159265*gbw*cc}
.param ilim={sr*cc}
Bgm 0 n1 I = {ilim}*tanh((V(inp)-V(inn)+{vos})*{gm}/{ilim})
Cc n1 0 {cc}
Rdc n1 0 {1e5/gm}
Ehi nhi 0 vcc 0 1
Vhi nhi nclh {hd}
Dhi n1 nclh dclamp
Elo nlo 0 vee 0 1
Vlo ncll nlo {hd}
Dlo ncll n1 dclamp
Eo o1 0 n1 0 1
Ro o1 out {rout}
.model dclamp D(IS=1e-14 N=0.05)
.ends opamp
"""


def board_subckt(values: Mapping[str, Any], settled_holds: bool = False) -> str:
    """The board as a subcircuit. ``settled_holds``: the peak holds replaced by what they settle to in a
    steady state (their input plus the detector's offset) -- the DC Monte Carlo uses this, because Newton
    iterations on hundreds of diode-switched hold loops do not converge in reasonable time; the transient
    runs use the real detectors and check their deviation from this."""
    g, m = values["generator"], values["measurement"]
    go, mo = g["opamp"], m["opamp"]
    u1 = f"gbw={go['gbw_hz']:g} sr={go['slew_v_per_us'] * 1e6:g} hd={go['headroom_v']:g} rout={go['rout_ohm']:g}"
    u2 = f"gbw={mo['gbw_hz']:g} sr={mo['slew_v_per_us'] * 1e6:g} hd={mo['headroom_v']:g} rout={mo['rout_ohm']:g}"
    if settled_holds:
        holds = ("* Peak holds, settled: input + offset\n"
                 "Eh1 h1 0 m 0 1\nVos2 ch0 h1 {vos2}\nEh2 h2 0 m 0 1\nVos3 ch1 h2 {vos3}\n")
    else:
        holds = f"""* Peak holds in the "improved" form (Horowitz & Hill): U2A/U2C charge the hold through D + R_k, the
* followers U2B/U2D buffer it to the ADC and close the loop through R_fb; the second diode keeps U2A/U2C out
* of saturation between pulses, so they recover in well under a microsecond.
* CH0: positive peak (high phase)
XU2A m fa oa vp vn opamp params: {u2} vos={{vos2}}
Da1 oa ka dsch
Rka ka h1 {m['charge_ohm']:g}
Ch1 h1 0 {{ch1}}
Rbl1 h1 0 {{rbl1}}
XU2B h1 ba ba vp vn opamp params: {u2} vos=0
Rfa ba fa {m['feedback_ohm']:g}
Da2 fa oa dsch
Radc1 ba ch0 {m['adc_series_ohm']:g}
* CH1: negative peak (low phase), bleeds towards VREF
XU2C m fb ob vp vn opamp params: {u2} vos={{vos3}}
Db1 kb ob dsch
Rkb h2 kb {m['charge_ohm']:g}
Ch2 h2 0 {{ch2}}
Rbl2 h2 vr {{rbl2}}
XU2D h2 bb bb vp vn opamp params: {u2} vos=0
Rfb bb fb {m['feedback_ohm']:g}
Db2 ob fb dsch
Radc2 bb ch1 {m['adc_series_ohm']:g}
"""
    return f"""\
* Pilot / PP board. Ports: GPIO18 in, generator output (before R_s), CP, CH0 (high-phase hold),
* CH1 (low-phase hold), PP contact, CH2 (PP reading). All values are parameters (values.toml).
.subckt pilotboard gpio gout cp ch0 ch1 pp ch2 params: vrail_p=15 vrail_n=15 vref=3 ra=17.4k rb=23.2k
+ rf=69.8k rs=1k rt=100k rg=33.2k rr=24.9k ch1=100n ch2=100n rbl1=1.5M rbl2=1.5M vos1=0 vos2=0 vos3=0
+ rpu=1k rps=1k
Vp vp 0 {{vrail_p}}
Vn vn 0 {{-vrail_n}}
Vr vr 0 {{vref}}
* GPIO18 pull-down and Schmitt buffer U4 supplied from VREF
Rpd gpio 0 {g['gpio_pulldown_ohm']:g}
Bbuf b0 0 V = V(vr)*0.5*(1+tanh((V(gpio)-1.5)*40))
Rbo b0 bin {g['buffer_rout_ohm']:g}
* Generator U1: non-inverting stage, +/-12 V from the 0/VREF buffer output
Ra vr inn {{ra}}
Rb inn 0 {{rb}}
Rf gout inn {{rf}}
XU1 bin inn gout vp vn opamp params: {u1} vos={{vos1}}
Rs gout cp {{rs}}
* Measurement divider: node m = VREF*(Vcp+12)/24
Rt cp m {{rt}}
Rg m 0 {{rg}}
Rr m vr {{rr}}
{holds}* PP: pull-up from VREF, series resistor and filter to CH2
Rpu vr pp {{rpu}}
Rps pp ch2 {{rps}}
Cpf ch2 0 {values['pp']['filter_f']:g}
* ADC inputs: high impedance
Radc0 ch0 0 1e9
Radc1b ch1 0 1e9
Radc2b ch2 0 1e9
.model dsch D(IS=5e-8 N=1.05 RS=2 CJO=10p)
.ends pilotboard
"""


def diode_is(vf: float, current: float = 5e-3) -> float:
    """Saturation current that gives forward voltage ``vf`` at ``current`` (emission coefficient DIODE_N)."""
    return current / (math.exp(vf / (DIODE_N * VT_27C)) - 1.0)


_PARAMS = ("vrail_p", "vrail_n", "vref", "ra", "rb", "rf", "rs", "rt", "rg", "rr", "ch1", "ch2", "rbl1", "rbl2",
           "vos1", "vos2", "vos3", "rpu", "rps")


def instance(tag: str, sample: Sample, state: str, gpio: str, *, rc_pp: float | None = None,
             capacitance: float = 0.0) -> str:
    """One board + vehicle in ``state``; nodes are suffixed with ``tag``. ``gpio`` is the source spec."""
    p = sample.p
    params = " ".join(f"{k}={p[k]:.9g}" for k in _PARAMS)
    lines = [f"Vg_{tag} gpio_{tag} 0 {gpio}",
             f"X_{tag} gpio_{tag} gout_{tag} cp_{tag} ch0_{tag} ch1_{tag} pp_{tag} ch2_{tag} pilotboard "
             f"params: {params}"]
    load = {"B": p["r2"], "C": p["rc"], "D": p["rd"], "Bnd": p["r2"]}
    if state in ("B", "C", "D"):
        lines += [f"Dv_{tag} cp_{tag} dv_{tag} dveh_{tag}", f"Rv_{tag} dv_{tag} 0 {load[state]:.9g}",
                  f".model dveh_{tag} D(IS={diode_is(p['vf']):.6g} N={DIODE_N:g} CJO=20p)"]
    elif state == "Bnd":
        lines.append(f"Rv_{tag} cp_{tag} 0 {load[state]:.9g}")
    elif state == "E":
        lines.append(f"Vshort_{tag} cp_{tag} 0 0")
    if capacitance:
        lines.append(f"Cv_{tag} cp_{tag} 0 {capacitance:g}")
    lines.append(f"Rpp_{tag} pp_{tag} 0 {1e12 if rc_pp is None else rc_pp:.9g}")
    return "\n".join(lines)


def pwm_source(duty: float, period: float = 1e-3, edge: float = 10e-9) -> str:
    """GPIO18 driven by the Pi's hardware PWM: 0 / 3.3 V, ``duty`` as a fraction of ``period``."""
    width = duty * period - edge
    return f"PULSE(0 3.3 {period / 4:g} {edge:g} {edge:g} {width:.9g} {period:g})"


def netlist(values: Mapping[str, Any], body: Iterable[str], analysis: str, title: str, *,
            settled_holds: bool = False) -> str:
    return "\n".join([f"* {title}", "* generated by tests/pilot_sim.py from hardware-docs/pilot/values.toml",
                      _opamp_subckt(), board_subckt(values, settled_holds), *body, analysis, ".end", ""])


def nominal_netlist(values: Mapping[str, Any]) -> str:
    """The committed, human-runnable netlist: nominal board, vehicle in state C, 53 % duty (32 A), 5 ms."""
    body = [instance("c", nominal(values), "C", pwm_source(0.5333), rc_pp=220.0,
                     capacitance=values["vehicle"]["capacitance_f"])]
    analysis = (".tran 1u 5m\n.control\nrun\nplot v(gout_c) v(cp_c)\nplot v(ch0_c) v(ch1_c)\n.endc")
    return netlist(values, body, analysis, "Pilot board, nominal values, vehicle in state C, 32 A (53.3 % duty)")


# --------------------------------------------------------------------------------------------- ngspice

class NgspiceError(RuntimeError):
    pass


def run(text: str, vectors: str = "all", timeout: float = 60.0) -> dict[str, list[float]]:
    """Run ``text`` in batch mode; return every vector of the last analysis (ASCII raw file)."""
    exe = ngspice()
    if exe is None:
        raise NgspiceError("ngspice not installed")
    with tempfile.TemporaryDirectory(prefix="pilot-sim-") as tmp:
        cir, raw, log = Path(tmp) / "c.cir", Path(tmp) / "out.raw", Path(tmp) / "log.txt"
        analysis_end = text.rfind("\n.end")
        control = (f".control\nset filetype=ascii\nrun\nwrite {raw} {vectors}\nquit\n.endc\n")
        cir.write_text(text[:analysis_end + 1] + control + ".end\n")
        proc = subprocess.run([exe, "-b", "-o", str(log), str(cir)], capture_output=True, text=True,
                              timeout=timeout, cwd=tmp)
        if proc.returncode != 0 or not raw.exists():
            raise NgspiceError(f"ngspice failed ({proc.returncode}):\n{log.read_text()[-3000:] if log.exists() else ''}"
                               f"\n{proc.stderr[-2000:]}")
        return parse_raw(raw.read_text())


def parse_raw(text: str) -> dict[str, list[float]]:
    """ngspice ASCII raw file -> {vector name (lower case): values}."""
    lines = text.splitlines()
    names: list[str] = []
    i = 0
    nvars = npoints = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("No. Variables:"):
            nvars = int(line.split(":")[1])
        elif line.startswith("No. Points:"):
            npoints = int(line.split(":")[1])
        elif line.startswith("Variables:"):
            for j in range(nvars):
                names.append(lines[i + 1 + j].split()[1].lower())
            i += nvars
        elif line.startswith("Values:"):
            i += 1
            break
        i += 1
    data: dict[str, list[float]] = {n: [] for n in names}
    tokens: list[str] = []
    for line in lines[i:]:
        tokens.extend(line.split())
    pos = 0
    for _ in range(npoints):
        pos += 1  # point index
        for n in names:
            data[n].append(float(tokens[pos].split(",")[0]))
            pos += 1
    return data


# --------------------------------------------------------------------------------------------- ADC model

def adc_codes(v_in: float, vref: float, values: Mapping[str, Any]) -> tuple[int, int]:
    """Lowest and highest code the MCP3008 may return for ``v_in`` (ideal code ± error budget)."""
    bits, err = values["adc"]["bits"], values["adc"]["error_lsb"]
    full = 2 ** bits
    ideal = math.floor(v_in / vref * full)
    return max(min(ideal - err, full - 1), 0), max(min(ideal + err, full - 1), 0)


def driver_volts(code: int, scale: float, offset: float, bits: int = 10) -> float:
    """What hal/pilot_pwm.py computes from a code (gpiozero's value = code / (2**bits - 1))."""
    return code / (2 ** bits - 1) * scale + offset


# --------------------------------------------------------------------------------------------- schematic

def _write() -> None:
    values = load_values()
    NETLIST_FILE.write_text(nominal_netlist(values))
    from tests.pilot_schematic import schematic_svg

    SCHEMATIC_FILE.write_text(schematic_svg(values))
    print(f"wrote {NETLIST_FILE.relative_to(ROOT)} and {SCHEMATIC_FILE.relative_to(ROOT)}")


def with_changes(values: Mapping[str, Any], changes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A deep copy of ``values`` with ``changes`` merged in (section -> key -> value)."""
    out = copy.deepcopy(dict(values))
    for section, kv in changes.items():
        target = out
        for part in section.split("."):
            target = target[part]
        target.update(kv)
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        _write()
    else:
        print("usage: python -m tests.pilot_sim --write", file=sys.stderr)
        sys.exit(2)
