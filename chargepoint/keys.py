"""OCPP 1.6 configuration keys (§9): type, range, access, and the ChangeConfiguration answers.

Values are kept as the Python type of the key; ``GetConfiguration`` returns them as
the strings OCPP wants (booleans ``true``/``false``, CSL comma separated). Keys the
central system changes are persisted through ``on_change`` (the state store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Measurands this controller can report, given a meter with energy register, power, per-phase current and
# voltage, and frequency. ``Current.Offered`` comes from the pilot.
SUPPORTED_MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Current.Offered",
    "Voltage",
    "Frequency",
)
FEATURE_PROFILES = (
    "Core",
    "FirmwareManagement",
    "LocalAuthListManagement",
    "Reservation",
    "SmartCharging",
    "RemoteTrigger",
)


@dataclass(frozen=True)
class KeySpec:
    name: str
    kind: str  # "bool" | "int" | "csl" | "str"
    default: Any
    readonly: bool = False
    minimum: int | None = None
    maximum: int | None = None
    reboot_required: bool = False
    allowed_items: tuple[str, ...] | None = None  # for CSL keys
    max_items_key: str | None = None  # the *MaxLength key bounding a CSL
    secret: bool = False  # write-only: never returned by GetConfiguration (security extension)
    profile: str = "Core"


def _specs(number_of_connectors: int) -> list[KeySpec]:
    m = SUPPORTED_MEASURANDS
    return [
        # ---- Core profile (§9.1)
        KeySpec("AllowOfflineTxForUnknownId", "bool", False),
        KeySpec("AuthorizationCacheEnabled", "bool", True),
        KeySpec("AuthorizeRemoteTxRequests", "bool", True),
        KeySpec("BlinkRepeat", "int", 3, minimum=0, maximum=100),
        KeySpec("ClockAlignedDataInterval", "int", 0, minimum=0, maximum=86400),
        KeySpec("ConnectionTimeOut", "int", 60, minimum=1, maximum=3600),
        KeySpec(
            "ConnectorPhaseRotation",
            "csl",
            ",".join(f"{i}.RST" for i in range(number_of_connectors + 1)),
            allowed_items=None,
            max_items_key="ConnectorPhaseRotationMaxLength",
        ),
        KeySpec("ConnectorPhaseRotationMaxLength", "int", number_of_connectors + 1, readonly=True),
        KeySpec("GetConfigurationMaxKeys", "int", 100, readonly=True),
        KeySpec("HeartbeatInterval", "int", 300, minimum=0, maximum=86400),
        KeySpec("LightIntensity", "int", 100, minimum=0, maximum=100),
        KeySpec("LocalAuthorizeOffline", "bool", True),
        KeySpec("LocalPreAuthorize", "bool", False),
        KeySpec("MaxEnergyOnInvalidId", "int", 0, minimum=0, maximum=1_000_000),
        KeySpec(
            "MeterValuesAlignedData",
            "csl",
            "Energy.Active.Import.Register",
            allowed_items=m,
            max_items_key="MeterValuesAlignedDataMaxLength",
        ),
        KeySpec("MeterValuesAlignedDataMaxLength", "int", len(m), readonly=True),
        KeySpec(
            "MeterValuesSampledData",
            "csl",
            "Energy.Active.Import.Register,Power.Active.Import,Current.Import",
            allowed_items=m,
            max_items_key="MeterValuesSampledDataMaxLength",
        ),
        KeySpec("MeterValuesSampledDataMaxLength", "int", len(m), readonly=True),
        KeySpec("MeterValueSampleInterval", "int", 60, minimum=0, maximum=86400),
        KeySpec("MinimumStatusDuration", "int", 0, minimum=0, maximum=3600),
        KeySpec("NumberOfConnectors", "int", number_of_connectors, readonly=True),
        KeySpec("ResetRetries", "int", 1, minimum=0, maximum=10),
        KeySpec("StopTransactionOnEVSideDisconnect", "bool", True),
        KeySpec("StopTransactionOnInvalidId", "bool", True),
        KeySpec(
            "StopTxnAlignedData", "csl", "", allowed_items=m, max_items_key="StopTxnAlignedDataMaxLength"
        ),
        KeySpec("StopTxnAlignedDataMaxLength", "int", len(m), readonly=True),
        KeySpec(
            "StopTxnSampledData", "csl", "", allowed_items=m, max_items_key="StopTxnSampledDataMaxLength"
        ),
        KeySpec("StopTxnSampledDataMaxLength", "int", len(m), readonly=True),
        KeySpec("SupportedFeatureProfiles", "csl", ",".join(FEATURE_PROFILES), readonly=True),
        KeySpec("SupportedFeatureProfilesMaxLength", "int", len(FEATURE_PROFILES), readonly=True),
        KeySpec("TransactionMessageAttempts", "int", 3, minimum=1, maximum=100),
        KeySpec("TransactionMessageRetryInterval", "int", 60, minimum=0, maximum=86400),
        KeySpec("UnlockConnectorOnEVSideDisconnect", "bool", True),
        KeySpec("WebSocketPingInterval", "int", 60, minimum=0, maximum=3600),
        # ---- Local Auth List Management (§9.2)
        KeySpec("LocalAuthListEnabled", "bool", True, profile="LocalAuthListManagement"),
        KeySpec("LocalAuthListMaxLength", "int", 10000, readonly=True, profile="LocalAuthListManagement"),
        KeySpec("SendLocalListMaxLength", "int", 10000, readonly=True, profile="LocalAuthListManagement"),
        # ---- Reservation (§9.3)
        KeySpec("ReserveConnectorZeroSupported", "bool", True, readonly=True, profile="Reservation"),
        # ---- Smart Charging (§9.4)
        KeySpec("ChargeProfileMaxStackLevel", "int", 10, readonly=True, profile="SmartCharging"),
        KeySpec(
            "ChargingScheduleAllowedChargingRateUnit",
            "csl",
            "Current,Power",
            readonly=True,
            profile="SmartCharging",
        ),
        KeySpec("ChargingScheduleMaxPeriods", "int", 48, readonly=True, profile="SmartCharging"),
        # true when [energy.phase_switch] is configured (the controller sets it; chargepoint/energy/service.py)
        KeySpec("ConnectorSwitch3to1PhaseSupported", "bool", False, readonly=True, profile="SmartCharging"),
        KeySpec("MaxChargingProfilesInstalled", "int", 20, readonly=True, profile="SmartCharging"),
        # ---- Security extension (OCPP 1.6 security whitepaper)
        KeySpec("AuthorizationKey", "str", "", secret=True, profile="Security"),
        KeySpec("SecurityProfile", "int", 0, minimum=0, maximum=3, profile="Security"),
        KeySpec("CpoName", "str", "", profile="Security"),
        KeySpec("CertificateStoreMaxLength", "int", 20, readonly=True, profile="Security"),
        KeySpec("CertificateSignedMaxChainSize", "int", 10000, readonly=True, profile="Security"),
        KeySpec("AdditionalRootCertificateCheck", "bool", False, readonly=True, profile="Security"),
    ]


def _parse(spec: KeySpec, raw: Any) -> tuple[Any, str | None]:
    """Parse a value given as string (from OCPP) or native (from TOML). Returns (value, problem)."""
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw, None
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true", None
        return None, "true or false"
    if spec.kind == "int":
        if isinstance(raw, bool):
            return None, "a whole number"
        try:
            value = int(raw) if not isinstance(raw, str) else int(raw.strip(), 10)
        except (TypeError, ValueError):
            return None, "a whole number"
        if isinstance(raw, float) and raw != value:
            return None, "a whole number"
        if (
            spec.minimum is not None
            and value < spec.minimum
            or spec.maximum is not None
            and value > spec.maximum
        ):
            return None, f"a whole number from {spec.minimum} to {spec.maximum}"
        return value, None
    if spec.kind == "csl":
        if isinstance(raw, list):
            items = [str(x).strip() for x in raw]
        elif isinstance(raw, str):
            items = [x.strip() for x in raw.split(",") if x.strip()]
        else:
            return None, "a comma-separated list"
        if spec.allowed_items is not None:
            bad = [x for x in items if x not in spec.allowed_items]
            if bad:
                return None, f"items from {', '.join(spec.allowed_items)} (not {', '.join(bad)})"
        return ",".join(items), None
    if isinstance(raw, str):
        if spec.name == "AuthorizationKey" and raw and not (16 <= len(raw) <= 40):
            return None, "16 to 40 characters"
        return raw, None
    return None, "a string"


def validate_initial_keys(values: dict[str, Any], *, number_of_connectors: int) -> list[tuple[str, Any, str]]:
    """Problems with the [ocpp] table of the configuration file: (key, value, allowed)."""
    specs = {s.name: s for s in _specs(number_of_connectors)}
    out = []
    for name, raw in values.items():
        spec = specs.get(name)
        if spec is None:
            out.append((name, raw, "not an OCPP 1.6 configuration key this charge point knows"))
            continue
        _, problem = _parse(spec, raw)
        if problem:
            out.append((name, raw, problem))
    return out


class ConfigurationKeys:
    """The live key values. ``on_change(name, text)`` persists values the central system changed."""

    def __init__(
        self,
        *,
        number_of_connectors: int,
        initial: dict[str, Any] | None = None,
        persisted: dict[str, str] | None = None,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.specs = {s.name: s for s in _specs(number_of_connectors)}
        self._values: dict[str, Any] = {}
        for spec in self.specs.values():
            value, _ = _parse(spec, spec.default)
            self._values[spec.name] = value
        for source in (initial or {}, persisted or {}):
            for name, raw in source.items():
                spec = self.specs.get(name)
                if spec is None:
                    continue
                value, problem = _parse(spec, raw)
                if problem is None:
                    self._values[name] = value
        self._on_change = on_change
        self._listeners: list[Callable[[str, Any], None]] = []
        self._vetoes: list[Callable[[str, Any], str | None]] = []

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        self._listeners.append(listener)

    def add_veto(self, veto: Callable[[str, Any], str | None]) -> None:
        """``veto(name, value)`` says why a valid ChangeConfiguration cannot be honoured (answered Rejected),
        or None. For rules that depend on state outside the keys (a SecurityProfile raise needs certificates)."""
        self._vetoes.append(veto)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def csl(self, name: str) -> list[str]:
        return [x for x in str(self._values[name]).split(",") if x]

    def set_internal(self, name: str, value: Any) -> None:
        """Set a value from inside the charge point (read-only keys included), without persisting."""
        self._values[name] = value

    @staticmethod
    def as_text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def get_configuration(self, keys: Iterable[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
        """GetConfiguration.conf (§5.8): known keys with readonly flag and value; unknown keys listed."""
        known: list[dict[str, Any]] = []
        unknown: list[str] = []
        names = list(keys) if keys else [n for n, s in self.specs.items() if not s.secret]
        for name in names:
            spec = self.specs.get(name)
            if spec is None or spec.secret:
                unknown.append(name)
                continue
            known.append(
                {"key": name, "readonly": spec.readonly, "value": self.as_text(self._values[name])[:500]}
            )
        return known, unknown

    def change(self, name: str, raw: str) -> str:
        """ChangeConfiguration (§5.3): Accepted, Rejected, RebootRequired or NotSupported."""
        spec = self.specs.get(name)
        if spec is None:
            return "NotSupported"
        if spec.readonly:
            return "Rejected"
        value, problem = _parse(spec, raw)
        if problem is not None:
            return "Rejected"
        if name == "SecurityProfile" and value < self._values[name]:
            return "Rejected"  # security whitepaper: the security profile may only be raised
        if any(veto(name, value) is not None for veto in self._vetoes):
            return "Rejected"
        if spec.kind == "csl" and spec.max_items_key:
            if len([x for x in str(value).split(",") if x]) > self._values[spec.max_items_key]:
                return "Rejected"
        self._values[name] = value
        if self._on_change is not None:
            self._on_change(name, self.as_text(value))
        for listener in list(self._listeners):
            listener(name, value)
        return "RebootRequired" if spec.reboot_required else "Accepted"
