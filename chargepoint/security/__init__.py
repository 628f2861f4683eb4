"""OCPP 1.6 security extension: certificate store, CSR, firmware signature checks, security log."""

from chargepoint.security.certs import CertificateError, CertificateStore, hash_data
from chargepoint.security.seclog import SecurityLog

__all__ = ["CertificateError", "CertificateStore", "SecurityLog", "hash_data"]
