"""README and hardware-docs agree with each other and with the command line they describe."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from chargepoint.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMISSIONING = (ROOT / "hardware-docs" / "commissioning.md").read_text()

#: Install → reboot (boot config takes effect) → edit → check-config → stop → check-hardware → start → status.
INSTALL_SEQUENCE = (
    "sudo deploy/install.sh",
    "sudo reboot",
    "sudoedit /etc/chargepoint/chargepoint.toml",
    "sudo chargepoint check-config /etc/chargepoint/chargepoint.toml",
    "sudo systemctl stop chargepoint",
    "sudo -u chargepoint /opt/chargepoint/venv/bin/chargepoint check-hardware --config /etc/chargepoint/chargepoint.toml",
    "sudo systemctl enable --now chargepoint",
    "chargepoint status",
)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end != -1 else None]


@pytest.mark.parametrize(
    ("name", "text"),
    [("README", _section(README, "## Running on a Raspberry Pi")), ("commissioning.md", COMMISSIONING)],
)
def test_one_install_sequence_in_both_documents(name: str, text: str) -> None:
    position = 0
    for step in INSTALL_SEQUENCE:
        found = text.find(step, position)
        assert found != -1, f"{name}: {step!r} missing, or not after the step before it"
        position = found + len(step)


def test_check_hardware_is_never_shown_with_the_service_running() -> None:
    block = _section(README, "## Running on a Raspberry Pi")
    assert block.index("systemctl stop chargepoint") < block.index("check-hardware")
    assert "systemctl restart chargepoint\n" not in block.split("check-hardware", 1)[0]


def test_no_drafting_leftovers() -> None:
    for doc in [ROOT / "README.md", *(ROOT / "hardware-docs").glob("*.md")]:
        assert "meant for the project README" not in doc.read_text(), doc.name


def _subcommands() -> dict[str, object]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(sub.choices)  # type: ignore[attr-defined]


def test_readme_command_table_names_every_command_and_option() -> None:
    table = README[README.index("| command | what it does |"):README.index("### `chargepoint simulate`")]
    for name, parser in _subcommands().items():
        assert f"`chargepoint {name}" in table or f"· `{name}`" in table, name
        if name in ("simulate", "status", "diagnostics", "check-hardware", "check-config", "run"):
            for action in parser._actions:  # type: ignore[attr-defined]
                for option in action.option_strings:
                    if option.startswith("--") and option not in ("--help", "--log-level", "--root"):
                        assert option in table, f"README does not mention {name} {option}"
    assert "`chargepoint --version`" in table


def test_simulate_help_says_what_config_does() -> None:
    out = subprocess.run([sys.executable, "-m", "chargepoint", "simulate", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=30)
    text = " ".join(out.stdout.split())
    for phrase in ("--config CONFIG", "every device simulated", "--status-socket", "never in the file's state_dir"):
        assert phrase in text, phrase


def test_readme_check_config_example_is_what_check_config_prints(tmp_path: Path) -> None:
    example = README[README.index("$ chargepoint check-config bad.toml"):]
    example = example[:example.index("```")]
    expected = [line.strip()[2:] for line in example.splitlines() if line.strip().startswith("- ")]
    good = (ROOT / "deploy" / "chargepoint.example.toml").read_text()
    bad = (
        good.replace('url = "wss://csms.example.com/ocpp"', 'url = "http://csms"')
        .replace("max_current_a = 32                # the installation", "max_curent_a = 16  # the installation")
        .replace('pilot = { driver = "pwm", negative_channel = 1 }', 'pilot = { driver = "laser", negative_channel = 1 }')
        .replace("relay_pin = 17", "relay_pn = 17")
    )
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    out = subprocess.run([sys.executable, "-m", "chargepoint", "check-config", str(path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2
    printed = [line.strip()[2:] for line in out.stderr.splitlines() if line.strip().startswith("- ")]
    assert sorted(printed) == sorted(expected), out.stderr
    assert re.search(rf"{len(expected)} problem\(s\)", out.stderr)
