"""The 1p/3p switching sequence (pure): every step, every timeout, faults in between."""

from __future__ import annotations

import pytest

from chargepoint.energy.phase_switch import (
    Failed,
    Finished,
    PhaseSwitchConfig,
    PhaseSwitchSequence,
    SetRelay,
    Step,
)

CFG = PhaseSwitchConfig(settle_s=5.0, pause_timeout_s=10.0, relay_timeout_s=2.0, verify_s=3.0,
                        verify_timeout_s=60.0)
ZERO = (0.0, 0.0, 0.0)
THREE = (10.0, 10.0, 10.0)
ONE = (10.0, 0.0, 0.0)


def _to_resuming(seq: PhaseSwitchSequence, target: int = 1, t0: float = 0.0) -> float:
    assert seq.request(t0, target, car_phases_before=3)
    assert seq.update(t0 + 1, ZERO, contactor_closed=False) == [SetRelay(target)]
    assert seq.relay_set(t0 + 1.1) == []
    assert seq.update(t0 + 6.2, ZERO, contactor_closed=False) == []
    assert seq.step is Step.RESUMING
    return t0 + 6.2


def test_the_whole_sequence_3_to_1() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    assert seq.claim(0) is None and seq.step is Step.IDLE
    assert seq.request(0.0, 1, car_phases_before=3)
    # PAUSING: the offer is withdrawn (claim None) while the car still draws
    c = seq.claim(0.5)
    assert c is not None and c.amps is None and c.source == "phase-switch" and "0 A" in c.detail
    assert seq.update(0.5, THREE, contactor_closed=True) == []
    assert seq.update(2.0, ZERO, contactor_closed=True) == []  # current 0 but contactor still closed: wait
    assert seq.step is Step.PAUSING
    assert seq.update(3.0, ZERO, contactor_closed=False) == [SetRelay(1)]
    assert seq.step is Step.SWITCHING and seq.claim(3.0).amps is None  # type: ignore[union-attr]
    seq.relay_set(3.1)
    assert seq.step is Step.SETTLING and seq.phases == 1
    assert seq.update(7.0, ZERO, contactor_closed=False) == []  # 3.9 s < 5 s
    assert seq.step is Step.SETTLING and "waiting 5 s" in seq.claim(7.0).detail  # type: ignore[union-attr]
    assert seq.update(8.2, ZERO, contactor_closed=False) == []
    assert seq.step is Step.RESUMING and seq.claim(8.2) is None  # the offer comes back
    assert seq.update(9.0, ONE, contactor_closed=True) == []  # drawing: verify after 3 s
    assert seq.update(12.5, ONE, contactor_closed=True) == [Finished(1, verified=True)]
    assert seq.step is Step.IDLE and seq.phases == 1


def test_the_whole_sequence_1_to_3() -> None:
    seq = PhaseSwitchSequence(CFG, phases=1)
    t = _to_resuming(seq, 3)
    assert seq.update(t + 1, THREE, contactor_closed=True) == []
    assert seq.update(t + 4.5, THREE, contactor_closed=True) == [Finished(3, verified=True)]


def test_no_switch_under_load_pause_timeout_is_a_fault_and_the_relay_stays() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    seq.request(0.0, 1)
    for t in range(1, 10):
        assert seq.update(float(t), THREE, contactor_closed=True) == []  # never SetRelay under load
    (fail,) = seq.update(10.0, THREE, contactor_closed=True)
    assert isinstance(fail, Failed) and "still closed" in fail.detail and "relay not switched" in fail.detail
    assert seq.step is Step.FAULT and seq.phases == 3
    c = seq.claim(11.0)
    assert c is not None and c.amps is None and c.detail.startswith("fault:")


def test_current_still_flowing_with_the_contactor_reported_open_is_a_fault() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    seq.request(0.0, 1)
    assert seq.update(5.0, (3.0, 3.0, 3.0), contactor_closed=False) == []
    (fail,) = seq.update(10.0, (3.0, 3.0, 3.0), contactor_closed=False)
    assert isinstance(fail, Failed) and "still draws 3.0 A" in fail.detail


def test_relay_driver_error_and_relay_timeout_are_faults() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    seq.request(0.0, 1)
    seq.update(1.0, ZERO, contactor_closed=False)
    (fail,) = seq.relay_set(1.1, ok=False, detail="GPIO busy")
    assert isinstance(fail, Failed) and "GPIO busy" in fail.detail and seq.phases == 3
    seq2 = PhaseSwitchSequence(CFG, phases=3)
    seq2.request(0.0, 1)
    seq2.update(1.0, ZERO, contactor_closed=False)
    assert seq2.update(2.5, ZERO, contactor_closed=False) == []
    (fail2,) = seq2.update(3.0, ZERO, contactor_closed=False)
    assert isinstance(fail2, Failed) and "did not report" in fail2.detail


def test_contactor_closing_while_settling_is_a_fault() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    seq.request(0.0, 1)
    seq.update(1.0, ZERO, contactor_closed=False)
    seq.relay_set(1.0)
    (fail,) = seq.update(2.0, ZERO, contactor_closed=True)
    assert isinstance(fail, Failed) and "settling" in fail.detail


def test_meter_still_showing_three_phases_after_switching_to_one_is_a_fault() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    t = _to_resuming(seq, 1)
    seq.update(t + 1, THREE, contactor_closed=True)
    (fail,) = seq.update(t + 4.5, THREE, contactor_closed=True)
    assert isinstance(fail, Failed) and "still shows 3 phases" in fail.detail
    assert seq.step is Step.FAULT and seq.phases == 3


def test_one_phase_after_switching_to_three_is_a_fault_only_for_a_car_known_to_draw_three() -> None:
    seq = PhaseSwitchSequence(CFG, phases=1)
    _to_resuming(seq, 3)  # car_phases_before=3
    seq.update(7.0, ONE, contactor_closed=True)
    (fail,) = seq.update(10.5, ONE, contactor_closed=True)
    assert isinstance(fail, Failed) and "1 phase(s)" in fail.detail and seq.phases == 1
    seq2 = PhaseSwitchSequence(CFG, phases=1)
    seq2.request(0.0, 3, car_phases_before=0)  # a 1-phase car, or unknown
    seq2.update(1.0, ZERO, contactor_closed=False)
    seq2.relay_set(1.0)
    seq2.update(6.5, ZERO, contactor_closed=False)
    seq2.update(7.0, ONE, contactor_closed=True)
    assert seq2.update(10.5, ONE, contactor_closed=True) == [Finished(3, verified=True)]


def test_a_car_that_does_not_draw_again_ends_the_sequence_unverified() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    t = _to_resuming(seq, 1)
    assert seq.update(t + 59, ZERO, contactor_closed=False) == []
    assert seq.update(t + 60, ZERO, contactor_closed=False) == [Finished(1, verified=False)]


def test_a_short_draw_restarts_the_verification_window() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    t = _to_resuming(seq, 1)
    seq.update(t + 1, THREE, contactor_closed=True)
    seq.update(t + 2, ZERO, contactor_closed=True)  # dropped out: the 3 s start again
    seq.update(t + 3, ONE, contactor_closed=True)
    assert seq.update(t + 5.9, ONE, contactor_closed=True) == []
    assert seq.update(t + 6.1, ONE, contactor_closed=True) == [Finished(1, verified=True)]


def test_at_rest_the_switch_needs_no_pause() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    seq.request(0.0, 1)
    assert seq.update(0.0, (None, None, None), contactor_closed=False) == [SetRelay(1)]


def test_requests_refused_while_busy_same_phases_or_faulted_then_reset() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    assert not seq.request(0.0, 3)
    assert seq.request(0.0, 1)
    assert not seq.request(0.5, 3) and seq.busy
    seq.update(10.0, THREE, contactor_closed=True)
    assert seq.step is Step.FAULT and not seq.busy
    assert not seq.request(11.0, 1)
    seq.reset()
    assert seq.step is Step.IDLE and seq.request(12.0, 1)
    with pytest.raises(ValueError):
        seq.request(12.0, 2)


def test_relay_set_outside_switching_is_ignored() -> None:
    seq = PhaseSwitchSequence(CFG, phases=3)
    assert seq.relay_set(0.0) == [] and seq.phases == 3
