"""SecurityProfile decides the transport (OCPP 1.6 security whitepaper ed. 2 §1.3): 1 = ws + Basic,
2 = wss + Basic, 3 = wss + client certificate; above 1 never without TLS. The link's choice is checked here
without a network; the end-to-end raise is in tests/test_e2e_security.py."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chargepoint.config import ConfigError, simulated_config
from chargepoint.protocol.link import OcppLink

PASSWORD = "0123456789abcdef"


def link(url: str, profile: int, client_cert: Any = None) -> OcppLink:
    return OcppLink(
        url=url,
        charge_point_id="CP-1",
        session_factory=lambda ws: None,  # type: ignore[arg-type,return-value]
        on_session=lambda s: None,  # type: ignore[arg-type,return-value]
        on_disconnect=lambda: None,
        password=PASSWORD,
        client_cert=lambda: client_cert,
        security_profile=lambda: profile,
    )


def basic() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"CP-1:{PASSWORD}".encode()).decode()}


def client_files(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CP-1")])
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cp.pem", tmp_path / "cp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_profile_1_is_plain_websocket_with_basic_auth() -> None:
    lk = link("ws://csms.example:8080/ocpp", 1)
    assert lk.url == "ws://csms.example:8080/ocpp/CP-1"
    assert lk._ssl() is None
    assert lk._headers() == basic()


@pytest.mark.parametrize("profile", [2, 3])
def test_profile_2_and_3_never_connect_without_tls(profile: int, tmp_path: Path) -> None:
    """A ws:// URL under profile 2 or 3 is connected as its wss:// form: same host, port and path."""
    lk = link("ws://csms.example:8080/ocpp", profile, client_cert=client_files(tmp_path))
    assert lk.url == "wss://csms.example:8080/ocpp/CP-1"
    context = lk._ssl()
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    # profile 2 authenticates with the Basic password (now inside TLS), profile 3 with its certificate only
    assert lk._headers() == (basic() if profile == 2 else {})


def test_a_wss_url_stays_tls_under_every_profile() -> None:
    for profile in (0, 1, 2):
        lk = link("wss://csms.example/ocpp", profile)
        assert lk.url == "wss://csms.example/ocpp/CP-1" and lk._ssl() is not None


def test_profile_3_without_a_client_certificate_does_not_connect() -> None:
    """Connecting with TLS but no client certificate would be profile 2: a fallback the whitepaper forbids."""
    lk = link("wss://csms.example/ocpp", 3, client_cert=None)
    with pytest.raises(ConnectionError, match="client certificate"):
        lk._ssl()


def test_the_profile_is_read_at_every_connect() -> None:
    profile = [1]
    lk = link("ws://csms.example/ocpp", 1)
    lk._security_profile = lambda: profile[0]
    assert lk.url.startswith("ws://")
    profile[0] = 2
    assert lk.url.startswith("wss://") and lk._ssl() is not None


@pytest.mark.parametrize("profile", [2, 3, "2"])
def test_check_config_refuses_a_tls_profile_with_a_ws_url(profile: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        simulated_config(charge_point_id="CP-1", csms_url="ws://csms.example/ocpp", state_dir=tmp_path,
                         ocpp_keys={"SecurityProfile": profile})
    [problem] = err.value.problems
    assert problem.key == "csms.url" and "wss://" in problem.allowed and "SecurityProfile" in problem.allowed


@pytest.mark.parametrize(("url", "profile"), [("ws://csms.example/ocpp", 1), ("wss://csms.example/ocpp", 2),
                                              ("wss://csms.example/ocpp", 3)])
def test_check_config_accepts_matching_transports(url: str, profile: int, tmp_path: Path) -> None:
    cfg = simulated_config(charge_point_id="CP-1", csms_url=url, state_dir=tmp_path,
                           ocpp_keys={"SecurityProfile": profile})
    assert cfg.csms.url == url
