"""The drivers' defaults and thresholds agree with the reference board (hardware-docs/pilot/values.toml).

Issue 12: "the values in the netlist, the schematic and hal/pilot_pwm.py's thresholds come from one place (or a
test proves they agree)". The netlist and the schematic are generated from values.toml (tests/pilot_sim.py,
checked by tests/test_pilot_circuit.py); the drivers in hal/ keep their own defaults so that they do not read a
documentation file at run time, and this test proves those defaults are values.toml's: the PP circuit and
bands (hal/pp.py), the pilot thresholds and calibration channels (hal/pilot_pwm.py), the NTC (hal/temperature.py)
and the example configuration's channels (deploy/chargepoint.example.toml).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hal.interfaces import CableState, CpState
from hal.pilot_pwm import BANDS, PwmPilot
from hal.pp import OPEN_MIN_OHM, RC_CODES, RC_TOLERANCE, REFERENCE_CIRCUIT, bands, classify
from hal.registry import BuildContext, build
from hal.temperature import REFERENCE_NTC, NtcCircuit

ROOT = Path(__file__).resolve().parents[1]
VALUES: dict[str, Any] = tomllib.loads((ROOT / "hardware-docs/pilot/values.toml").read_text(encoding="utf-8"))
EXAMPLE: dict[str, Any] = tomllib.loads((ROOT / "deploy/chargepoint.example.toml").read_text(encoding="utf-8"))
TOP = 2 ** VALUES["adc"]["bits"] - 1


# ------------------------------------------------------------------------------------------------ PP

def test_pp_circuit_defaults_are_the_reference_boards() -> None:
    pp = VALUES["pp"]
    for f in dataclasses.fields(REFERENCE_CIRCUIT):
        if f.name in pp:
            assert getattr(REFERENCE_CIRCUIT, f.name) == pytest.approx(pp[f.name]), f.name
    assert REFERENCE_CIRCUIT.divider_ohm is None and "divider_ohm" not in pp
    assert REFERENCE_CIRCUIT.adc_error_lsb == VALUES["adc"]["error_lsb"]
    assert REFERENCE_CIRCUIT.vref_v == VALUES["reference"]["v"]


def test_pp_cable_codes_are_the_reference_boards() -> None:
    assert sorted(RC_CODES) == sorted((float(c["amps"]), c["rc_ohm"]) for c in VALUES["pp"]["coding"])
    assert RC_TOLERANCE == VALUES["pp"]["cable"]["rc_tolerance"]
    assert OPEN_MIN_OHM == VALUES["pp"]["cable"]["open_min_ohm"]


def test_pp_driver_bands_are_values_toml_adc_bands() -> None:
    """hal.pp.bands() (what the driver accepts) == [[pp.adc_band]] accept, and its open band starts at
    adc_open_min: the driver, the docs and the ngspice check (test_pilot_circuit.py) use one set of bands."""
    table = bands(REFERENCE_CIRCUIT)
    stored = {float(b["amps"]): b["accept"] for b in VALUES["pp"]["adc_band"]}
    assert {b.amps: [b.lo, b.hi] for b in table if b.amps is not None} == stored
    [open_band] = [b for b in table if b.amps is None]
    assert (open_band.lo, open_band.hi) == (VALUES["pp"]["adc_open_min"], TOP)


def test_pp_bands_are_narrow_with_invalid_gaps_inside_the_standards_ranges() -> None:
    """The decision (hal/pp.py, hardware-docs/pilot-circuit.md "PP bands"): a code is accepted only where Rc ± 3 %
    can read over every tolerance of this board; every count between two codes, below 63 A and between 13 A
    and open is an invalid cable, although the standard's contiguous interpretation range would map it."""
    table = bands(REFERENCE_CIRCUIT)
    interpret = {float(b["amps"]): b["interpret"] for b in VALUES["pp"]["adc_band"]}
    rated = [b for b in table if b.amps is not None]
    for b in rated:
        lo, hi = interpret[b.amps]
        assert lo < b.lo <= b.hi < hi, b  # narrower than the standard's range, inside it
    gaps = [range(0, rated[0].lo)] + [range(a.hi + 1, b.lo) for a, b in itertools.pairwise(table)]
    for gap in gaps:
        assert len(gap) > 0
        for counts in gap:
            assert classify(counts, table).state == CableState.INVALID, counts
    # worked example: 1.2 kΩ is "13 A" in the contiguous reading (1000-2200 Ω) and an invalid cable here
    assert classify(REFERENCE_CIRCUIT.counts(1200.0), table).state == CableState.INVALID


@pytest.mark.parametrize(("amps", "rc"), RC_CODES)
def test_pp_every_code_at_its_resistor_tolerance_reads_as_its_rating(amps: float, rc: float) -> None:
    """Computed (the ngspice twin is test_pilot_circuit.py): Rc ± 3 % with the pull-up at ± its tolerance and
    the ADC at ± its error reads as the code, never as a neighbour."""
    table = bands(REFERENCE_CIRCUIT)
    t, lsb = REFERENCE_CIRCUIT.resistor_tolerance, REFERENCE_CIRCUIT.adc_error_lsb
    for f_rc, f_pu, err in itertools.product((1 - RC_TOLERANCE, 1 + RC_TOLERANCE), (1 - t, 1 + t), (-lsb, lsb)):
        counts = round(REFERENCE_CIRCUIT.fraction(rc * f_rc, pullup=REFERENCE_CIRCUIT.pullup_ohm * f_pu) * TOP) + err
        r = classify(counts, table)
        assert (r.state, r.amps) == (CableState.RATED, amps), (f_rc, f_pu, err, counts)


# ------------------------------------------------------------------------------------------------ pilot

def test_pilot_thresholds_are_the_midpoints_of_the_standards_levels() -> None:
    """hal/pilot_pwm.py BANDS: A/B, B/C, C/D, D/E at the midpoints of values.toml [standard] state_v (IEC 61851-1
    Annex A), E/F halfway between 0 V and -12 V. test_pilot_circuit.py classifies the simulated readings with
    these same thresholds."""
    v = VALUES["standard"]["state_v"]
    edges = {s: lo for s, lo, _ in BANDS}
    for upper, lower in (("A", "B"), ("B", "C"), ("C", "D"), ("D", "E"), ("E", "F")):
        assert edges[CpState(upper)] == pytest.approx((v[upper] + v[lower]) / 2), upper
    assert edges[CpState.F] == -math.inf


def test_pilot_driver_defaults_are_the_reference_boards_channels_and_calibration() -> None:
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": "/nonexistent"}, "p", 1, BuildContext())
    assert isinstance(pilot, PwmPilot)
    assert pilot.channel == VALUES["adc"]["cp_channel"]
    # volts = fraction * scale + offset: the divider maps -12..+12 V onto 0..VREF (values.toml [measurement])
    assert (pilot.offset, pilot.offset + pilot.scale) == (-12.0, 12.0)
    assert pilot.pwm.period_ns == round(1e9 / VALUES["standard"]["frequency_hz"])


# ------------------------------------------------------------------------------------------------ NTC

def test_ntc_defaults_are_the_reference_boards() -> None:
    ntc = VALUES["ntc"]
    assert (REFERENCE_NTC.r25_ohm, REFERENCE_NTC.beta, REFERENCE_NTC.series_ohm) == \
        (ntc["r25_ohm"], ntc["beta"], ntc["series_ohm"])
    assert REFERENCE_NTC.ntc_low_side


def test_ntc_worst_case_error_in_the_derate_and_stop_region() -> None:
    """R20, the NTC's R25 and B at their tolerances and the ADC at ± error_lsb: the temperature the driver
    computes with nominal values is within values.toml [ntc] max_error_c from 50 °C to 80 °C."""
    ntc, lsb = VALUES["ntc"], VALUES["adc"]["error_lsb"]
    t, tr, tb = ntc["resistor_tolerance"], ntc["ntc_r25_tolerance"], ntc["ntc_beta_tolerance"]
    worst = 0.0
    for celsius in range(50, 81):
        for a, b, c in itertools.product((1 - tr, 1 + tr), (1 - tb, 1 + tb), (1 - t, 1 + t)):
            real = NtcCircuit(REFERENCE_NTC.r25_ohm * a, REFERENCE_NTC.beta * b, REFERENCE_NTC.series_ohm * c)
            counts = round(real.fraction_at(celsius) * TOP)
            for err in (-lsb, lsb):
                worst = max(worst, abs(REFERENCE_NTC.celsius((counts + err) / TOP) - celsius))
    assert worst <= ntc["max_error_c"], worst


# ------------------------------------------------------------------------------------------------ example

def test_example_configuration_uses_the_reference_boards_channels() -> None:
    [conn] = EXAMPLE["connectors"]
    adc = VALUES["adc"]
    assert conn["pilot"].get("channel", 0) == adc["cp_channel"]
    assert conn["pilot"]["negative_channel"] == adc["cp_negative_channel"]
    assert conn["pp"]["channel"] == adc["pp_channel"]
    temp = conn["temperature"]
    assert temp["channel"] == adc["ntc_channel"]
    assert (temp["r25_ohm"], temp["beta"], temp["series_ohm"]) == \
        (VALUES["ntc"]["r25_ohm"], VALUES["ntc"]["beta"], VALUES["ntc"]["series_ohm"])
