"""IdTagInfo and the Local Authorization List: SendLocalList (§5.15) and GetLocalListVersion (§5.10)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chargepoint.auth import (
    AuthDataError,
    IdTagInfo,
    LocalAuthList,
    apply_send_local_list,
    effective_status,
    list_version_for_get,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LIMITS = {"max_length": 5, "send_max_length": 3, "enabled": True}


def entry(tag: str, status: str | None = "Accepted", **extra: str) -> dict:
    e: dict = {"idTag": tag}
    if status is not None:
        e["idTagInfo"] = {"status": status, **extra}
    return e


def base_list() -> LocalAuthList:
    status, lst = apply_send_local_list(
        LocalAuthList(), 3, "Full", [entry("AAA"), entry("BBB", "Blocked")], **LIMITS
    )
    assert status == "Accepted" and lst is not None
    return lst


def snapshot(lst: LocalAuthList) -> tuple[int, dict[str, IdTagInfo]]:
    return lst.version, dict(lst.entries)


# ---------------------------------------------------------------------------------------------- IdTagInfo


def test_idtaginfo_roundtrip_camelcase() -> None:
    raw = {"status": "Accepted", "expiryDate": "2024-06-01T10:00:00Z", "parentIdTag": "GROUP1"}
    info = IdTagInfo.from_ocpp(raw)
    assert info == IdTagInfo("Accepted", datetime(2024, 6, 1, 10, 0, tzinfo=UTC), "GROUP1")
    assert info.to_ocpp() == raw


def test_idtaginfo_accepts_snake_case_from_ocpp_library() -> None:
    info = IdTagInfo.from_ocpp(
        {"status": "Blocked", "parent_id_tag": "G", "expiry_date": "2024-06-01T10:00:00"}
    )
    assert info.status == "Blocked" and info.parent_id_tag == "G"
    assert info.expiry_date == datetime(2024, 6, 1, 10, tzinfo=UTC)  # no offset → read as UTC


def test_idtaginfo_to_ocpp_omits_absent_fields_and_converts_to_utc() -> None:
    assert IdTagInfo("Invalid").to_ocpp() == {"status": "Invalid"}
    cest = timezone(timedelta(hours=2))
    info = IdTagInfo("Accepted", datetime(2024, 6, 1, 12, 0, tzinfo=cest))
    assert info.to_ocpp()["expiryDate"] == "2024-06-01T10:00:00Z"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"status": "Maybe"}, "status"),
        ({}, "status"),
        ({"status": "Accepted", "expiryDate": "tomorrow"}, "expiryDate"),
        ({"status": "Accepted", "parentIdTag": "X" * 21}, "parentIdTag"),
        ({"status": "Accepted", "colour": "red"}, "colour"),
    ],
)
def test_idtaginfo_from_ocpp_rejects_bad_input_naming_the_field(raw: dict, fragment: str) -> None:
    with pytest.raises(AuthDataError, match=fragment):
        IdTagInfo.from_ocpp(raw)


def test_idtaginfo_requires_aware_expiry() -> None:
    with pytest.raises(AuthDataError, match="timezone-aware"):
        IdTagInfo("Accepted", datetime(2024, 1, 1))


def test_effective_status_expiry_boundary() -> None:
    info = IdTagInfo("Accepted", NOW)
    assert effective_status(info, NOW - timedelta(seconds=1)) == "Accepted"
    assert effective_status(info, NOW) == "Expired"
    assert effective_status(info, NOW + timedelta(days=1)) == "Expired"
    assert effective_status(IdTagInfo("Accepted"), NOW) == "Accepted"
    # a non-Accepted status is reported as is, expired or not
    assert effective_status(IdTagInfo("Blocked", NOW - timedelta(days=1)), NOW) == "Blocked"


def test_effective_status_rejects_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        effective_status(IdTagInfo("Accepted"), datetime(2024, 1, 1))


# ---------------------------------------------------------------------------------------------- Full


def test_full_replaces_list_and_sets_version() -> None:
    old = base_list()
    status, new = apply_send_local_list(old, 7, "Full", [entry("CCC", parentIdTag="P")], **LIMITS)
    assert status == "Accepted" and new is not None
    assert new.version == 7
    assert set(new.entries) == {"CCC"}
    assert new.get("ccc") == IdTagInfo("Accepted", None, "P")
    assert new.get("AAA") is None
    assert snapshot(old) == (3, {"AAA": IdTagInfo("Accepted"), "BBB": IdTagInfo("Blocked")})  # untouched


@pytest.mark.parametrize("entries", [[], None])
def test_full_with_empty_list_clears_and_sets_version(entries: list | None) -> None:
    status, new = apply_send_local_list(base_list(), 9, "Full", entries, **LIMITS)
    assert status == "Accepted" and new is not None
    assert new.version == 9 and len(new) == 0
    assert list_version_for_get(new, supported=True) == 0


def test_full_entry_without_idtaginfo_fails() -> None:
    old = base_list()
    status, new = apply_send_local_list(old, 4, "Full", [entry("CCC", None)], **LIMITS)
    assert (status, new) == ("Failed", None)
    assert snapshot(old)[0] == 3


def test_full_may_lower_the_version() -> None:
    status, new = apply_send_local_list(base_list(), 1, "Full", [entry("X")], **LIMITS)
    assert status == "Accepted" and new is not None and new.version == 1


def test_result_carries_reason() -> None:
    res = apply_send_local_list(base_list(), 4, "Full", [entry("A"), entry("a")], **LIMITS)
    assert res.status == "Failed" and "more than once" in res.reason


# ---------------------------------------------------------------------------------------------- Differential


def test_differential_adds_updates_and_removes() -> None:
    old = base_list()
    status, new = apply_send_local_list(
        old,
        4,
        "Differential",
        [entry("CCC"), entry("BBB", "Accepted", parentIdTag="G"), entry("AAA", None), entry("ZZZ", None)],
        **{**LIMITS, "send_max_length": 4},
    )
    assert status == "Accepted" and new is not None
    assert new.version == 4
    assert new.entries == {"BBB": IdTagInfo("Accepted", None, "G"), "CCC": IdTagInfo("Accepted")}
    assert snapshot(old) == (3, {"AAA": IdTagInfo("Accepted"), "BBB": IdTagInfo("Blocked")})


def test_differential_may_skip_versions() -> None:
    status, new = apply_send_local_list(base_list(), 10, "Differential", [entry("CCC")], **LIMITS)
    assert status == "Accepted" and new is not None and new.version == 10


def test_empty_differential_keeps_entries_and_moves_version() -> None:
    old = base_list()
    status, new = apply_send_local_list(old, 4, "Differential", [], **LIMITS)
    assert status == "Accepted" and new is not None
    assert new.entries == old.entries and new.version == 4


@pytest.mark.parametrize("version", [3, 2, 0, -1])
def test_differential_not_above_current_version_is_version_mismatch(version: int) -> None:
    old = base_list()
    before = snapshot(old)
    status, new = apply_send_local_list(old, version, "Differential", [entry("CCC")], **LIMITS)
    assert (status, new) == ("VersionMismatch", None)
    assert snapshot(old) == before


# ---------------------------------------------------------------------------------------------- Failed


def test_over_send_local_list_max_length_fails_and_keeps_old_list() -> None:
    old = base_list()
    before = snapshot(old)
    four = [entry(f"T{i}") for i in range(4)]  # send_max_length is 3
    for update_type in ("Full", "Differential"):
        status, new = apply_send_local_list(old, 5, update_type, four, **LIMITS)
        assert (status, new) == ("Failed", None)
    assert snapshot(old) == before
    # exactly at the limit is fine
    assert apply_send_local_list(old, 5, "Full", four[:3], **LIMITS).status == "Accepted"


def test_resulting_list_over_local_auth_list_max_length_fails() -> None:
    old = base_list()  # 2 entries, max_length 5
    status, mid = apply_send_local_list(
        old, 4, "Differential", [entry("C"), entry("D"), entry("E")], **LIMITS
    )
    assert status == "Accepted" and mid is not None and len(mid) == 5
    before = snapshot(mid)
    status, new = apply_send_local_list(mid, 5, "Differential", [entry("F")], **LIMITS)
    assert (status, new) == ("Failed", None)
    assert snapshot(mid) == before
    # replacing and removing in the same message can stay within the bound
    status, new = apply_send_local_list(mid, 5, "Differential", [entry("F"), entry("C", None)], **LIMITS)
    assert status == "Accepted" and new is not None and len(new) == 5


@pytest.mark.parametrize("update_type", ["Full", "Differential"])
@pytest.mark.parametrize("dupe", ["AAA", "aaa"])  # CiString: case-insensitive duplicates count
def test_duplicate_idtags_fail_and_keep_old_list(update_type: str, dupe: str) -> None:
    old = base_list()
    before = snapshot(old)
    status, new = apply_send_local_list(old, 4, update_type, [entry("AAA"), entry(dupe, "Blocked")], **LIMITS)
    assert (status, new) == ("Failed", None)
    assert snapshot(old) == before


@pytest.mark.parametrize("update_type", ["Full", "Differential"])
def test_idtag_over_20_chars_fails_and_keeps_old_list(update_type: str) -> None:
    old = base_list()
    before = snapshot(old)
    status, new = apply_send_local_list(old, 4, update_type, [entry("OK"), entry("X" * 21)], **LIMITS)
    assert (status, new) == ("Failed", None)
    assert snapshot(old) == before
    # 20 characters is the maximum and fine
    assert apply_send_local_list(old, 4, update_type, [entry("X" * 20)], **LIMITS).status == "Accepted"


@pytest.mark.parametrize(
    "bad",
    [
        "AAA",  # not an object
        {"idTagInfo": {"status": "Accepted"}},  # no idTag
        {"idTag": "", "idTagInfo": {"status": "Accepted"}},  # empty idTag
        {"idTag": "ÄÖÜ", "idTagInfo": {"status": "Accepted"}},  # not ASCII
        {"idTag": "A\nB", "idTagInfo": {"status": "Accepted"}},  # not printable
        {"idTag": 1234, "idTagInfo": {"status": "Accepted"}},  # not a string
        {"idTag": "C", "idTagInfo": {"status": "Sure"}},  # bad status
        {"idTag": "C", "idTagInfo": {"status": "Accepted", "expiryDate": "soon"}},  # bad date
        {"idTag": "C", "idTagInfo": {"status": "Accepted", "parentIdTag": "P" * 21}},  # long parent
        {"idTag": "C", "idTagInfo": "Accepted"},  # idTagInfo not an object
        {"idTag": "C", "idTagInfo": {"status": "Accepted"}, "extra": 1},  # unknown field
    ],
)
@pytest.mark.parametrize("update_type", ["Full", "Differential"])
def test_malformed_entries_fail_and_keep_old_list(bad: object, update_type: str) -> None:
    old = base_list()
    before = snapshot(old)
    status, new = apply_send_local_list(old, 4, update_type, [entry("OK"), bad], **LIMITS)  # type: ignore[list-item]
    assert (status, new) == ("Failed", None)
    assert snapshot(old) == before


@pytest.mark.parametrize(
    ("version", "update_type", "entries"),
    [
        ("4", "Full", []),
        (True, "Full", []),
        (4, "Partial", []),
        (-1, "Full", []),
        (4, "Full", {"idTag": "A"}),
    ],
)
def test_malformed_request_fails(version: object, update_type: str, entries: object) -> None:
    status, new = apply_send_local_list(base_list(), version, update_type, entries, **LIMITS)  # type: ignore[arg-type]
    assert (status, new) == ("Failed", None)


def test_snake_case_entries_from_ocpp_library() -> None:
    status, new = apply_send_local_list(
        LocalAuthList(),
        1,
        "Full",
        [{"id_tag": "AB12", "id_tag_info": {"status": "Accepted", "parent_id_tag": "G"}}],
        **LIMITS,
    )
    assert status == "Accepted" and new is not None
    assert new.get("ab12") == IdTagInfo("Accepted", None, "G")


# ---------------------------------------------------------------------------------------------- NotSupported


def test_disabled_is_not_supported_before_anything_else() -> None:
    old = base_list()
    before = snapshot(old)
    bad = [entry("X" * 30)] * 10
    status, new = apply_send_local_list(old, 1, "Differential", bad, **{**LIMITS, "enabled": False})
    assert (status, new) == ("NotSupported", None)
    assert snapshot(old) == before


# ---------------------------------------------------------------------------------------------- GetLocalListVersion


def test_list_version_for_get() -> None:
    assert list_version_for_get(base_list(), supported=True) == 3
    assert list_version_for_get(base_list(), supported=False) == -1
    assert list_version_for_get(LocalAuthList(), supported=True) == 0
    assert list_version_for_get(None, supported=True) == 0


# ---------------------------------------------------------------------------------------------- persistence


def test_list_rows_roundtrip() -> None:
    status, lst = apply_send_local_list(
        LocalAuthList(),
        12,
        "Full",
        [entry("A", "Accepted", expiryDate="2024-07-01T00:00:00Z", parentIdTag="G"), entry("B", "Expired")],
        **LIMITS,
    )
    assert status == "Accepted" and lst is not None
    rows = lst.to_rows()
    assert rows == [("A", "Accepted", "2024-07-01T00:00:00Z", "G"), ("B", "Expired", None, None)]
    again = LocalAuthList.from_rows(12, rows)
    assert again == lst


@pytest.mark.parametrize(
    ("version", "rows", "fragment"),
    [
        (1, [("A", "Accepted", None, None), ("a", "Blocked", None, None)], "twice"),
        (1, [("A", "Nope", None, None)], "status"),
        (1, [("A", "Accepted", "x", None)], "expiry_date"),
        (1, [("A", "Accepted")], "needs"),
        (-2, [], "version"),
    ],
)
def test_list_from_rows_rejects_corrupt_rows(version: int, rows: list, fragment: str) -> None:
    with pytest.raises(AuthDataError, match=fragment):
        LocalAuthList.from_rows(version, rows)
