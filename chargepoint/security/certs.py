"""Certificate store and the X.509 work of the OCPP 1.6 security extension ("Improved security for OCPP 1.6-J",
edition 2).

Layout under ``state_dir/certs``: one PEM file per installed root certificate (``<type>-<sha256>.pem``),
``index.json`` (file name → certificate type), ``csms-ca-bundle.pem`` (what verifies a wss:// central system),
``client-key.pem`` / ``client-cert.pem`` (security profile 3) and ``client-pending-key.pem`` (the key of a CSR
that is waiting for CertificateSigned). Private keys are written 0600 and never leave this directory.

Readings where the whitepaper is silent or loose:

* InstallCertificate is Rejected for anything that is not exactly one parseable PEM certificate, for a
  certificate outside its validity period and for one that is not a CA (basicConstraints); Failed when the
  store is full (CertificateStoreMaxLength) or the file cannot be written. Installing the same certificate
  again is Accepted and changes nothing.
* certificateHashData: SHA256 over the DER of the issuer name and over the issuer's public key (the
  subjectPublicKey bits, as in OCSP CertID, RFC 6960), serialNumber in lowercase hex without leading zeros.
* CertificateSigned: the chain must be PEM, leaf first; the leaf must carry the public key of the pending
  CSR and be valid now; every certificate must be signed by the next; when CentralSystemRootCertificates are
  installed, the last certificate must be one of them or be signed by one of them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

CERTIFICATE_TYPES = ("CentralSystemRootCertificate", "ManufacturerRootCertificate")
INDEX = "index.json"
BUNDLE = "csms-ca-bundle.pem"
CLIENT_KEY = "client-key.pem"
CLIENT_CERT = "client-cert.pem"
PENDING_KEY = "client-pending-key.pem"
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


class CertificateError(ValueError):
    """A certificate, chain or signature is not acceptable; the message says why (for logs and techInfo)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_pem_chain(text: str | bytes) -> list[x509.Certificate]:
    data = text.encode() if isinstance(text, str) else text
    if _PEM_BEGIN not in data:
        raise CertificateError("not a PEM certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"unreadable PEM certificate: {exc}") from None
    if not certs:
        raise CertificateError("no certificate in the PEM text")
    return certs


def parse_one(text: str | bytes) -> x509.Certificate:
    certs = parse_pem_chain(text)
    if len(certs) != 1:
        raise CertificateError(f"expected one certificate, got {len(certs)}")
    return certs[0]


def check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"expired on {cert.not_valid_after_utc.isoformat()}")


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Is ``cert`` issued by ``issuer`` (name chaining and a valid signature)?"""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def hash_data(cert: x509.Certificate, issuer: x509.Certificate | None = None) -> dict[str, str]:
    """CertificateHashDataType for ``cert`` (SHA256). For a root the issuer is the certificate itself."""
    issuer = issuer or cert
    key_der = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # the subjectPublicKey BIT STRING contents, as OCSP's issuerKeyHash (RFC 6960 §4.1.1)
    key_bits = _spki_bits(key_der)
    return {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(cert.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(key_bits).hexdigest(),
        "serialNumber": format(cert.serial_number, "x"),
    }


def _spki_bits(spki_der: bytes) -> bytes:
    """The subjectPublicKey bits of a DER SubjectPublicKeyInfo (SEQUENCE { algorithm, BIT STRING })."""

    def read(buf: bytes, pos: int) -> tuple[int, int, int]:  # tag, content start, content end
        tag = buf[pos]
        length = buf[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(buf[pos : pos + n], "big")
            pos += n
        return tag, pos, pos + length

    _, start, _ = read(spki_der, 0)  # outer SEQUENCE
    _, _, alg_end = read(spki_der, start)  # AlgorithmIdentifier
    tag, bits_start, bits_end = read(spki_der, alg_end)
    if tag != 0x03:
        return spki_der
    return spki_der[bits_start + 1 : bits_end]  # skip the unused-bits octet


def same_hash(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Compare hash data case-insensitively; serial numbers without leading zeros."""
    def norm(d: dict[str, Any]) -> tuple[str, str, str, str]:
        return (
            str(d.get("hashAlgorithm", "")).upper(),
            str(d.get("issuerNameHash", "")).lower(),
            str(d.get("issuerKeyHash", "")).lower(),
            str(d.get("serialNumber", "")).lower().lstrip("0") or "0",
        )

    return norm(a) == norm(b)


# --------------------------------------------------------------------------------------------- key + CSR
def new_key() -> ec.EllipticCurvePrivateKey:
    """ECDSA P-256: one of the key types the whitepaper allows, and cheap on a Raspberry Pi."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str, organization: str) -> str:
    """PEM CSR: CN = charge point identity, O = CpoName (whitepaper, "Certificate Properties")."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(key: Any) -> bytes:
    return key.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --------------------------------------------------------------------------------------------- firmware
def verify_signature(signing_cert: x509.Certificate, signature_b64: str, data_sha256: bytes) -> None:
    """Check ``signature`` (base64) over a file whose SHA256 digest is given: ECDSA, RSA PKCS#1 v1.5 or PSS."""
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError):
        raise CertificateError("signature is not base64") from None
    key = signing_cert.public_key()
    prehashed = Prehashed(hashes.SHA256())
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data_sha256, ec.ECDSA(prehashed))
            return
        if isinstance(key, rsa.RSAPublicKey):
            try:
                key.verify(signature, data_sha256, padding.PKCS1v15(), prehashed)
            except InvalidSignature:
                pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                key.verify(signature, data_sha256, pss, prehashed)
            return
    except InvalidSignature:
        raise CertificateError("the signature does not match the file") from None
    raise CertificateError(f"unsupported signing key type {type(key).__name__}")


def sha256_file(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(65536), b""):
            h.update(chunk)
    return h.digest()


# --------------------------------------------------------------------------------------------- store
@dataclass(frozen=True)
class Installed:
    file: str
    type: str
    cert: x509.Certificate

    @property
    def hash_data(self) -> dict[str, str]:
        return hash_data(self.cert)


class CertificateStore:
    """Root certificates by type plus the charge point's own key/certificate, in ``directory``."""

    def __init__(self, directory: Path, extra_ca_file: str | None = None) -> None:
        self.dir = Path(directory)
        self.extra_ca_file = extra_ca_file  # the configured [csms] ca_file: always part of the bundle
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # ---------------------------------------------------------------- index
    def _index(self) -> dict[str, str]:
        try:
            data = json.loads((self.dir / INDEX).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write(self, name: str, data: bytes, mode: int = 0o644) -> None:
        tmp = self.dir / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)

    def _save_index(self, index: dict[str, str]) -> None:
        self._write(INDEX, json.dumps(index, indent=1, sort_keys=True).encode())

    def installed(self, types: Iterable[str] = CERTIFICATE_TYPES) -> list[Installed]:
        wanted = set(types)
        out = []
        for name, kind in sorted(self._index().items()):
            if kind not in wanted:
                continue
            try:
                out.append(Installed(name, kind, parse_one((self.dir / name).read_bytes())))
            except (OSError, CertificateError):
                continue  # a damaged file is skipped, not fatal
        return out

    def roots(self, kind: str) -> list[x509.Certificate]:
        return [i.cert for i in self.installed([kind])]

    # ---------------------------------------------------------------- Install / Delete / list
    def install(self, kind: str, pem: str, *, max_entries: int, now: datetime) -> tuple[str, str]:
        """InstallCertificate: (status, why). Raises OSError when the file cannot be written."""
        if kind not in CERTIFICATE_TYPES:
            return "Rejected", f"unknown certificate type {kind}"
        try:
            cert = parse_one(pem)
            check_validity(cert, now)
        except CertificateError as exc:
            return "Rejected", str(exc)
        if not is_ca(cert):
            return "Rejected", "not a CA certificate (basicConstraints CA:FALSE or missing)"
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        name = f"{kind}-{fingerprint[:32]}.pem"
        index = self._index()
        if index.get(name) == kind:
            return "Accepted", "already installed"
        if len(index) >= max_entries:
            return "Failed", f"certificate store full ({max_entries} certificates)"
        self._write(name, cert.public_bytes(serialization.Encoding.PEM))
        index[name] = kind
        self._save_index(index)
        self.write_bundle()
        return "Accepted", ""

    def find(self, wanted: dict[str, Any]) -> Installed | None:
        return next((i for i in self.installed() if same_hash(i.hash_data, wanted)), None)

    def delete(self, entry: Installed) -> None:
        index = self._index()
        index.pop(entry.file, None)
        self._save_index(index)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / entry.file).unlink()
        self.write_bundle()

    # ---------------------------------------------------------------- CA bundle for wss://
    def bundle_path(self) -> Path:
        return self.dir / BUNDLE

    def write_bundle(self) -> str | None:
        """Installed CentralSystemRootCertificates + the configured ca_file, as one PEM file; None if empty."""
        parts = [c.public_bytes(serialization.Encoding.PEM) for c in self.roots("CentralSystemRootCertificate")]
        if parts and self.extra_ca_file:
            with contextlib.suppress(OSError):
                parts.insert(0, Path(self.extra_ca_file).read_bytes().rstrip() + b"\n")
        path = self.bundle_path()
        if not parts:
            path.unlink(missing_ok=True)
            return None
        self._write(BUNDLE, b"".join(parts))
        return str(path)

    # ---------------------------------------------------------------- client certificate (profile 3)
    def new_csr(self, common_name: str, organization: str) -> str:
        key = new_key()
        self._write(PENDING_KEY, key_pem(key), 0o600)
        return make_csr(key, common_name, organization)

    def has_pending_key(self) -> bool:
        return (self.dir / PENDING_KEY).is_file()

    def accept_signed(self, chain_pem: str, *, now: datetime) -> None:
        """CertificateSigned: validate the chain against the pending key; store it. Raises CertificateError."""
        try:
            key = serialization.load_pem_private_key((self.dir / PENDING_KEY).read_bytes(), None)
        except (OSError, ValueError):
            raise CertificateError("no certificate signing request is pending") from None
        chain = parse_pem_chain(chain_pem)
        leaf = chain[0]
        if _public_der(leaf.public_key()) != _public_der(key.public_key()):
            raise CertificateError("the certificate does not belong to the key of the signing request")
        for cert in chain:
            check_validity(cert, now)
        for cert, issuer in zip(chain, chain[1:], strict=False):
            if not signed_by(cert, issuer):
                raise CertificateError(f"{cert.subject.rfc4514_string()} is not signed by the next certificate")
        roots = self.roots("CentralSystemRootCertificate")
        top = chain[-1]
        if roots and not any(top == r or signed_by(top, r) for r in roots):
            raise CertificateError("the chain does not lead to an installed CentralSystemRootCertificate")
        self._write(CLIENT_CERT, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        os.replace(self.dir / PENDING_KEY, self.dir / CLIENT_KEY)

    def client_cert_files(self) -> tuple[Path, Path] | None:
        """(certificate chain, key) for a TLS client certificate (security profile 3), if one is installed."""
        cert, key = self.dir / CLIENT_CERT, self.dir / CLIENT_KEY
        return (cert, key) if cert.is_file() and key.is_file() else None

    def client_certificate(self) -> x509.Certificate | None:
        files = self.client_cert_files()
        if files is None:
            return None
        try:
            return parse_pem_chain(files[0].read_bytes())[0]
        except (OSError, CertificateError):
            return None

    # ---------------------------------------------------------------- firmware signing certificate
    def check_signing_certificate(self, pem: str, *, now: datetime) -> x509.Certificate:
        """SignedUpdateFirmware: the signingCertificate must be issued by an installed ManufacturerRoot."""
        chain = parse_pem_chain(pem)
        for cert in chain:
            check_validity(cert, now)
        for cert, issuer in zip(chain, chain[1:], strict=False):
            if not signed_by(cert, issuer):
                raise CertificateError("the signing certificate chain is broken")
        roots = self.roots("ManufacturerRootCertificate")
        if not roots:
            raise CertificateError("no ManufacturerRootCertificate is installed")
        top = chain[-1]
        if not any(top == r or signed_by(top, r) for r in roots):
            raise CertificateError("the signing certificate is not issued by an installed ManufacturerRoot")
        return chain[0]
