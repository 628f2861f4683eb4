"""Security extension end to end ("Improved security for OCPP 1.6-J", edition 2): the loopback central system
talks to the whole controller; certificates are made here with ``cryptography``; files move over a real HTTP
server on 127.0.0.1; wss:// uses a real TLS server context."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import ssl
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Station, running_station
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from fakes_firmware import HttpServer, extract_installer, make_wheel

from chargepoint.config import simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem, poll_until
from chargepoint.firmware.update import ReleaseManager
from chargepoint.services.firmware import FirmwareService

NOW = datetime.now(UTC)


class CA:
    """A certificate authority made with ``cryptography`` (EC P-256 unless rsa=True)."""

    def __init__(
        self, name: str, *, rsa_key: bool = False, not_after: datetime | None = None, parent: CA | None = None
    ) -> None:
        self.key: Any = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if rsa_key
            else ec.generate_private_key(ec.SECP256R1())
        )
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name = parent.cert.subject if parent else subject
        signer = parent.key if parent else self.key
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=2))
            .not_valid_after(not_after or NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, public_key: Any, cn: str, *, san_ip: str | None = None) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if san_ip:
            import ipaddress

            b = b.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]), critical=False
            )
        return b.sign(self.key, hashes.SHA256())

    def server_context(self, tmp: Path) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.issue(key.public_key(), "127.0.0.1", san_ip="127.0.0.1")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp / "server.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tmp / "server.pem", tmp / "server.key")
        return ctx


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def expected_hash(cert: x509.Certificate) -> dict[str, str]:
    """Computed independently of the store: issuerKeyHash over the SubjectPublicKey bits (X9.62 point)."""
    point = cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(cert.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(point).hexdigest(),
        "serialNumber": format(cert.serial_number, "x"),
    }


def events(csms: CentralSystem) -> list[str]:
    return [p["type"] for p in csms.received("SecurityEventNotification")]


@pytest.fixture
def http() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


# ------------------------------------------------------------------------------------------ certificates
async def test_install_list_delete_certificates(tmp_path: Path) -> None:
    root = CA("CSMS Root")
    async with running_station(tmp_path) as st:
        await st.csms.wait_for(lambda: "StartupOfTheDevice" in events(st.csms))
        assert (
            await st.call("GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"})
        )["status"] == "NotFound"
        ok = await st.call(
            "InstallCertificate", {"certificateType": "CentralSystemRootCertificate", "certificate": root.pem}
        )
        assert ok == {"status": "Accepted"}
        bad = [
            "not a certificate",
            CA("Old", not_after=NOW - timedelta(days=1)).pem,  # expired
            pem(root.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), "leaf")),  # not a CA
        ]
        for text in bad:
            r = await st.call(
                "InstallCertificate", {"certificateType": "ManufacturerRootCertificate", "certificate": text}
            )
            assert r == {"status": "Rejected"}, text[:40]
        listed = await st.call(
            "GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"}
        )
        assert listed["status"] == "Accepted"
        assert listed["certificateHashData"] == [expected_hash(root.cert)]
        assert (
            await st.call("GetInstalledCertificateIds", {"certificateType": "ManufacturerRootCertificate"})
        )["status"] == "NotFound"
        bundle = st.controller.security.csms_ca_file()
        assert bundle is not None and root.pem in Path(bundle).read_text()
        wrong = dict(expected_hash(root.cert), serialNumber="1234")
        assert (await st.call("DeleteCertificate", {"certificateHashData": wrong}))["status"] == "NotFound"
        # ws:// here: the last root is not in use, so it may go
        gone = await st.call("DeleteCertificate", {"certificateHashData": expected_hash(root.cert)})
        assert gone == {"status": "Accepted"}
        assert (
            await st.call("GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"})
        )["status"] == "NotFound"
        assert st.controller.security.csms_ca_file() is None


async def test_wss_verified_by_installed_root(tmp_path: Path) -> None:
    trusted, untrusted = CA("CSMS Root"), CA("Someone Else")
    state = tmp_path / "state"

    def config(url: str) -> Any:
        return simulated_config(charge_point_id="CP-SEC", csms_url=url, state_dir=state)

    # 1. plain ws:// commissioning: the root is installed
    async with CentralSystem() as cs:
        c = Controller(config(cs.url))
        await c.start()
        try:
            await cs.wait_for(lambda: c.boot_accepted, 10)
            r = await cs.call(
                "CP-SEC",
                "InstallCertificate",
                {"certificateType": "CentralSystemRootCertificate", "certificate": trusted.pem},
            )
            assert r == {"status": "Accepted"}
            # this start's StartupOfTheDevice is delivered and answered before the stop (else, kept for the
            # next start, it would come first there: at-least-once, in order)
            await cs.wait_for(lambda: not c.security.pending_messages(), 10)
        finally:
            await c.stop()
    # 2. a wss:// central system whose certificate the installed root did not issue: refused, event kept
    async with CentralSystem(ssl_context=untrusted.server_context(tmp_path / "bad")) as cs:
        c = Controller(config(cs.url))
        await c.start()
        try:
            await cs.wait_for(
                lambda: any(p["type"] == "InvalidCentralSystemCertificate" for a, p in c.security.pending_messages()), 10
            )
            assert not c.boot_accepted and cs.received("BootNotification") == []
        finally:
            await c.stop()
    # 3. the right server: connects through the installed root; the kept event is delivered
    async with CentralSystem(ssl_context=trusted.server_context(tmp_path / "good")) as cs:
        c = Controller(config(cs.url))
        await c.start()
        try:
            await cs.wait_for(lambda: c.boot_accepted, 10)
            await cs.wait_for(lambda: "InvalidCentralSystemCertificate" in events(cs), 10)
            # in order: the start that failed, its TLS failure, then this start
            await cs.wait_for(lambda: len(events(cs)) >= 3)
            assert events(cs) == [
                "StartupOfTheDevice",
                "InvalidCentralSystemCertificate",
                "StartupOfTheDevice",
            ]
            # the root that verifies this wss:// connection is the last one: it stays
            r = await cs.call(
                "CP-SEC", "DeleteCertificate", {"certificateHashData": expected_hash(trusted.cert)}
            )
            assert r == {"status": "Failed"}
        finally:
            await c.stop()


async def test_sign_certificate_round_trip(tmp_path: Path) -> None:
    root = CA("CSMS Root")
    async with running_station(tmp_path, keys={"CpoName": "ACME Charging"}) as st:
        await st.call(
            "InstallCertificate", {"certificateType": "CentralSystemRootCertificate", "certificate": root.pem}
        )
        r = await st.call("ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"})
        assert r == {"status": "Accepted"}
        req = await st.csms.wait_for_message("SignCertificate")
        csr = x509.load_pem_x509_csr(req["csr"].encode())
        assert csr.is_signature_valid
        assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == st.cp_id
        assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "ACME Charging"
        # a certificate for another key is refused
        stranger = root.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), st.cp_id)
        r = await st.call("CertificateSigned", {"certificateChain": pem(stranger) + root.pem})
        assert r == {"status": "Rejected"}
        await st.csms.wait_for(lambda: "InvalidChargePointCertificate" in events(st.csms))
        # the CSR's key, issued by an intermediate under the installed root
        sub = CA("CSMS Sub CA", parent=root)
        leaf = sub.issue(csr.public_key(), st.cp_id)
        r = await st.call("CertificateSigned", {"certificateChain": pem(leaf) + sub.pem})
        assert r == {"status": "Accepted"}
        stored = st.controller.security.certificate_store().client_certificate()
        assert stored is not None and stored.serial_number == leaf.serial_number
        cert_file, key_file = st.controller.security.certificate_store().client_cert_files()  # type: ignore[misc]
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        # and TLS can load it as a client certificate
        ssl.create_default_context().load_cert_chain(cert_file, key_file)


# ------------------------------------------------------------------------------------------ security events
async def test_security_events_for_key_change_and_reset(tmp_path: Path) -> None:
    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        await st.csms.wait_for(lambda: "StartupOfTheDevice" in events(st.csms))
        r = await st.call("ChangeConfiguration", {"key": "AuthorizationKey", "value": "0123456789abcdef0123"})
        assert r == {"status": "Accepted"}
        await st.csms.wait_for(lambda: "ReconfigurationOfSecurityParameters" in events(st.csms), 10)
        ev = next(
            p
            for p in st.csms.received("SecurityEventNotification")
            if p["type"] == "ReconfigurationOfSecurityParameters"
        )
        assert "AuthorizationKey" in ev["techInfo"] and "0123456789" not in ev["techInfo"]
        await st.csms.wait_for(lambda: st.controller.boot_accepted and st.controller.link.session is not None)
        assert (await st.call("Reset", {"type": "Soft"})) == {"status": "Accepted"}
        await st.csms.wait_for(lambda: restarts == ["Soft"], 10)
        assert "ResetOrReboot" in events(st.csms)
        log_lines = (tmp_path / "state" / "security.log").read_text().splitlines()
        assert [json.loads(x)["type"] for x in log_lines] == [
            "StartupOfTheDevice",
            "ReconfigurationOfSecurityParameters",
            "ResetOrReboot",
        ]


async def test_routine_security_events_are_info_and_the_others_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`journalctl -p warning` after a boot must not show the boot itself: StartupOfTheDevice (every start)
    is INFO; an event to look at, such as a refused client certificate, stays a WARNING."""
    import logging

    caplog.set_level(logging.INFO, logger="chargepoint.services.security")

    def level(kind: str) -> int:
        [record] = [r for r in caplog.records if r.getMessage().startswith(f"security event {kind}")]
        return record.levelno

    async with running_station(tmp_path) as st:
        await st.csms.wait_for(lambda: "StartupOfTheDevice" in events(st.csms))
        assert (await st.call("CertificateSigned", {"certificateChain": "not a certificate"})) == {
            "status": "Rejected"}
        await st.csms.wait_for(lambda: "InvalidChargePointCertificate" in events(st.csms))
    assert level("StartupOfTheDevice") == logging.INFO
    assert level("InvalidChargePointCertificate") == logging.WARNING


# ------------------------------------------------------------------------------------------ ExtendedTriggerMessage
async def test_extended_trigger_message(station: Station) -> None:
    cs = station.csms
    await cs.wait_for(lambda: len(cs.received("StatusNotification")) >= 2)

    async def trigger(msg: str, connector: int | None = None) -> str:
        payload: dict[str, Any] = {"requestedMessage": msg}
        if connector is not None:
            payload["connectorId"] = connector
        return str((await station.call("ExtendedTriggerMessage", payload))["status"])

    before = len(cs.received("StatusNotification"))
    assert await trigger("StatusNotification", 1) == "Accepted"
    sn = await cs.wait_for_message("StatusNotification", count=before + 1)
    assert sn["connectorId"] == 1 and sn["status"] == "Available"
    assert await trigger("MeterValues", 9) == "Rejected"
    assert await trigger("Heartbeat") == "Accepted"
    await cs.wait_for_message("Heartbeat")
    assert await trigger("LogStatusNotification") == "Accepted"
    assert (await cs.wait_for_message("LogStatusNotification")) == {"status": "Idle"}
    assert await trigger("FirmwareStatusNotification") == "Accepted"
    assert (await cs.wait_for_message("FirmwareStatusNotification")) == {"status": "Idle"}
    assert await trigger("BootNotification") == "Accepted"
    await cs.wait_for_message("BootNotification", count=2)


# ------------------------------------------------------------------------------------------ GetLog
async def test_get_log_uploads_security_and_diagnostics_logs(tmp_path: Path, http: HttpServer) -> None:
    async with running_station(tmp_path) as st:
        cs = st.csms
        await cs.wait_for(lambda: "StartupOfTheDevice" in events(cs))
        r = await st.call(
            "GetLog",
            {"logType": "SecurityLog", "requestId": 7, "log": {"remoteLocation": f"{http.base}/logs/"}},
        )
        assert r["status"] == "Accepted" and r["filename"].endswith(".tar.gz")
        await cs.wait_for(lambda: len(cs.received("LogStatusNotification")) >= 2, 10)
        assert cs.received("LogStatusNotification")[:2] == [
            {"status": "Uploading", "requestId": 7},
            {"status": "Uploaded", "requestId": 7},
        ]
        body = http.received[f"/logs/{r['filename']}"]
        with tarfile.open(fileobj=io.BytesIO(body)) as tf:
            lines = tf.extractfile("security.log").read().decode().splitlines()  # type: ignore[union-attr]
        assert json.loads(lines[0])["type"] == "StartupOfTheDevice"

        r = await st.call(
            "GetLog",
            {
                "logType": "DiagnosticsLog",
                "requestId": 8,
                "retries": 1,
                "log": {"remoteLocation": f"{http.base}/diag/"},
            },
        )
        assert r["status"] == "Accepted"
        await cs.wait_for(
            lambda: {"status": "Uploaded", "requestId": 8} in cs.received("LogStatusNotification"), 15
        )
        assert tarfile.open(fileobj=io.BytesIO(http.received[f"/diag/{r['filename']}"])).getnames()

        http.upload_status = 500
        r = await st.call(
            "GetLog",
            {
                "logType": "SecurityLog",
                "requestId": 9,
                "retries": 1,
                "log": {"remoteLocation": f"{http.base}/logs/"},
            },
        )
        await cs.wait_for(
            lambda: {"status": "UploadFailure", "requestId": 9} in cs.received("LogStatusNotification"), 10
        )
        r = await st.call(
            "GetLog",
            {"logType": "SecurityLog", "requestId": 10, "log": {"remoteLocation": "gopher://127.0.0.1/x"}},
        )
        assert r == {"status": "Rejected"}


# ------------------------------------------------------------------------------------------ SignedUpdateFirmware
@pytest.fixture
def release_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "opt"
    mgr = ReleaseManager(root, installer=extract_installer)
    mgr.switch_to(mgr.install(make_wheel(tmp_path / "seed", "0.1.0")))
    monkeypatch.setenv("CHARGEPOINT_RELEASE_ROOT", str(root))
    monkeypatch.setattr(FirmwareService, "firmware_installer", extract_installer)
    monkeypatch.setattr(FirmwareService, "firmware_idle_poll_s", 0.05)
    return root


def signed_statuses(cs: CentralSystem, request_id: int) -> list[str]:
    return [
        p["status"]
        for p in cs.received("SignedFirmwareStatusNotification")
        if p.get("requestId") == request_id
    ]


async def test_signed_update_firmware(tmp_path: Path, release_root: Path, http: HttpServer) -> None:
    maker = CA("Manufacturer Root", rsa_key=True)
    signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = maker.issue(signer_key.public_key(), "firmware signing")
    wheel = make_wheel(tmp_path / "dist", "0.2.0")
    data = wheel.read_bytes()
    http.files[f"/fw/{wheel.name}"] = data
    good = base64.b64encode(signer_key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()
    bad = base64.b64encode(signer_key.sign(data + b"x", padding.PKCS1v15(), hashes.SHA256())).decode()

    def request(rid: int, signature: str, cert: x509.Certificate = signer) -> dict[str, Any]:
        return {
            "requestId": rid,
            "retries": 1,
            "firmware": {
                "location": f"{http.base}/fw/{wheel.name}",
                "retrieveDateTime": NOW.isoformat(),
                "signingCertificate": pem(cert),
                "signature": signature,
            },
        }

    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        cs = st.csms
        # no manufacturer root yet: the signing certificate cannot be trusted
        assert (await st.call("SignedUpdateFirmware", request(1, good))) == {"status": "InvalidCertificate"}
        await cs.wait_for(lambda: "InvalidFirmwareSigningCertificate" in events(cs))
        r = await st.call(
            "InstallCertificate", {"certificateType": "ManufacturerRootCertificate", "certificate": maker.pem}
        )
        assert r == {"status": "Accepted"}
        # a bad signature: downloaded, refused, nothing installed
        assert (await st.call("SignedUpdateFirmware", request(2, bad))) == {"status": "Accepted"}
        await cs.wait_for(lambda: "InvalidSignature" in signed_statuses(cs, 2), 10)
        assert signed_statuses(cs, 2) == ["Downloading", "Downloaded", "InvalidSignature"]
        await cs.wait_for(lambda: "InvalidFirmwareSignature" in events(cs))
        assert ReleaseManager(release_root).current_version() == "0.1.0"
        # the good one: verified, installed, restarted into
        assert (await st.call("SignedUpdateFirmware", request(3, good))) == {"status": "Accepted"}
        await cs.wait_for(lambda: restarts == ["Firmware"], 15)
        assert signed_statuses(cs, 3) == [
            "Downloading",
            "Downloaded",
            "SignatureVerified",
            "Installing",
            "Installed",
        ]
        assert ReleaseManager(release_root).current_version() == "0.2.0"


async def test_security_profile_3_presents_the_signed_client_certificate(tmp_path: Path) -> None:
    """After SignCertificate/CertificateSigned the next wss:// connection presents the client certificate; a
    central system that requires one (mutual TLS) accepts the charge point only with it."""
    root = CA("CSMS Root")
    state = tmp_path / "state"
    cfg = simulated_config(charge_point_id="CP-MTLS", csms_url="ws://127.0.0.1:9/ocpp", state_dir=state)
    async with CentralSystem() as cs:
        from dataclasses import replace

        c = Controller(replace(cfg, csms=replace(cfg.csms, url=cs.url)))
        await c.start()
        try:
            await cs.wait_for(lambda: c.boot_accepted, 10)
            assert (
                await cs.call(
                    "CP-MTLS",
                    "InstallCertificate",
                    {"certificateType": "CentralSystemRootCertificate", "certificate": root.pem},
                )
            )["status"] == "Accepted"
            await cs.call(
                "CP-MTLS", "ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"}
            )
            req = await cs.wait_for_message("SignCertificate")
            csr = x509.load_pem_x509_csr(req["csr"].encode())
            leaf = root.issue(csr.public_key(), "CP-MTLS")
            assert (await cs.call("CP-MTLS", "CertificateSigned", {"certificateChain": pem(leaf)}))[
                "status"
            ] == "Accepted"
            # root and client certificate installed: profile 3 can be honoured (no password needed)
            r = await cs.call("CP-MTLS", "ChangeConfiguration", {"key": "SecurityProfile", "value": "3"})
            assert r == {"status": "Accepted"}
        finally:
            await c.stop()
    server = root.server_context(tmp_path / "srv")
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=root.pem)
    async with CentralSystem(ssl_context=server) as cs:
        from dataclasses import replace

        c = Controller(replace(cfg, csms=replace(cfg.csms, url=cs.url)))
        await c.start()
        try:
            await cs.wait_for(lambda: c.boot_accepted, 10)
            # profile 3: the certificate authenticates the charge point; no Basic password is sent
            assert c.keys["SecurityProfile"] == 3 and "Authorization" not in cs.last_request_headers
        finally:
            await c.stop()


# ------------------------------------------------------------------------------------------ SecurityProfile
class RawListener:
    """A TCP listener on a given port that records the first bytes of every connection and answers nothing:
    what a charge point sends to an endpoint that is not (yet) its central system."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.first_bytes: list[bytes] = []
        self._server: Any = None

    async def __aenter__(self) -> RawListener:
        import asyncio

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                data = await asyncio.wait_for(reader.read(4096), 5)
            except (TimeoutError, OSError):
                data = b""
            self.first_bytes.append(data)
            writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._server.close()
        await self._server.wait_closed()


async def test_security_profile_raise_reconnects_over_tls_and_never_falls_back(tmp_path: Path) -> None:
    """Whitepaper ed. 2 §1.3 (OCTT "upgrade security profile"): a raise that cannot be honoured is Rejected;
    an accepted raise from 1 to 2 disconnects at once and every later attempt, including after a restart,
    is TLS with the Basic password inside it; nothing is ever sent in plain text again."""
    root = CA("CSMS Root")
    password = "0123456789abcdef"
    state = tmp_path / "state"
    async with CentralSystem(password=password) as plain:
        port = plain.port
        cfg = simulated_config(charge_point_id="CP-SP", csms_url=plain.url, state_dir=state, password=password,
                               ocpp_keys={"SecurityProfile": 1})
        c = Controller(cfg)
        await c.start()
        try:
            await plain.wait_for(lambda: c.boot_accepted, 10)
            raise_to = {"key": "SecurityProfile"}
            # no CentralSystemRootCertificate yet: neither 2 nor 3 could verify the central system
            for value in ("2", "3"):
                assert (await plain.call("CP-SP", "ChangeConfiguration", {**raise_to, "value": value})) == {
                    "status": "Rejected"}
            r = await plain.call("CP-SP", "InstallCertificate",
                                 {"certificateType": "CentralSystemRootCertificate", "certificate": root.pem})
            assert r == {"status": "Accepted"}
            # 3 also needs the client certificate, which this charge point does not have
            assert (await plain.call("CP-SP", "ChangeConfiguration", {**raise_to, "value": "3"})) == {
                "status": "Rejected"}
            assert (await plain.call("CP-SP", "ChangeConfiguration", {**raise_to, "value": "2"})) == {
                "status": "Accepted"}
            # at once, without a Reset: the charge point leaves the plain-text link by itself
            await plain.wait_for(lambda: "CP-SP" not in plain.sessions, 10)
            await plain.close()
            async with RawListener(port) as raw:
                await poll_until(lambda: len(raw.first_bytes) >= 2, 15)
            for data in raw.first_bytes:  # a TLS ClientHello every time, never an HTTP request
                assert data[:1] == b"\x16" and b"GET " not in data and b"Authorization" not in data
            server = root.server_context(tmp_path / "srv")
            async with CentralSystem(port=port, password=password, ssl_context=server) as tls:
                await tls.wait_for(lambda: "CP-SP" in tls.sessions, 15)
                # profile 2 keeps Basic authentication, inside TLS
                assert tls.last_request_headers["Authorization"].startswith("Basic ")
                # the root verifying the connection in use is the last one: it stays
                r = await tls.call("CP-SP", "DeleteCertificate",
                                   {"certificateHashData": expected_hash(root.cert)})
                assert r == {"status": "Failed"}
                await tls.wait_for(lambda: not c.security.pending_messages(), 10)
        finally:
            await c.stop()
    # after a restart (what a Reset does) the persisted profile holds: the ws:// configuration is connected
    # as wss://, the same endpoint
    async with RawListener(port) as raw:
        c = Controller(cfg)
        await c.start()
        try:
            await poll_until(lambda: len(raw.first_bytes) >= 1, 15)
            assert raw.first_bytes[0][:1] == b"\x16"
        finally:
            await c.stop()
    async with CentralSystem(port=port, password=password, ssl_context=root.server_context(tmp_path / "s2")) as tls:
        c = Controller(cfg)
        await c.start()
        try:
            await tls.wait_for(lambda: c.boot_accepted, 15)
            assert c.keys["SecurityProfile"] == 2
        finally:
            await c.stop()
