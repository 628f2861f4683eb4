"""The pilot finds its PWM chip and channel by what sysfs reports, on fake sysfs trees of each board.

The trees mirror what the kernel shows: /sys/class/pwm/pwmchipN is a directory with ``npwm`` and a
``device`` link to the controller's platform device. The pwmchip numbers are deliberately not the
"usual" ones: the driver must not depend on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from hal.interfaces import HardwareConfigError
from hal.pilot_pwm import find_gpio18_pwm
from hal.registry import BuildContext, build
from tests.fakes.mcp3008 import FakeMCP3008
from tests.test_hal_pilot_pwm import adc, export_channel, factory  # noqa: F401  (fixtures)

PI5_DEVICES = "devices/platform/axi/1000120000.pcie"
# board -> [(pwmchip number, device path under the fake /sys, npwm)]; the first entry of a Pi 5 is the
# RP1's second PWM (the fan), which must not be taken for the pilot's.
BOARDS: dict[str, list[tuple[int, str, int]]] = {
    "pi5": [(0, f"{PI5_DEVICES}/1f0009c000.pwm", 4), (2, f"{PI5_DEVICES}/1f00098000.pwm", 4)],
    "pi4": [(1, "devices/platform/soc/fe20c000.pwm", 2)],
    "pi3": [(0, "devices/platform/soc/3f20c000.pwm", 2)],
    "zero2w": [(3, "devices/platform/soc/3f20c000.pwm", 2)],
}
EXPECTED = {"pi5": (2, 2), "pi4": (1, 0), "pi3": (0, 0), "zero2w": (3, 0)}


def fake_sys(base: Path, chips: list[tuple[int, str, int]]) -> Path:
    """A fake /sys with the given pwmchips; returns its class/pwm directory."""
    pwm_class = base / "sys" / "class" / "pwm"
    pwm_class.mkdir(parents=True)
    for number, device, npwm in chips:
        dev = base / "sys" / device
        dev.mkdir(parents=True)
        chip = dev / "pwm" / f"pwmchip{number}"
        chip.mkdir(parents=True)
        (chip / "npwm").write_text(f"{npwm}\n")
        (chip / "export").write_text("")
        (chip / "device").symlink_to(dev)
        (pwm_class / f"pwmchip{number}").symlink_to(chip)
    return pwm_class


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_gpio18_pwm_is_found_by_its_controller(tmp_path: Path, board: str) -> None:
    root = fake_sys(tmp_path, BOARDS[board])
    chip, channel, _what = find_gpio18_pwm(root)
    assert (chip, channel) == EXPECTED[board]


@pytest.mark.parametrize("board", sorted(BOARDS))
async def test_pilot_drives_the_board_s_gpio18_channel(tmp_path: Path, factory: MockFactory,  # noqa: F811
                                                       adc: FakeMCP3008, board: str) -> None:  # noqa: F811
    root = fake_sys(tmp_path, BOARDS[board])
    chip, channel = EXPECTED[board]
    for number, _device, _npwm in BOARDS[board]:  # channels 0 and 1 exported everywhere: only one is the pilot
        export_channel(root / f"pwmchip{number}", 0)
        export_channel(root / f"pwmchip{number}", 1)
    if channel > 1:
        export_channel(root / f"pwmchip{chip}", channel)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(root)}, "p", 1, BuildContext(gpio_pin_factory=factory))
    await pilot.start(lambda e: None)
    try:
        await pilot.offer(16)
        used = root / f"pwmchip{chip}" / f"pwm{channel}"
        assert (used / "enable").read_text().strip() == "1"
        assert (used / "period").read_text().strip() == "1000000"
        assert (used / "duty_cycle").read_text().strip() == "266600"  # 26.66 %, rounded down (hal/pilot_duty.py)
        others = [p for p in root.glob("pwmchip*/pwm*") if p.resolve() != used.resolve()]
        assert others and all((p / "enable").read_text().strip() == "0" for p in others)
    finally:
        await pilot.stop()


def test_unknown_controller_is_an_error_not_a_guess(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, [(0, "devices/platform/soc/12345000.pwm", 2)])
    with pytest.raises(OSError, match=r"pwm_chip and pwm_channel.*|pwmchip0 -> 12345000.pwm"):
        find_gpio18_pwm(root)


def test_no_pwm_chip_explains_the_overlay(tmp_path: Path) -> None:
    root = tmp_path / "sys" / "class" / "pwm"
    root.mkdir(parents=True)
    with pytest.raises(OSError, match="dtoverlay=pwm"):
        find_gpio18_pwm(root)


async def test_configured_chip_and_channel_override_detection(tmp_path: Path, factory: MockFactory,  # noqa: F811
                                                              adc: FakeMCP3008) -> None:  # noqa: F811
    root = fake_sys(tmp_path, BOARDS["pi5"] + [(5, "devices/platform/soc/12345000.pwm", 2)])
    export_channel(root / "pwmchip5", 1)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(root), "pwm_chip": 5, "pwm_channel": 1}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    await pilot.start(lambda e: None)
    try:
        assert (root / "pwmchip5" / "pwm1" / "enable").read_text().strip() == "1"
    finally:
        await pilot.stop()
    # chip given, channel "auto": the channel that is GPIO18 on that controller
    assert find_gpio18_pwm(root, chip=2)[:2] == (2, 2)


async def test_channel_beyond_npwm_is_refused(tmp_path: Path, factory: MockFactory) -> None:  # noqa: F811
    root = fake_sys(tmp_path, BOARDS["pi4"])
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(root), "pwm_chip": 1, "pwm_channel": 3}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    with pytest.raises(OSError, match="2 channels"):
        await pilot.start(lambda e: None)


def test_pwm_options_take_auto_or_a_number(factory: MockFactory) -> None:  # noqa: F811
    ctx = BuildContext(gpio_pin_factory=factory)
    for options, key in (({"pwm_chip": "two"}, "p.pwm_chip"), ({"pwm_channel": 4}, "p.pwm_channel")):
        with pytest.raises(HardwareConfigError) as exc:
            build("pilot", {"driver": "pwm", **options}, "p", 1, ctx)
        assert exc.value.key == key


def test_commissioning_hint_names_the_pwm_chip_found_not_pwm_none(tmp_path: Path) -> None:
    """pwm_chip = "auto" before the pilot started: the hint says what sysfs reports (or why nothing matches),
    never "pwmNone"; after open() it names the chip and channel in use."""
    from chargepoint.commissioning import _pilot_hints

    def hint(root: Path) -> str:
        pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(root)}, "p", 1, BuildContext())
        [line] = [h for h in _pilot_hints(pilot) if h.startswith("pilot driver pwm")]
        assert "None" not in line
        return line

    pi5 = fake_sys(tmp_path / "pi5", BOARDS["pi5"])
    assert 'pwm_chip = "auto": pwmchip2/pwm2 would be used, Raspberry Pi 5, RP1 PWM0' in hint(pi5)
    empty = tmp_path / "none" / "sys" / "class" / "pwm"
    empty.mkdir(parents=True)
    assert 'pwm_chip = "auto": not yet found (no PWM chip in' in hint(empty)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(pi5)}, "p", 1, BuildContext())
    export_channel(pi5 / "pwmchip2", 2)
    pilot.pwm.open()
    [line] = [h for h in _pilot_hints(pilot) if h.startswith("pilot driver pwm")]
    assert "(pwmchip2/pwm2, Raspberry Pi 5, RP1 PWM0" in line
