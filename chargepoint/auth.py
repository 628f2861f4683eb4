"""Authorization model of an OCPP 1.6J charge point: Local Authorization List, Authorization Cache, and the
decision whether a presented identifier may start (or stop) a transaction.

Pure: no I/O and no clock. Every time-dependent function takes ``now`` (a timezone-aware datetime).

Readings of OCPP 1.6 (edition 2) where the text leaves room, in one place:

* IdToken is a CiString20: identifiers compare case-insensitively and hold at most 20 printable ASCII
  characters. Lists and the cache are keyed by :func:`norm_id_tag` (upper case).
* An Accepted IdTagInfo whose ``expiryDate`` is at or before ``now`` is Expired (§3.5.1 "When the validity of
  a Cache entry expires, it SHALL be changed to expired"; §3.5.3 "valid but apparently expired ... MUST be
  rejected").
* Negative evidence wins (§3.5.3): an identifier whose list OR cache entry is not (effectively) Accepted is
  never Accepted locally, online or offline; online the CSMS is asked instead (§4.1: a CP "MAY send an
  Authorize.req" for a locally known idTag; the CSMS is authoritative and a differing answer is a
  LocalListConflict, see :func:`local_list_conflict`). Offline it is Refused. This holds even when the list or
  cache is disabled by configuration: a stale "Blocked" is a reason to refuse, never a reason to accept.
* Positive evidence is used only from an enabled source, list before cache (§3.5.2: list entries have
  priority), and only as LocalPreAuthorize (online) / LocalAuthorizeOffline (offline) allow.
* Offline with LocalAuthorizeOffline=false an Accepted entry cannot be "explicitly authorized" locally, so the
  identifier is treated like an unknown one (§3.5.3): AllowOfflineTxForUnknownId decides.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from chargepoint.privacy import mask_id_tag

AuthStatus = Literal["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"]
AUTH_STATUSES: frozenset[str] = frozenset({"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"})
UpdateType = Literal["Full", "Differential"]
UpdateStatus = Literal["Accepted", "Failed", "NotSupported", "VersionMismatch"]
Outcome = Literal["Accepted", "Refused", "AskCSMS"]
Source = Literal["list", "cache", "offline-unknown", "csms", "same-tag", "none", "invalid-tag"]

ID_TAG_MAX_LEN = 20
_ID_TAG_RE = re.compile(r"[\x20-\x7e]{1,20}")


class AuthDataError(ValueError):
    """Malformed authorization data (idTag, IdTagInfo, list entry, persisted row). The message names the
    field, the value and what is allowed."""


# ---------------------------------------------------------------------------------------------------------
# helpers


def is_valid_id_tag(id_tag: object) -> bool:
    """True for a CiString20 idTag: 1..20 printable ASCII characters."""
    return isinstance(id_tag, str) and _ID_TAG_RE.fullmatch(id_tag) is not None


def norm_id_tag(id_tag: str) -> str:
    """Canonical form used as key: CiString compares case-insensitively (OCPP 1.6 §2.2 / types)."""
    return id_tag.upper()


def _shown(value: object) -> str:
    """An idTag in a message (they end up in logs): its mask and length, never the tag (chargepoint.privacy).
    A value that is not a string is no card: its type is what helps."""
    if isinstance(value, str):
        return f"{mask_id_tag(value) or '(empty)'} ({len(value)} characters)"
    return f"<{type(value).__name__}>"


def _check_id_tag(value: object, field_name: str) -> str:
    if not is_valid_id_tag(value):
        raise AuthDataError(
            f"{field_name}={_shown(value)} is not a valid idTag: need a string of 1..{ID_TAG_MAX_LEN} "
            "printable ASCII characters"
        )
    assert isinstance(value, str)
    return value


def _require_aware(now: datetime, name: str = "now") -> None:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{name}={now!r} must be a timezone-aware datetime")


def parse_ocpp_datetime(value: object, field_name: str) -> datetime:
    """ISO 8601 → aware datetime. A value without offset is read as UTC (OCPP 1.6 JSON §3.1 recommends UTC;
    some central systems omit the 'Z')."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise AuthDataError(f"{field_name}={value!r} is not an ISO 8601 date-time") from None
    else:
        raise AuthDataError(f"{field_name}={value!r} is not an ISO 8601 date-time string")
    if dt.tzinfo is None or dt.utcoffset() is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def format_ocpp_datetime(dt: datetime) -> str:
    """UTC ISO 8601 with 'Z', as OCPP central systems expect."""
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Keys are accepted in OCPP camelCase and in the snake_case the `ocpp` library hands to @on handlers.
_ENTRY_KEYS = {"idTag": "idTag", "id_tag": "idTag", "idTagInfo": "idTagInfo", "id_tag_info": "idTagInfo"}
_INFO_KEYS = {
    "status": "status",
    "expiryDate": "expiryDate",
    "expiry_date": "expiryDate",
    "parentIdTag": "parentIdTag",
    "parent_id_tag": "parentIdTag",
}


def _canon_keys(data: object, keymap: Mapping[str, str], what: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise AuthDataError(f"{what} must be an object, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        canon = keymap.get(key) if isinstance(key, str) else None
        if canon is None:
            allowed = sorted({v for v in keymap.values()})
            raise AuthDataError(f"{what} has unknown field {key!r}; allowed: {', '.join(allowed)}")
        if canon in out:
            raise AuthDataError(f"{what} has field {canon!r} twice (camelCase and snake_case)")
        out[canon] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# IdTagInfo


@dataclass(frozen=True, slots=True)
class IdTagInfo:
    """OCPP 1.6 IdTagInfo. ``expiry_date`` is aware or None; ``parent_id_tag`` is a CiString20 or None."""

    status: AuthStatus
    expiry_date: datetime | None = None
    parent_id_tag: str | None = None

    def __post_init__(self) -> None:
        if self.status not in AUTH_STATUSES:
            raise AuthDataError(
                f"status={self.status!r} is not an authorization status; "
                f"allowed: {', '.join(sorted(AUTH_STATUSES))}"
            )
        if self.expiry_date is not None:
            if not isinstance(self.expiry_date, datetime):
                raise AuthDataError(f"expiryDate={self.expiry_date!r} is not a datetime")
            if self.expiry_date.tzinfo is None or self.expiry_date.utcoffset() is None:
                raise AuthDataError(f"expiryDate={self.expiry_date!r} must be timezone-aware")
        if self.parent_id_tag is not None:
            _check_id_tag(self.parent_id_tag, "parentIdTag")

    @classmethod
    def from_ocpp(cls, data: Mapping[str, Any]) -> IdTagInfo:
        """From an OCPP idTagInfo object (camelCase; snake_case from the ocpp library is accepted too).
        Raises AuthDataError naming the bad field."""
        d = _canon_keys(data, _INFO_KEYS, "idTagInfo")
        if "status" not in d:
            raise AuthDataError("idTagInfo lacks required field 'status'")
        status = d["status"]
        if status not in AUTH_STATUSES:
            raise AuthDataError(
                f"idTagInfo.status={status!r} is not allowed; allowed: {', '.join(sorted(AUTH_STATUSES))}"
            )
        expiry = d.get("expiryDate")
        parent = d.get("parentIdTag")
        return cls(
            status=status,
            expiry_date=None if expiry is None else parse_ocpp_datetime(expiry, "idTagInfo.expiryDate"),
            parent_id_tag=None if parent is None else _check_id_tag(parent, "idTagInfo.parentIdTag"),
        )

    def to_ocpp(self) -> dict[str, Any]:
        """OCPP camelCase object; absent optional fields are omitted."""
        out: dict[str, Any] = {"status": self.status}
        if self.expiry_date is not None:
            out["expiryDate"] = format_ocpp_datetime(self.expiry_date)
        if self.parent_id_tag is not None:
            out["parentIdTag"] = self.parent_id_tag
        return out


def effective_status(info: IdTagInfo, now: datetime) -> AuthStatus:
    """Status at ``now``: Accepted with an expiryDate at or before ``now`` is Expired (§3.5.1, §3.5.3)."""
    _require_aware(now)
    if info.status == "Accepted" and info.expiry_date is not None and info.expiry_date <= now:
        return "Expired"
    return info.status


def _effective(info: IdTagInfo, now: datetime) -> IdTagInfo:
    st = effective_status(info, now)
    return info if st == info.status else IdTagInfo(st, info.expiry_date, info.parent_id_tag)


# ---------------------------------------------------------------------------------------------------------
# Local Authorization List (§3.5.2, §5.10 GetLocalListVersion, §5.15 SendLocalList)


class AuthRow(NamedTuple):
    """Persistence row: (id_tag, status, expiry ISO or None, parent_id_tag or None)."""

    id_tag: str
    status: str
    expiry_date: str | None
    parent_id_tag: str | None


def _info_to_row(tag: str, info: IdTagInfo) -> AuthRow:
    exp = None if info.expiry_date is None else format_ocpp_datetime(info.expiry_date)
    return AuthRow(tag, info.status, exp, info.parent_id_tag)


def _info_from_row(row: Sequence[Any], what: str) -> tuple[str, IdTagInfo]:
    if len(row) < 4:
        raise AuthDataError(f"{what} row {row!r} needs (id_tag, status, expiry_date, parent_id_tag)")
    tag = _check_id_tag(row[0], f"{what}.id_tag")
    status = row[1]
    if status not in AUTH_STATUSES:
        raise AuthDataError(f"{what}.status={status!r}; allowed: {', '.join(sorted(AUTH_STATUSES))}")
    exp = None if row[2] is None else parse_ocpp_datetime(row[2], f"{what}.expiry_date")
    parent = None if row[3] is None else _check_id_tag(row[3], f"{what}.parent_id_tag")
    return tag, IdTagInfo(status, exp, parent)


@dataclass(frozen=True)
class LocalAuthList:
    """Immutable snapshot of the Local Authorization List. ``entries`` is keyed by :func:`norm_id_tag` and
    must not be mutated: updates build a new object (:func:`apply_send_local_list`) so that a failed update
    leaves the old list whole."""

    version: int = 0
    entries: dict[str, IdTagInfo] = field(default_factory=dict)

    def get(self, id_tag: str) -> IdTagInfo | None:
        """Stored IdTagInfo for ``id_tag`` (case-insensitive), not adjusted for expiry."""
        return self.entries.get(norm_id_tag(id_tag))

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, id_tag: object) -> bool:
        return isinstance(id_tag, str) and norm_id_tag(id_tag) in self.entries

    def to_rows(self) -> list[AuthRow]:
        """Rows for persistence (store the version separately); sorted by id_tag for stable output."""
        return [_info_to_row(tag, self.entries[tag]) for tag in sorted(self.entries)]

    @classmethod
    def from_rows(cls, version: int, rows: Iterable[Sequence[Any]]) -> LocalAuthList:
        """Rebuild from persisted rows. Raises AuthDataError on a corrupt row or a duplicate idTag."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise AuthDataError(f"local list version={version!r} must be an integer >= 0")
        entries: dict[str, IdTagInfo] = {}
        for row in rows:
            tag, info = _info_from_row(row, "local list")
            key = norm_id_tag(tag)
            if key in entries:
                raise AuthDataError(f"local list rows contain idTag {_shown(tag)} twice")
            entries[key] = info
        return cls(version, entries)


@dataclass(frozen=True, slots=True)
class SendLocalListResult:
    """Outcome of :func:`apply_send_local_list`; ``reason`` says why for logs (empty when Accepted)."""

    status: UpdateStatus
    new_list: LocalAuthList | None
    reason: str = ""

    def __iter__(self) -> Iterator[Any]:  # allows ``status, new_list = apply_send_local_list(...)``
        return iter((self.status, self.new_list))


def _parse_entry(raw: object, index: int, update_type: str) -> tuple[str, IdTagInfo | None]:
    what = f"localAuthorizationList[{index}]"
    d = _canon_keys(raw, _ENTRY_KEYS, what)
    if "idTag" not in d:
        raise AuthDataError(f"{what} lacks required field 'idTag'")
    tag = _check_id_tag(d["idTag"], f"{what}.idTag")
    raw_info = d.get("idTagInfo")
    if raw_info is None:
        if update_type == "Full":
            # §5.15 / AuthorizationData: idTagInfo is "Required when UpdateType is Full".
            raise AuthDataError(f"{what} (idTag {_shown(tag)}) lacks idTagInfo, required in a Full update")
        return tag, None
    try:
        return tag, IdTagInfo.from_ocpp(raw_info)
    except AuthDataError as exc:
        raise AuthDataError(f"{what}: {exc}") from None


def apply_send_local_list(
    current: LocalAuthList,
    version: int,
    update_type: str,
    entries: Sequence[Mapping[str, Any]] | None,
    *,
    max_length: int,
    send_max_length: int,
    enabled: bool,
) -> SendLocalListResult:
    """Validate a SendLocalList.req (§5.15) and build the resulting list. Never mutates ``current``.

    Returns (status, new_list); new_list is None unless status is Accepted. Unpacks as a 2-tuple; the
    ``reason`` attribute explains a refusal.

    * NotSupported: the Local Auth List Management profile is disabled (LocalAuthListEnabled false / absent).
    * Failed: malformed version/updateType/entries, more entries than SendLocalListMaxLength
      (``send_max_length``), a duplicate idTag in the message (compared case-insensitively, CiString), an
      idTag or parentIdTag that is not 1..20 printable ASCII, a Full entry without idTagInfo, or a resulting
      list longer than LocalAuthListMaxLength (``max_length``).
    * VersionMismatch: a Differential whose listVersion is not greater than the current version. Reading:
      listVersion is "the version number of the list after the update has been applied", so an update that
      does not advance the version is stale or a replay. Gaps (current+2, ...) are accepted: the spec does
      not require consecutive numbers. A Full update carries a complete list and is accepted with any
      version >= 0.
    * Full replaces the list (an empty/absent list clears it and sets the version). Differential: entries with
      idTagInfo are added or replaced, entries without are removed (removing an absent idTag is a no-op);
      an empty Differential leaves the entries unchanged but still moves the version to ``version``.
    """
    if not enabled:
        return SendLocalListResult("NotSupported", None, "local authorization list is disabled")
    if update_type not in ("Full", "Differential"):
        return SendLocalListResult("Failed", None, f"updateType={update_type!r}; allowed: Full, Differential")
    if isinstance(version, bool) or not isinstance(version, int):
        return SendLocalListResult("Failed", None, f"listVersion={version!r} is not an integer")
    if update_type == "Differential" and version <= current.version:
        return SendLocalListResult(
            "VersionMismatch",
            None,
            f"Differential listVersion {version} is not above current {current.version}",
        )
    if version < 0:
        return SendLocalListResult("Failed", None, f"listVersion={version} must be >= 0")
    if entries is None:
        entries = []
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        return SendLocalListResult("Failed", None, "localAuthorizationList must be an array")
    if len(entries) > send_max_length:
        return SendLocalListResult(
            "Failed", None, f"{len(entries)} entries exceed SendLocalListMaxLength={send_max_length}"
        )

    parsed: dict[str, tuple[str, IdTagInfo | None]] = {}
    for i, raw in enumerate(entries):
        try:
            tag, info = _parse_entry(raw, i, update_type)
        except AuthDataError as exc:
            return SendLocalListResult("Failed", None, str(exc))
        key = norm_id_tag(tag)
        if key in parsed:
            # §5.15: "All idTags in the localAuthorizationList MUST be unique, no duplicate values are
            # allowed."
            return SendLocalListResult(
                "Failed", None, f"idTag {_shown(tag)} appears more than once in localAuthorizationList"
            )
        parsed[key] = (tag, info)

    if update_type == "Full":
        new_entries = {key: info for key, (_tag, info) in parsed.items() if info is not None}
    else:
        new_entries = dict(current.entries)
        for key, (_tag, info) in parsed.items():
            if info is None:
                new_entries.pop(key, None)
            else:
                new_entries[key] = info
    if len(new_entries) > max_length:
        return SendLocalListResult(
            "Failed",
            None,
            f"resulting list of {len(new_entries)} exceeds LocalAuthListMaxLength={max_length}",
        )
    return SendLocalListResult("Accepted", LocalAuthList(version, new_entries))


def list_version_for_get(local_list: LocalAuthList | None, supported: bool) -> int:
    """GetLocalListVersion.conf listVersion (§5.10): -1 when not supported, 0 when the list is empty
    (also after a Full update with an empty list, whatever version it carried), else the version."""
    if not supported:
        return -1
    if local_list is None or len(local_list) == 0:
        return 0
    return local_list.version


# ---------------------------------------------------------------------------------------------------------
# Authorization Cache (§3.5.1)


class CacheRow(NamedTuple):
    """Persistence row: (id_tag, status, expiry ISO or None, parent_id_tag or None, last_used ISO)."""

    id_tag: str
    status: str
    expiry_date: str | None
    parent_id_tag: str | None
    last_used: str


class AuthCache:
    """Bounded Authorization Cache with least-recently-used eviction (§3.5.1).

    Holds the latest IdTagInfo the CSMS returned for each identifier, Accepted or not (§3.5.1: "The Cache
    contains all the latest received identifiers (i.e. valid and NOT-valid)"); the controller calls
    :meth:`update` with every IdTagInfo from Authorize.conf, StartTransaction.conf and StopTransaction.conf.
    An update or a lookup hit counts as a use. When full, the least recently used entry is evicted.
    """

    def __init__(self, max_entries: int) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"AuthCache max_entries={max_entries!r} must be an integer >= 1")
        self.max_entries = max_entries
        # key -> (info, last_used); order = least recently used first
        self._entries: OrderedDict[str, tuple[IdTagInfo, datetime]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, id_tag: object) -> bool:
        return isinstance(id_tag, str) and norm_id_tag(id_tag) in self._entries

    def update(self, id_tag: str, info: IdTagInfo, now: datetime) -> list[str]:
        """Store ``info`` for ``id_tag`` as most recently used; returns the keys evicted to stay in bound.
        An invalid idTag is ignored (it could never have been sent to the CSMS)."""
        _require_aware(now)
        if not is_valid_id_tag(id_tag):
            return []
        key = norm_id_tag(id_tag)
        self._entries[key] = (_effective(info, now), now)
        self._entries.move_to_end(key)
        evicted: list[str] = []
        while len(self._entries) > self.max_entries:
            old, _ = self._entries.popitem(last=False)
            evicted.append(old)
        return evicted

    def lookup(self, id_tag: str, now: datetime) -> IdTagInfo | None:
        """IdTagInfo for ``id_tag`` at ``now`` (an Accepted entry past its expiryDate is changed to Expired in
        the cache, §3.5.1), marking it most recently used; None when absent."""
        _require_aware(now)
        if not is_valid_id_tag(id_tag):
            return None
        key = norm_id_tag(id_tag)
        hit = self._entries.get(key)
        if hit is None:
            return None
        info = _effective(hit[0], now)
        self._entries[key] = (info, now)
        self._entries.move_to_end(key)
        return info

    def peek(self, id_tag: str) -> IdTagInfo | None:
        """Stored entry without touching recency or expiry (for diagnostics)."""
        hit = self._entries.get(norm_id_tag(id_tag)) if isinstance(id_tag, str) else None
        return None if hit is None else hit[0]

    def remove(self, id_tag: str) -> bool:
        return self._entries.pop(norm_id_tag(id_tag), None) is not None

    def clear(self) -> None:
        """ClearCache.req (§5.4)."""
        self._entries.clear()

    def keys_lru_first(self) -> list[str]:
        return list(self._entries)

    def to_rows(self) -> list[CacheRow]:
        """Rows for persistence, least recently used first (``from_rows`` restores that order)."""
        rows = []
        for key, (info, used) in self._entries.items():
            r = _info_to_row(key, info)
            rows.append(
                CacheRow(r.id_tag, r.status, r.expiry_date, r.parent_id_tag, format_ocpp_datetime(used))
            )
        return rows

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]], max_entries: int) -> AuthCache:
        """Rebuild from rows (any order: sorted by last_used). If there are more rows than ``max_entries``
        (the bound was lowered), the most recently used are kept. Raises AuthDataError on a corrupt row."""
        cache = cls(max_entries)
        loaded: list[tuple[datetime, int, str, IdTagInfo]] = []
        for i, row in enumerate(rows):
            tag, info = _info_from_row(row, "auth cache")
            if len(row) < 5:
                raise AuthDataError(f"auth cache row {row!r} lacks last_used")
            used = parse_ocpp_datetime(row[4], "auth cache.last_used")
            loaded.append((used, i, norm_id_tag(tag), info))
        loaded.sort(key=lambda t: (t[0], t[1]))
        for used, _i, key, info in loaded[-max_entries:]:
            cache._entries[key] = (info, used)
            cache._entries.move_to_end(key)
        return cache


# ---------------------------------------------------------------------------------------------------------
# Decision


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """The OCPP 1.6 configuration keys that drive local authorization (§9.1 / §9.2)."""

    local_pre_authorize: bool = False
    local_authorize_offline: bool = True
    allow_offline_tx_for_unknown_id: bool = False
    authorization_cache_enabled: bool = True
    local_auth_list_enabled: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """``outcome``: Accepted (start/stop now), Refused, or AskCSMS (send Authorize.req and decide on the
    answer with :func:`decision_from_csms`). ``info`` is the IdTagInfo the decision rests on (for
    StartTransaction/parentIdTag), ``source`` where it came from, ``reason`` a human-readable why."""

    outcome: Outcome
    info: IdTagInfo | None
    source: Source
    reason: str = ""


def _local_infos(
    id_tag: str,
    now: datetime,
    local_list: LocalAuthList | None,
    cache: AuthCache | None,
) -> tuple[IdTagInfo | None, IdTagInfo | None]:
    list_info = None
    if local_list is not None:
        raw = local_list.get(id_tag)
        list_info = None if raw is None else _effective(raw, now)
    cache_info = None if cache is None else cache.lookup(id_tag, now)
    return list_info, cache_info


def _first_negative(
    list_info: IdTagInfo | None, cache_info: IdTagInfo | None, config: AuthConfig | None = None
) -> tuple[Source, IdTagInfo] | None:
    """The local entry that refuses this tag, if any. OCPP 1.6 §3.5: Local Authorization List entries take
    priority over cache entries (and list tags are not cached), so an entry on an enabled list decides alone;
    the cache counts only for tags not on the list. A disabled source is not consulted at all."""
    list_enabled = config is None or config.local_auth_list_enabled
    cache_enabled = config is None or config.authorization_cache_enabled
    if list_info is not None and list_enabled:
        return ("list", list_info) if list_info.status != "Accepted" else None
    if cache_info is not None and cache_enabled and cache_info.status != "Accepted":
        return "cache", cache_info
    return None


def decide(
    id_tag: str,
    *,
    now: datetime,
    online: bool,
    config: AuthConfig,
    local_list: LocalAuthList | None,
    cache: AuthCache | None,
) -> Decision:
    """May ``id_tag`` start a transaction? OCPP 1.6 §3.5 (local authorization & offline), §3.5.3 (unknown
    offline), §4.1 (Authorize). See the module docstring for the readings. A cache hit is a "use" (LRU).

    Online:  list/cache entry not Accepted (anywhere) → AskCSMS; Accepted in an enabled source and
             LocalPreAuthorize → Accepted at once; otherwise AskCSMS.
    Offline: entry not Accepted (anywhere) → Refused; Accepted in an enabled source and LocalAuthorizeOffline
             → Accepted; otherwise (unknown) AllowOfflineTxForUnknownId → Accepted, else Refused.
    """
    _require_aware(now)
    if not is_valid_id_tag(id_tag):
        return Decision("Refused", None, "invalid-tag", f"idTag {_shown(id_tag)} is not 1..20 printable ASCII")
    list_info, cache_info = _local_infos(id_tag, now, local_list, cache)

    negative = _first_negative(list_info, cache_info, config)
    if negative is not None:
        src, info = negative
        if online:
            return Decision("AskCSMS", info, src, f"{src} entry is {info.status}; the CSMS decides")
        return Decision("Refused", info, src, f"{src} entry is {info.status} (offline)")

    positive: tuple[Source, IdTagInfo] | None = None
    if list_info is not None and config.local_auth_list_enabled:
        positive = ("list", list_info)
    elif cache_info is not None and config.authorization_cache_enabled:
        positive = ("cache", cache_info)

    if online:
        if positive is not None and config.local_pre_authorize:
            return Decision("Accepted", positive[1], positive[0], "LocalPreAuthorize on a valid local entry")
        if positive is not None:
            return Decision("AskCSMS", positive[1], positive[0], "online without LocalPreAuthorize")
        return Decision("AskCSMS", None, "none", "online, identifier not known locally")

    if positive is not None and config.local_authorize_offline:
        return Decision("Accepted", positive[1], positive[0], "LocalAuthorizeOffline on a valid local entry")
    if config.allow_offline_tx_for_unknown_id:
        return Decision("Accepted", None, "offline-unknown", "offline, AllowOfflineTxForUnknownId")
    return Decision("Refused", None, "offline-unknown", "offline and not locally authorized")


def decision_from_csms(info: IdTagInfo, now: datetime) -> Decision:
    """Decision from an Authorize.conf IdTagInfo: Accepted only when effectively Accepted at ``now``
    (ConcurrentTx, Blocked, Expired, Invalid, or Accepted with a past expiryDate → Refused). The controller
    should also :meth:`AuthCache.update` the cache with ``info``."""
    st = effective_status(info, now)
    if st == "Accepted":
        return Decision("Accepted", info, "csms", "Authorize.conf Accepted")
    return Decision("Refused", info, "csms", f"Authorize.conf {st}")


def local_list_conflict(
    local_list: LocalAuthList | None, id_tag: str, csms_info: IdTagInfo, now: datetime
) -> bool:
    """True when the CSMS answered a status that differs from the Local Authorization List entry for
    ``id_tag``: the controller then reports StatusNotification errorCode LocalListConflict (§7.6
    ChargePointErrorCode). Absent entries are no conflict."""
    if local_list is None or not is_valid_id_tag(id_tag):
        return False
    raw = local_list.get(id_tag)
    if raw is None:
        return False
    return effective_status(raw, now) != effective_status(csms_info, now)


# ---------------------------------------------------------------------------------------------------------
# Stopping a transaction with another identifier


def same_group(tag_a: str, info_a: IdTagInfo | None, tag_b: str, info_b: IdTagInfo | None) -> bool:
    """True when ``tag_b`` belongs with ``tag_a``: the same identifier, or both carry the same parentIdTag
    (case-insensitive). OCPP 1.6 §4.1 / §4.10 Stop Transaction: a transaction may be ended by an identifier
    with the same parentIdTag as the one that started it (compliance test TC_069_CS). No parentIdTag on
    either side means no group."""
    if is_valid_id_tag(tag_a) and is_valid_id_tag(tag_b) and norm_id_tag(tag_a) == norm_id_tag(tag_b):
        return True
    if info_a is None or info_b is None or info_a.parent_id_tag is None or info_b.parent_id_tag is None:
        return False
    return norm_id_tag(info_a.parent_id_tag) == norm_id_tag(info_b.parent_id_tag)


def decide_stop(
    presented_tag: str,
    *,
    tx_id_tag: str,
    tx_parent_id_tag: str | None,
    now: datetime,
    online: bool,
    config: AuthConfig,
    local_list: LocalAuthList | None,
    cache: AuthCache | None,
) -> Decision:
    """May ``presented_tag`` stop the transaction started by ``tx_id_tag``?

    * Same identifier (case-insensitive) → Accepted (source 'same-tag'), no Authorize.req (§4.1: "the Charge
      Point SHALL only send an Authorize.req when the identifier used for stopping the transaction is
      different from the identifier that started the transaction").
    * Otherwise the parentIdTags must be equal. The transaction's parent comes from ``tx_parent_id_tag``
      (StartTransaction.conf) or else a list/cache entry of ``tx_id_tag``; the presented tag's parent from an
      enabled list/cache entry that is effectively Accepted. A local match → Accepted. Not confirmed locally
      (unknown, or local data says another group, which may be stale) → AskCSMS when online and then
      :func:`may_stop_from_csms`; offline → Refused (never end somebody's charge on a guess).
    """
    _require_aware(now)
    if not is_valid_id_tag(presented_tag):
        return Decision(
            "Refused", None, "invalid-tag", f"idTag {_shown(presented_tag)} is not 1..20 printable ASCII"
        )
    if is_valid_id_tag(tx_id_tag) and norm_id_tag(presented_tag) == norm_id_tag(tx_id_tag):
        return Decision("Accepted", None, "same-tag", "same identifier as the transaction")

    tx_parent = tx_parent_id_tag
    if tx_parent is None and is_valid_id_tag(tx_id_tag):
        lst = local_list.get(tx_id_tag) if local_list is not None else None
        cch = cache.peek(tx_id_tag) if cache is not None else None
        tx_parent = (lst.parent_id_tag if lst else None) or (cch.parent_id_tag if cch else None)

    list_info, cache_info = _local_infos(presented_tag, now, local_list, cache)
    candidates: list[tuple[Source, IdTagInfo]] = []
    if list_info is not None and config.local_auth_list_enabled:
        candidates.append(("list", list_info))
    if cache_info is not None and config.authorization_cache_enabled:
        candidates.append(("cache", cache_info))
    if tx_parent is not None and _first_negative(list_info, cache_info, config) is None:
        tx_info = IdTagInfo("Accepted", None, tx_parent)
        for src, info in candidates:
            if same_group(tx_id_tag, tx_info, presented_tag, info):
                return Decision("Accepted", info, src, "same parentIdTag as the transaction")
    if online:
        return Decision(
            "AskCSMS", candidates[0][1] if candidates else None, "none", "group not confirmed locally"
        )
    return Decision(
        "Refused", candidates[0][1] if candidates else None, "none", "offline, group not confirmed"
    )


def may_stop_from_csms(
    presented_tag: str,
    presented_info: IdTagInfo,
    *,
    tx_id_tag: str,
    tx_parent_id_tag: str | None,
    now: datetime,
) -> bool:
    """After Authorize.conf for a different identifier: stop only if it is Accepted at ``now`` and its
    parentIdTag equals the transaction's. An identifier the CSMS refuses does not stop another's charge."""
    if effective_status(presented_info, now) != "Accepted" or tx_parent_id_tag is None:
        return False
    return same_group(tx_id_tag, IdTagInfo("Accepted", None, tx_parent_id_tag), presented_tag, presented_info)
