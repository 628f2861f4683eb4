"""The reference pilot / PP board (hardware-docs/pilot/values.toml) simulated with ngspice against IEC 61851-1.

Monte Carlo (fixed seed) plus all-low / all-high corners over every tolerance in values.toml: DC operating
points for the plateaus, the generator and the ADC readings; a transient at 1 kHz for the waveform (rise and
fall times, pulse width), the peak holds the MCP3008 samples, and the response to a state change. The ADC
readings are converted with hal/pilot_pwm.py's own defaults and classified with its own thresholds, so a
change on either side that breaks the other fails here. Standard values and their sources:
hardware-docs/pilot-circuit.md.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hal.interfaces import CpState
from hal.pilot_pwm import BANDS, PwmPilot
from hal.registry import BuildContext, build
from tests import pilot_sim as sim

pytestmark = pytest.mark.skipif(sim.ngspice() is None, reason="ngspice not installed (apt-get install ngspice)")

VALUES = sim.load_values()
DOCS = sim.ROOT / "hardware-docs"
CHUNK = 10  # samples per ngspice run: Newton on one huge netlist is much slower than several small ones
PP_CASES = [(c["amps"], c["rc_ohm"] * f) for c in VALUES["pp"]["coding"] for f in (0.97, 1.03)] + [(None, math.inf)]
EXPECTED_HIGH = {"A": CpState.A, "B": CpState.B, "C": CpState.C, "D": CpState.D, "E": CpState.E, "Bnd": CpState.B}


def driver_defaults() -> dict[str, float]:
    """The calibration and thresholds hal/pilot_pwm.py uses when the configuration says nothing."""
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": "/nonexistent"}, "p", 1, BuildContext())
    assert isinstance(pilot, PwmPilot)
    return {"scale": pilot.scale, "offset": pilot.offset, "neg_scale": pilot.neg_scale,
            "neg_offset": pilot.neg_offset, "hysteresis": pilot.hysteresis_v, "diode": pilot.diode_threshold_v}


def dc_runs(values: Mapping[str, Any], samples: list[sim.Sample]) -> dict[str, dict[str, float]]:
    """{sample name: {"<state>_<hi|lo>_<node>": volts, "pp<k>": volts, "ishort": amps}} from .op runs."""
    out: dict[str, dict[str, float]] = {}
    for first in range(0, len(samples), CHUNK):
        chunk = samples[first:first + CHUNK]
        body = []
        for i, s in enumerate(chunk):
            k = 0
            for st in sim.VEHICLE_STATES:
                for phase, src in (("hi", "DC 3.3"), ("lo", "DC 0")):
                    rc = PP_CASES[k][1] if k < len(PP_CASES) else math.inf
                    body.append(sim.instance(f"s{i}_{st}_{phase}", s, st, src, rc_pp=1e12 if math.isinf(rc) else rc))
                    k += 1
        data = sim.run(sim.netlist(values, body, ".op", "DC Monte Carlo", settled_holds=True))
        for i, s in enumerate(chunk):
            r: dict[str, float] = {}
            k = 0
            for st in sim.VEHICLE_STATES:
                for phase in ("hi", "lo"):
                    tag = f"s{i}_{st}_{phase}".lower()
                    for node in ("gout", "cp", "ch0", "ch1"):
                        r[f"{st}_{phase}_{node}"] = data[f"v({node}_{tag})"][0]
                    if k < len(PP_CASES):
                        r[f"pp{k}"] = data[f"v(ch2_{tag})"][0]
                    k += 1
            r["ishort"] = data[f"i(vshort_s{i}_e_hi)"][0]
            out[s.name] = r
    return out


@pytest.fixture(scope="module")
def samples() -> list[sim.Sample]:
    return sim.monte_carlo(VALUES)


@pytest.fixture(scope="module")
def dc(samples: list[sim.Sample]) -> dict[str, dict[str, float]]:
    return dc_runs(VALUES, samples)


def readings(v_adc: float, vref: float, scale: float, offset: float, values: Mapping[str, Any] = VALUES
             ) -> tuple[float, float]:
    """The lowest and highest CP voltage the driver computes from an ADC input of ``v_adc``."""
    lo, hi = sim.adc_codes(v_adc, vref, values)
    return sim.driver_volts(lo, scale, offset), sim.driver_volts(hi, scale, offset)


def band(state: CpState) -> tuple[float, float]:
    return next((lo, hi) for s, lo, hi in BANDS if s == state)


def classification_problems(lo_v: float, hi_v: float, state: CpState, hysteresis: float, margin: float) -> str | None:
    """A reading range must classify as ``state`` from ANY previous state: inside the band shrunk by the
    neighbours' hysteresis, with ``margin`` to spare."""
    b_lo, b_hi = band(state)
    if lo_v < b_lo + hysteresis + margin or hi_v > b_hi - hysteresis - margin:
        return f"reads {lo_v:.2f}..{hi_v:.2f} V, state {state.name} needs {b_lo + hysteresis + margin:.2f}.." \
               f"{b_hi - hysteresis - margin:.2f} V"
    return None


def dc_problems(values: Mapping[str, Any], dc: Mapping[str, Mapping[str, float]], samples: list[sim.Sample]
                ) -> list[str]:
    """Every IEC 61851-1 Annex A requirement the DC results violate, one line each."""
    std, checks = values["standard"], values["checks"]
    d = driver_defaults()
    problems: list[str] = []
    sv, tol = std["state_v"], std["state_tolerance_v"]
    gv, gtol = std["generator_v"], std["generator_tolerance_v"]
    for s in samples:
        r, vref = dc[s.name], s.p["vref"]
        # generator open-circuit voltage and equivalent source resistance (Table A.2)
        for key, want in (("A_hi_gout", gv), ("A_lo_gout", -gv)):
            if abs(r[key] - want) > gtol:
                problems.append(f"{s.name}: generator {key} {r[key]:.3f} V, want {want:+.1f} ± {gtol} V")
        for st in ("B", "C", "D", "E"):
            if abs(r[f"{st}_hi_gout"] - gv) > gtol:
                problems.append(f"{s.name}: generator loaded by {st} {r[f'{st}_hi_gout']:.3f} V")
        rs_eq = r["A_hi_gout"] / r["ishort"]
        if abs(rs_eq - std["source_ohm"]) > std["source_ohm"] * std["source_tolerance"]:
            problems.append(f"{s.name}: equivalent source resistance {rs_eq:.1f} Ω")
        # plateaus (Table A.3/A.4: nominal ± 1 V)
        for st, key in (("A", "A_hi_cp"), ("B", "B_hi_cp"), ("C", "C_hi_cp"), ("D", "D_hi_cp"), ("E", "E_hi_cp"),
                        ("F", "A_lo_cp"), ("F", "B_lo_cp"), ("F", "C_lo_cp"), ("F", "D_lo_cp")):
            if abs(r[key] - sv[st]) > tol:
                problems.append(f"{s.name}: {key} {r[key]:.3f} V outside state {st} {sv[st]:+.0f} ± {tol} V")
        # what the driver reads: high-phase hold (CH0) -> state; low-phase hold (CH1) -> diode check
        for st, state in EXPECTED_HIGH.items():
            lo_v, hi_v = readings(r[f"{st}_hi_ch0"], vref, d["scale"], d["offset"], values)
            why = classification_problems(lo_v, hi_v, state, d["hysteresis"], checks["classify_margin_v"])
            if why:
                problems.append(f"{s.name}: vehicle {st}: {why}")
        for key, state in (("A_lo_ch0", CpState.F), ("E_lo_ch0", CpState.E)):
            lo_v, hi_v = readings(r[key], vref, d["scale"], d["offset"], values)
            why = classification_problems(lo_v, hi_v, state, d["hysteresis"], checks["classify_margin_v"])
            if why:
                problems.append(f"{s.name}: {key}: {why}")
        for st in ("B", "C", "D"):
            _, hi_v = readings(r[f"{st}_lo_ch1"], vref, d["neg_scale"], d["neg_offset"], values)
            if hi_v > d["diode"] - checks["diode_margin_v"]:
                problems.append(f"{s.name}: {st} with diode: low phase reads {hi_v:.2f} V, diode check at "
                                f"{d['diode']} V")
        lo_v, _ = readings(r["Bnd_lo_ch1"], vref, d["neg_scale"], d["neg_offset"], values)
        if lo_v < d["diode"] + checks["diode_margin_v"]:
            problems.append(f"{s.name}: missing diode not seen: low phase reads {lo_v:.2f} V")
    return problems


# --------------------------------------------------------------------------------------------- DC tests

def test_every_state_plateau_generator_and_reading_meet_annex_a_across_tolerances(
        samples: list[sim.Sample], dc: Mapping[str, Mapping[str, float]]) -> None:
    assert len(samples) >= VALUES["checks"]["monte_carlo_samples"] + 3
    assert dc_problems(VALUES, dc, samples) == []


def test_the_checks_reject_the_old_driver_that_swings_to_10_5_volts() -> None:
    """The issue's TL082 on ±12 V rails: about 1.5 V headroom, so ±10.5 V. The same checks must fail."""
    old = sim.with_changes(VALUES, {"supply": {"rail_v": 12.0}})
    samples = sim.monte_carlo(old, count=0)
    problems = dc_problems(old, dc_runs(old, samples), samples)
    assert any(re.match(r"nominal: generator A_hi_gout 10\.[4-6]", p) for p in problems), problems


def test_driver_calibration_defaults_are_this_circuits_transfer(dc: Mapping[str, Mapping[str, float]]) -> None:
    """hal/pilot_pwm.py's default scale/offset (volts = fraction * scale + offset) must be what the nominal
    divider does: fit a line through the simulated CP voltage and ADC fraction of two states."""
    r, vref = dc["nominal"], VALUES["reference"]["v"]
    d = driver_defaults()
    for cp_hi, cp_lo, ch in (("A_hi_cp", "A_lo_cp", "ch0"), ("A_hi_cp", "A_lo_cp", "ch1")):
        f_hi, f_lo = r[f"A_hi_{ch}"] / vref, r[f"A_lo_{ch}"] / vref
        scale = (r[cp_hi] - r[cp_lo]) / (f_hi - f_lo)
        offset = r[cp_hi] - scale * f_hi
        want_scale, want_offset = (d["scale"], d["offset"]) if ch == "ch0" else (d["neg_scale"], d["neg_offset"])
        assert scale == pytest.approx(want_scale, rel=0.005), ch
        assert offset == pytest.approx(want_offset, abs=0.05), ch


def test_pwm_period_limits_of_the_driver_are_inside_the_standards_frequency_tolerance(tmp_path: Path) -> None:
    """1 kHz ± 2 %: the driver must refuse a period outside it (the circuit does not change the frequency)."""
    f, tol = VALUES["standard"]["frequency_hz"], VALUES["standard"]["frequency_tolerance"]
    from hal.interfaces import HardwareConfigError

    for period_ns in (round(1e9 / (f * (1 + tol))) - 1, round(1e9 / (f * (1 - tol))) + 1):
        with pytest.raises(HardwareConfigError):
            build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path), "period_ns": period_ns}, "p", 1,
                  BuildContext())


# --------------------------------------------------------------------------------------------- PP

def pp_bands(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Acceptance band (worst case of Rc ±3 % and the circuit's tolerances, ± the ADC error) and the
    standard's interpretation range, both in ADC counts (counts = round(fraction * 1023), as hal/pp.py)."""
    pp, cable = values["pp"], values["pp"]["cable"]
    t, lsb, top = pp["resistor_tolerance"], pp["adc_error_lsb"], 2 ** values["adc"]["bits"] - 1

    def frac(rc: float, rpu: float) -> float:
        return 1.0 if math.isinf(rc) else rc / (rc + rpu)  # ratiometric, no current in the series resistor

    out = []
    for c in sorted(pp["coding"], key=lambda c: c["rc_ohm"]):
        fs = [frac(c["rc_ohm"] * a, pp["pullup_ohm"] * b) for a in (1 - cable["rc_tolerance"], 1 + cable["rc_tolerance"])
              for b in (1 - t, 1 + t)]
        out.append({"amps": c["amps"],
                    "accept": [max(math.floor(min(fs) * top) - lsb, 0), min(math.ceil(max(fs) * top) + lsb, top)],
                    "interpret": [round(frac(x, pp["pullup_ohm"]) * top) for x in c["range_ohm"]]})
    return out


def test_pp_bands_in_values_toml_are_the_ones_the_circuit_gives() -> None:
    """values.toml carries the ADC bands for the PP driver; they must follow from the circuit values."""
    stored = {b["amps"]: b for b in VALUES["pp"]["adc_band"]}
    for b in pp_bands(VALUES):
        assert stored[b["amps"]]["accept"] == b["accept"], b["amps"]
        assert stored[b["amps"]]["interpret"] == b["interpret"], b["amps"]
    open_min = VALUES["pp"]["cable"]["open_min_ohm"]
    top = 2 ** VALUES["adc"]["bits"] - 1
    t = VALUES["pp"]["resistor_tolerance"]
    want_open = math.floor(open_min / (open_min + VALUES["pp"]["pullup_ohm"] * (1 + t)) * top) \
        - VALUES["pp"]["adc_error_lsb"]
    assert VALUES["pp"]["adc_open_min"] == want_open


def test_pp_bands_are_separate_and_inside_the_standards_ranges() -> None:
    bands = pp_bands(VALUES)
    for b in bands:
        assert b["interpret"][0] < b["accept"][0] <= b["accept"][1] < b["interpret"][1], b
    for below, above in zip(bands, bands[1:], strict=False):
        assert below["accept"][1] < above["accept"][0]
    assert bands[-1]["accept"][1] < VALUES["pp"]["adc_open_min"]


def test_pp_every_cable_coding_reads_inside_its_band_in_simulation(
        samples: list[sim.Sample], dc: Mapping[str, Mapping[str, float]]) -> None:
    bands = {b["amps"]: b["accept"] for b in pp_bands(VALUES)}
    top = 2 ** VALUES["adc"]["bits"] - 1
    err = VALUES["pp"]["adc_error_lsb"]
    for s in samples:
        for k, (amps, _) in enumerate(PP_CASES):
            counts = round(dc[s.name][f"pp{k}"] / s.p["vref"] * top)
            lo, hi = counts - err, counts + err
            if amps is None:
                assert lo >= VALUES["pp"]["adc_open_min"], s.name
            else:
                assert bands[amps][0] <= lo and hi <= bands[amps][1], (s.name, amps, counts)


# --------------------------------------------------------------------------------------------- transient

TRAN_CASES = [("B", 0.05), ("B", 0.96), ("C", 0.05), ("C", 0.5333), ("C", 0.96), ("D", 0.05), ("D", 0.96),
              ("Bnd", 0.1)]
PERIOD = 1e-3
WINDOW = (1.25e-3, 2.25e-3)  # the second full period (PWM starts at 0.25 ms)


def crossing(t: list[float], x: list[float], level: float, start: float, rising: bool) -> float:
    for i in range(1, len(t)):
        if t[i] <= start:
            continue
        a, b = x[i - 1], x[i]
        if (a < level <= b) if rising else (a > level >= b):
            return t[i - 1] + (level - a) * (t[i] - t[i - 1]) / (b - a)
    raise AssertionError(f"no {'rising' if rising else 'falling'} crossing of {level} after {start}")


@pytest.fixture(scope="module")
def tran(samples: list[sim.Sample], dc: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """One transient per corner sample with every case of TRAN_CASES; holds start at their settled value."""
    cv = VALUES["vehicle"]["capacitance_f"]
    out: dict[str, Any] = {}
    for s in samples[:3]:  # nominal, corner-low, corner-high
        body, vectors = [], []
        for st, duty in TRAN_CASES:
            tag = f"{st}_{round(duty * 1000)}"
            body.append(sim.instance(tag, s, st, sim.pwm_source(duty), capacitance=cv))
            r = dc[s.name]
            body.append(f".ic v(x_{tag}.h1)={r[f'{st}_hi_ch0'] - s.p['vos2']:.6g} "
                        f"v(x_{tag}.h2)={r[f'{st}_lo_ch1'] - s.p['vos3']:.6g}")
            vectors += [f"v({n}_{tag})" for n in ("gout", "cp", "ch0", "ch1")]
        out[s.name] = sim.run(sim.netlist(VALUES, body, ".tran 1u 2.5m", f"transient {s.name}"), " ".join(vectors))
    return out


def test_pulse_width_at_generator_and_cp_within_5_us(tran: Mapping[str, Any]) -> None:
    """Pulse width tolerance ± 5 µs (= ± 0.5 % duty at 1 kHz), measured at half the swing."""
    tol = VALUES["standard"]["pulse_width_tolerance_s"]
    for name, d in tran.items():
        t = d["time"]
        for st, duty in TRAN_CASES:
            tag = f"{st}_{round(duty * 1000)}".lower()
            for node in ("gout", "cp"):
                x = d[f"v({node}_{tag})"]
                window = [x[i] for i in range(len(t)) if WINDOW[0] <= t[i] <= WINDOW[1]]
                mid = (max(window) + min(window)) / 2
                up = crossing(t, x, mid, WINDOW[0], rising=True)
                down = crossing(t, x, mid, up, rising=False)
                assert abs((down - up) - duty * PERIOD) <= tol, (name, tag, node, down - up)


def test_hold_readings_classify_every_state_with_margin(tran: Mapping[str, Any], samples: list[sim.Sample]) -> None:
    """The MCP3008 samples the holds at any moment: the whole window between droop and recharge must
    classify correctly (CH0) and pass / fail the diode check (CH1)."""
    d = driver_defaults()
    checks = VALUES["checks"]
    for s in samples[:3]:
        data = tran[s.name]
        t = data["time"]
        for st, duty in TRAN_CASES:
            tag = f"{st}_{round(duty * 1000)}".lower()
            sel = [i for i in range(len(t)) if WINDOW[0] <= t[i] <= WINDOW[1]]
            ch0 = [data[f"v(ch0_{tag})"][i] for i in sel]
            ch1 = [data[f"v(ch1_{tag})"][i] for i in sel]
            lo_v = readings(min(ch0), s.p["vref"], d["scale"], d["offset"])[0]
            hi_v = readings(max(ch0), s.p["vref"], d["scale"], d["offset"])[1]
            assert classification_problems(lo_v, hi_v, EXPECTED_HIGH[st], d["hysteresis"],
                                           checks["classify_margin_v"]) is None, (s.name, tag, lo_v, hi_v)
            neg_lo = readings(min(ch1), s.p["vref"], d["neg_scale"], d["neg_offset"])[0]
            neg_hi = readings(max(ch1), s.p["vref"], d["neg_scale"], d["neg_offset"])[1]
            if st == "Bnd":
                assert neg_lo >= d["diode"] + checks["diode_margin_v"], (s.name, tag, neg_lo)
            else:
                assert neg_hi <= d["diode"] - checks["diode_margin_v"], (s.name, tag, neg_hi)


def test_rise_and_fall_time_of_the_generator_at_most_2_us() -> None:
    """10 % -> 90 % of the swing at the generator output, loaded by R_s, the vehicle and its capacitance;
    fine time step. The CP pin's own edge (1 kΩ into the cable and vehicle capacitance) is reported in
    pilot-circuit.md, not asserted: its limit could not be checked against the standard's text."""
    std = VALUES["standard"]
    s = sim.nominal(VALUES)
    body = [sim.instance("c", s, "C", sim.pwm_source(0.5333), capacitance=VALUES["vehicle"]["capacitance_f"]),
            sim.instance("b", s, "B", sim.pwm_source(0.1), capacitance=VALUES["vehicle"]["capacitance_f"])]
    d = sim.run(sim.netlist(VALUES, body, ".tran 50n 1.5m 0.2m", "edges", settled_holds=True),
                "v(gout_c) v(gout_b)")
    t = d["time"]
    for tag in ("c", "b"):
        x = d[f"v(gout_{tag})"]
        hi, lo = max(x), min(x)
        l10, l90 = lo + 0.1 * (hi - lo), lo + 0.9 * (hi - lo)
        rise = crossing(t, x, l90, 0.25e-3, True) - crossing(t, x, l10, 0.25e-3, True)
        start = crossing(t, x, l90, 0.25e-3, True)
        fall = crossing(t, x, l10, start, False) - crossing(t, x, l90, start, False)
        assert 0 < rise <= std["rise_time_max_s"], (tag, rise)
        assert 0 < fall <= std["fall_time_max_s"], (tag, fall)


def test_ev_leaving_c_is_read_as_b_within_a_few_milliseconds() -> None:
    """IEC 61851-1: the contactor opens within 100 ms of the EV leaving C. The hold must follow the step
    C -> B (here at 5 % duty, the shortest pulses) well inside what the driver's debounce leaves."""
    s = sim.nominal(VALUES)
    p = s.p
    vf_is = sim.diode_is(p["vf"])
    step = 0.5e-3
    r3 = 1.0 / (1.0 / p["rc"] - 1.0 / p["r2"])
    body = [sim.instance("s", s, "A", sim.pwm_source(0.05)),
            f"Dv_s cp_s dv_s dvs\nR2_s dv_s 0 {p['r2']:.6g}\nR3_s dv_s r3_s {r3:.6g}\n"
            f"S3_s r3_s 0 ctl_s 0 sw\nVctl ctl_s 0 PWL(0 1 {step:g} 1 {step + 1e-6:g} 0)\n"
            f".model sw SW(RON=0.01 ROFF=1e12 VT=0.5)\n.model dvs D(IS={vf_is:.6g} N={sim.DIODE_N:g})",
            ".ic v(x_s.h1)=2.247 v(x_s.h2)=0.0167"]
    d = sim.run(sim.netlist(VALUES, body, ".tran 1u 8m", "C to B step"), "v(ch0_s)")
    t, x = d["time"], d["v(ch0_s)"]
    drv = driver_defaults()
    b_enter = band(CpState.B)[0] + drv["hysteresis"]  # to leave C the reading must pass C's widened band
    vref = VALUES["reference"]["v"]
    threshold_v = (b_enter - drv["offset"]) / drv["scale"] * vref
    reached = crossing(t, x, threshold_v, step, rising=True)
    debounce = 40e-3  # hal/pilot_pwm.py default: the rest of the 100 ms is the controller's
    assert reached - step < (100e-3 - debounce) / 10, reached - step
    overshoot = max(x[i] for i in range(len(t)) if t[i] > step)
    hi_v = readings(overshoot, vref, drv["scale"], drv["offset"])[1]
    assert classification_problems(hi_v, hi_v, CpState.B, drv["hysteresis"],
                                   VALUES["checks"]["classify_margin_v"]) is None, hi_v


# --------------------------------------------------------------------------------------------- documents

def test_committed_netlist_and_schematic_are_generated_from_values() -> None:
    from tests.pilot_schematic import schematic_svg

    assert sim.NETLIST_FILE.read_text() == sim.nominal_netlist(VALUES), "run python -m tests.pilot_sim --write"
    assert sim.SCHEMATIC_FILE.read_text() == schematic_svg(VALUES), "run python -m tests.pilot_sim --write"


def test_committed_netlist_runs_in_ngspice() -> None:
    text = sim.NETLIST_FILE.read_text()
    text = re.sub(r"\.control.*?\.endc\n", "", text, flags=re.S)
    data = sim.run(text, "v(cp_c)")
    assert max(data["v(cp_c)"]) == pytest.approx(VALUES["standard"]["state_v"]["C"], abs=1.0)


def svg_texts(path: Path) -> str:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return " ".join("".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text"))


@pytest.mark.parametrize("name", ["pilot-board.svg", "wiring.svg"])
def test_drawings_render(tmp_path: Path, name: str) -> None:
    exe = shutil.which("rsvg-convert")
    if exe is None:
        pytest.skip("rsvg-convert not installed (apt-get install -y librsvg2-bin)")
    out = tmp_path / "out.png"
    subprocess.run([exe, str(DOCS / name), "-o", str(out)], check=True, timeout=60)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 50_000


def test_schematic_shows_every_value_of_values_toml() -> None:
    from tests.pilot_schematic import labelled_values

    text = svg_texts(DOCS / "pilot-board.svg")
    for label in labelled_values(VALUES):
        assert label in text, label


def test_wiring_shows_the_interlock_supplies_pe_tie_and_fuses() -> None:
    text = svg_texts(DOCS / "wiring.svg")
    for item in ("interposing relay K1", "230 V", "K2", "RCM", "in series", "±15 V", "isolated DC-DC",
                 "PE–GND", "one point", "fuse", "pilot-board.svg"):
        assert item in text, item
    assert "Protection does not depend on software: the RCD trips on its own; the controller opens" not in text
