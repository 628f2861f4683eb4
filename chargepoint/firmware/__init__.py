"""Firmware Management profile (OCPP 1.6 §5.19 UpdateFirmware, §5.9 GetDiagnostics) as library code.

The firmware of this charger is a release of the ``pi-chargepoint`` package: see :mod:`.update`.
Names are re-exported lazily (the functions ``download``/``upload`` live in :mod:`.download`, whose module
name they would clash with here) so that ``python -m chargepoint.firmware.update`` does not import itself twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DownloadFailed": "download",
    "UploadFailed": "download",
    "DownloadResult": "download",
    "ReleaseManager": "update",
    "FirmwareUpdater": "update",
    "InvalidRelease": "update",
    "InstallFailed": "update",
    "RollbackFailed": "update",
    "verify_artifact": "update",
    "pip_venv_installer": "update",
    "systemd_restart": "update",
    "cli_update": "update",
    "cli_rollback": "update",
    "build_archive": "diagnostics",
    "archive_builder": "diagnostics",
    "DiagnosticsUploader": "diagnostics",
    "cli_diagnostics": "diagnostics",
    "redact_config_text": "diagnostics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
