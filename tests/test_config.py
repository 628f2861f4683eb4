"""Configuration file: every error names the key, the value and what is allowed; check-config CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chargepoint.config import ConfigError, load_config, parse_config
from chargepoint.keys import ConfigurationKeys

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "chargepoint.example.toml"

GOOD = """
[chargepoint]
id = "CP-1"
[csms]
url = "wss://csms.example.com/ocpp"
[[connectors]]
id = 1
pilot = { driver = "sim" }
contactor = { driver = "sim" }
meter = { driver = "sim" }
"""


def test_minimal_config() -> None:
    import tomllib

    cfg = parse_config(tomllib.loads(GOOD))
    assert cfg.charge_point_id == "CP-1" and cfg.connectors[0].min_current_a == 6.0
    assert cfg.free_vend_id_tag is None  # free vend is off unless configured
    on = parse_config(tomllib.loads(GOOD.replace('id = "CP-1"', 'id = "CP-1"\nfree_vend_id_tag = "FREEVEND"', 1)))
    assert on.free_vend_id_tag == "FREEVEND"


def test_example_config_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.connectors and cfg.csms.url.startswith(("ws://", "wss://"))


@pytest.mark.parametrize(
    ("change", "key", "hint"),
    [
        (('url = "wss://csms.example.com/ocpp"', 'url = "http://x"'), "csms.url", "ws:// or wss://"),
        (('id = "CP-1"', 'id = "CP 1/x"'), "chargepoint.id", "no '/'"),
        (
            ('pilot = { driver = "sim" }', 'pilot = { driver = "laser" }'),
            "connectors[0].pilot.driver",
            "one of",
        ),
        (('meter = { driver = "sim" }', ""), "connectors[0].meter", "required"),
        (("id = 1\n", "id = 1\nmax_current_a = 100\n"), "connectors[0].max_current_a", "from 6"),
        (
            ("id = 1\n", "id = 1\nmin_current_a = 20\nmax_current_a = 16\n"),
            "connectors[0].min_current_a",
            "at most",
        ),
        (("[csms]", '[ocpp]\nHeartbeatInterval = "often"\n[csms]'), "ocpp.HeartbeatInterval", "whole number"),
        (("[csms]", "[ocpp]\nNoSuchKey = 1\n[csms]"), "ocpp.NoSuchKey", "not an OCPP"),
        (("[csms]", "[bogus]\n[csms]"), "bogus", "unknown section"),
        (('id = "CP-1"', 'id = "CP-1"\nfree_vend_id_tag = "x23456789012345678901"'),
         "chargepoint.free_vend_id_tag", "CiString20"),
        (('id = "CP-1"', 'id = "CP-1"\nfree_vend_id_tag = " FREE"'), "chargepoint.free_vend_id_tag", "spaces"),
    ],
)
def test_errors_name_key_and_fix(change: tuple[str, str], key: str, hint: str) -> None:
    import tomllib

    text = GOOD.replace(*change, 1)
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text))
    assert any(p.key == key for p in err.value.problems), str(err.value)
    assert hint in str(err.value)


def test_all_problems_reported_together() -> None:
    import tomllib

    text = GOOD.replace('"CP-1"', '""').replace("wss://csms.example.com/ocpp", "ftp://x")
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text))
    assert {p.key for p in err.value.problems} >= {"chargepoint.id", "csms.url"}


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    out = subprocess.run(
        [sys.executable, "-m", "chargepoint", "check-config", str(good)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0 and "OK" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("wss://", "https://"))
    out = subprocess.run(
        [sys.executable, "-m", "chargepoint", "check-config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "csms.url" in out.stderr and "Traceback" not in out.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[chargepoint\nid=")
    out = subprocess.run(
        [sys.executable, "-m", "chargepoint", "check-config", str(broken)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "valid TOML" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "chargepoint", "check-config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_keys_types_and_answers() -> None:
    changed: list[tuple[str, str]] = []
    keys = ConfigurationKeys(number_of_connectors=2, on_change=lambda k, v: changed.append((k, v)))
    assert keys["NumberOfConnectors"] == 2
    assert keys.change("LocalPreAuthorize", "TRUE") == "Accepted" and keys["LocalPreAuthorize"] is True
    assert keys.change("LocalPreAuthorize", "yes") == "Rejected"
    assert keys.change("MeterValueSampleInterval", "-1") == "Rejected"
    assert keys.change("SupportedFeatureProfiles", "Core") == "Rejected"
    assert keys.change("AuthorizationKey", "short") == "Rejected"
    assert keys.change("AuthorizationKey", "0123456789abcdef0123") == "Accepted"
    known, unknown = keys.get_configuration(["AuthorizationKey"])
    assert known == [] and unknown == ["AuthorizationKey"]
    assert changed == [("LocalPreAuthorize", "true"), ("AuthorizationKey", "0123456789abcdef0123")]
    too_many = ",".join(["Voltage"] * 7)
    assert keys.change("MeterValuesSampledData", too_many) == "Rejected"


def test_security_profile_may_only_be_raised() -> None:
    keys = ConfigurationKeys(number_of_connectors=1, initial={"SecurityProfile": 1})
    assert keys.change("SecurityProfile", "0") == "Rejected"
    assert keys.change("SecurityProfile", "2") == "Accepted"
    assert keys.change("CertificateStoreMaxLength", "50") == "Rejected"  # read-only


def test_check_config_checks_driver_options_without_touching_hardware(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    for change, key in (
        (("relay_pin = 17", "relay_pn = 17"), "connectors[0].contactor.relay_pn"),
        (("mirror_pin = 27", "mirror_pin = 18"), "connectors[0].contactor.mirror_pin"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace(*change))
        out = subprocess.run(
            [sys.executable, "-m", "chargepoint", "check-config", str(bad)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert out.returncode == 2 and key in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "chargepoint", "check-config", "--config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("change", "key", "suggestion"),
    [
        (("[csms]", "[station]\nmax_curent_a = 16\n[csms]"), "station.max_curent_a", "max_current_a"),
        (('id = "CP-1"', 'id = "CP-1"\nstate_dri = "/tmp/x"'), "chargepoint.state_dri", "state_dir"),
        (("[csms]", '[logging]\nlevl = "debug"\n[csms]'), "logging.levl", "level"),
        (("[csms]\n", '[csms]\npasword = "x"\n'), "csms.pasword", "password"),
        (("id = 1\n", "id = 1\nmax_curent_a = 16\n"), "connectors[0].max_curent_a", "max_current_a"),
        (("[csms]", "[statoin]\n[csms]"), "statoin", "station"),
        (("[csms]", "[ocpp]\nheartbeatinterval = 60\n[csms]"), "ocpp.heartbeatinterval", "HeartbeatInterval"),
        (
            ("[csms]", '[station.grid]\nlimit = 35\nmeter = { driver = "sim" }\n[csms]'),
            "station.grid.limit",
            "limit_a",
        ),
    ],
)
def test_every_section_rejects_unknown_keys_with_a_suggestion(
    change: tuple[str, str], key: str, suggestion: str
) -> None:
    import tomllib

    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(GOOD.replace(*change, 1)))
    problem = next((p for p in err.value.problems if p.key == key), None)
    assert problem is not None, str(err.value)
    assert f"did you mean {suggestion!r}" in str(problem)


def test_unknown_key_without_a_near_miss_lists_the_allowed_ones() -> None:
    import tomllib

    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(GOOD.replace("[csms]", "[station]\nzzz = 1\n[csms]")))
    assert "station.zzz = 1: unknown key; allowed: grid, max_current_a, nominal_voltage_v" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("NumberOfConnectors", "5"), ("SupportedFeatureProfiles", '"Core"'), ("GetConfigurationMaxKeys", "5"),
     ("LocalAuthListMaxLength", "20000")],
)
def test_read_only_ocpp_keys_are_refused(key: str, value: str) -> None:
    import tomllib

    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(GOOD.replace("[csms]", f"[ocpp]\n{key} = {value}\n[csms]")))
    assert any(p.key == f"ocpp.{key}" and "read-only" in p.allowed for p in err.value.problems), str(err.value)


def test_read_only_capacity_limits_may_be_lowered() -> None:
    import tomllib

    text = GOOD.replace("[csms]", "[ocpp]\nLocalAuthListMaxLength = 500\nReserveConnectorZeroSupported = false\n[csms]")
    assert parse_config(tomllib.loads(text)).ocpp_keys["LocalAuthListMaxLength"] == 500


def test_no_python_none_in_messages(tmp_path: Path) -> None:
    import tomllib

    text = GOOD.split("[[connectors]]")[0] + "[station.grid]\nlimit_a = 35\n"
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text))
    assert {"connectors", "station.grid.meter"} <= {p.key for p in err.value.problems}
    assert "None" not in str(err.value) and "(missing)" in str(err.value)
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD + '[[readers]]\ndriver = "rdm6300"\n')
    out = subprocess.run([sys.executable, "-m", "chargepoint", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "readers[0].port = (missing)" in out.stderr, out.stderr
    assert "None" not in out.stderr


def test_check_config_reports_every_problem_in_one_run(tmp_path: Path) -> None:
    """A section typo, a read-only OCPP key and two driver-option mistakes: all four at once."""
    text = (
        EXAMPLE.read_text()
        .replace("max_current_a = 32                # the installation", "max_curent_a = 16  # the installation")
        .replace("HeartbeatInterval = 300", "HeartbeatInterval = 300\nNumberOfConnectors = 2")
        .replace("relay_pin = 17", "relay_pn = 17")
        .replace("fault_pin = 5", "fault_pin = 16")  # the green LED pin: the indicator, built later, clashes
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = subprocess.run([sys.executable, "-m", "chargepoint", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    for expected in (
        "station.max_curent_a = 16: unknown key; did you mean 'max_current_a'?",
        "ocpp.NumberOfConnectors = 2: read-only",
        "connectors[0].contactor.relay_pn = 17: unknown option; did you mean 'relay_pin'?",
        "connectors[0].indicator.green_pin = 16: a GPIO not already used (taken by connectors[0].rcm.fault_pin)",
    ):
        assert expected in out.stderr, out.stderr
    assert "4 problem(s)" in out.stderr, out.stderr


def test_the_examples_commented_energy_block_is_valid_when_uncommented() -> None:
    """The [energy] block in the example config is documentation: uncommented, check-config accepts it."""
    import tomllib

    text = EXAMPLE.read_text()
    head, block = text.split("# [energy]\n", 1)
    lines = [ln[2:] if ln.startswith("# ") else "" if ln == "#" else ln for ln in ("# [energy]\n" + block).splitlines()]
    energy = "\n".join(lines).replace('mode = "surplus"', 'mode = "off"')  # surplus also needs [station.grid]
    cfg = parse_config(tomllib.loads(head + energy))
    assert cfg.energy is not None
