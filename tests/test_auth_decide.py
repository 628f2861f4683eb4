"""decide(): precedence of Local Authorization List, Authorization Cache and offline policy (OCPP 1.6 §3.5,
§3.5.3, §4.1); stopping with another identifier of the same group (§4.10)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.auth import (
    AuthCache,
    AuthConfig,
    IdTagInfo,
    LocalAuthList,
    decide,
    decide_stop,
    decision_from_csms,
    local_list_conflict,
    may_stop_from_csms,
    norm_id_tag,
    same_group,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PAST = NOW - timedelta(hours=1)
FUTURE = NOW + timedelta(hours=1)

CFG = AuthConfig(
    local_pre_authorize=True,
    local_authorize_offline=True,
    allow_offline_tx_for_unknown_id=False,
    authorization_cache_enabled=True,
    local_auth_list_enabled=True,
)


def mklist(**entries: IdTagInfo) -> LocalAuthList:
    return LocalAuthList(1, {norm_id_tag(k): v for k, v in entries.items()})


def mkcache(**entries: IdTagInfo) -> AuthCache:
    cache = AuthCache(10)
    for k, v in entries.items():
        cache.update(k, v, NOW - timedelta(minutes=5))
    return cache


def run(tag: str, *, online: bool, config: AuthConfig = CFG, lst=None, cache=None):  # type: ignore[no-untyped-def]
    return decide(
        tag,
        now=NOW,
        online=online,
        config=config,
        local_list=lst if lst is not None else mklist(),
        cache=cache if cache is not None else mkcache(),
    )


# ---------------------------------------------------------------------------------------------- online


def test_online_list_hit_with_local_pre_authorize_is_accepted_at_once() -> None:
    d = run("A", online=True, lst=mklist(A=IdTagInfo("Accepted", FUTURE, "G")))
    assert (d.outcome, d.source, d.info) == ("Accepted", "list", IdTagInfo("Accepted", FUTURE, "G"))


def test_online_cache_hit_with_local_pre_authorize_is_accepted_at_once() -> None:
    d = run("a", online=True, cache=mkcache(A=IdTagInfo("Accepted")))
    assert (d.outcome, d.source) == ("Accepted", "cache")


def test_online_without_local_pre_authorize_asks_csms() -> None:
    cfg = replace(CFG, local_pre_authorize=False)
    d = run("A", online=True, config=cfg, lst=mklist(A=IdTagInfo("Accepted")))
    assert (d.outcome, d.source, d.info) == ("AskCSMS", "list", IdTagInfo("Accepted"))
    d = run("A", online=True, config=cfg, cache=mkcache(A=IdTagInfo("Accepted")))
    assert (d.outcome, d.source) == ("AskCSMS", "cache")


def test_online_unknown_asks_csms() -> None:
    d = run("NEW", online=True, config=replace(CFG, allow_offline_tx_for_unknown_id=True))
    assert (d.outcome, d.source, d.info) == ("AskCSMS", "none", None)


@pytest.mark.parametrize("status", ["Blocked", "Invalid", "Expired", "ConcurrentTx"])
def test_online_not_accepted_in_list_asks_csms_never_accepts(status: str) -> None:
    d = run("A", online=True, lst=mklist(A=IdTagInfo(status)))  # type: ignore[arg-type]
    assert (d.outcome, d.source) == ("AskCSMS", "list")
    assert d.info is not None and d.info.status == status


def test_online_list_entry_past_expiry_asks_csms() -> None:
    d = run("A", online=True, lst=mklist(A=IdTagInfo("Accepted", PAST)))
    assert d.outcome == "AskCSMS" and d.info is not None and d.info.status == "Expired"


def test_online_disabled_sources_are_not_used_positively() -> None:
    lst = mklist(A=IdTagInfo("Accepted"))
    cache = mkcache(B=IdTagInfo("Accepted"))
    cfg = replace(CFG, local_auth_list_enabled=False, authorization_cache_enabled=False)
    assert run("A", online=True, config=cfg, lst=lst).outcome == "AskCSMS"
    assert run("B", online=True, config=cfg, cache=cache).outcome == "AskCSMS"


def test_list_has_priority_over_cache() -> None:
    lst = mklist(A=IdTagInfo("Accepted", None, "FROMLIST"))
    cache = mkcache(A=IdTagInfo("Accepted", None, "FROMCACHE"))
    d = run("A", online=True, lst=lst, cache=cache)
    assert d.source == "list" and d.info is not None and d.info.parent_id_tag == "FROMLIST"
    d = run("A", online=False, lst=lst, cache=cache)
    assert d.source == "list" and d.outcome == "Accepted"


def test_list_disabled_falls_back_to_cache() -> None:
    lst = mklist(A=IdTagInfo("Accepted", None, "FROMLIST"))
    cache = mkcache(A=IdTagInfo("Accepted", None, "FROMCACHE"))
    d = run("A", online=False, config=replace(CFG, local_auth_list_enabled=False), lst=lst, cache=cache)
    assert (d.outcome, d.source) == ("Accepted", "cache")


def test_list_entry_takes_priority_over_the_cache() -> None:
    """OCPP 1.6 §3.5: list entries take priority over cache entries (list tags are not cached at all)."""
    lst = mklist(A=IdTagInfo("Accepted"))
    cache = mkcache(A=IdTagInfo("Blocked"))  # from before the list said Accepted
    d = run("A", online=False, lst=lst, cache=cache)
    assert (d.outcome, d.source) == ("Accepted", "list")
    d = run("A", online=True, config=replace(CFG, local_pre_authorize=True), lst=lst, cache=cache)
    assert (d.outcome, d.source) == ("Accepted", "list")
    # and the other way round: a list Blocked wins over an Accepted cache entry
    d = run("B", online=False, lst=mklist(B=IdTagInfo("Blocked")), cache=mkcache(B=IdTagInfo("Accepted")))
    assert (d.outcome, d.source) == ("Refused", "list")


# ---------------------------------------------------------------------------------------------- offline


def test_offline_list_hit_with_local_authorize_offline_is_accepted() -> None:
    d = run("A", online=False, lst=mklist(A=IdTagInfo("Accepted", FUTURE)))
    assert (d.outcome, d.source) == ("Accepted", "list")


def test_offline_cache_hit_with_local_authorize_offline_is_accepted() -> None:
    d = run("A", online=False, cache=mkcache(A=IdTagInfo("Accepted")))
    assert (d.outcome, d.source) == ("Accepted", "cache")


def test_offline_without_local_authorize_offline_treats_known_as_unknown() -> None:
    lst = mklist(A=IdTagInfo("Accepted"))
    cfg = replace(CFG, local_authorize_offline=False)
    assert run("A", online=False, config=cfg, lst=lst).outcome == "Refused"
    d = run("A", online=False, config=replace(cfg, allow_offline_tx_for_unknown_id=True), lst=lst)
    assert (d.outcome, d.source) == ("Accepted", "offline-unknown")


def test_offline_unknown_follows_allow_offline_tx_for_unknown_id() -> None:
    d = run("NEW", online=False)
    assert (d.outcome, d.source) == ("Refused", "offline-unknown")
    d = run("NEW", online=False, config=replace(CFG, allow_offline_tx_for_unknown_id=True))
    assert (d.outcome, d.source, d.info) == ("Accepted", "offline-unknown", None)


@pytest.mark.parametrize("status", ["Blocked", "Invalid", "Expired", "ConcurrentTx"])
@pytest.mark.parametrize("where", ["list", "cache"])
def test_offline_not_accepted_entry_is_refused_even_when_unknown_ids_allowed(status: str, where: str) -> None:
    info = IdTagInfo(status)  # type: ignore[arg-type]
    kw = {"lst": mklist(A=info)} if where == "list" else {"cache": mkcache(A=info)}
    d = run("A", online=False, config=replace(CFG, allow_offline_tx_for_unknown_id=True), **kw)
    assert (d.outcome, d.source) == ("Refused", where)


@pytest.mark.parametrize("where", ["list", "cache"])
def test_offline_apparently_expired_entry_is_refused(where: str) -> None:
    info = IdTagInfo("Accepted", PAST)
    kw = {"lst": mklist(A=info)} if where == "list" else {"cache": mkcache(A=info)}
    d = run("A", online=False, config=replace(CFG, allow_offline_tx_for_unknown_id=True), **kw)
    assert d.outcome == "Refused" and d.info is not None and d.info.status == "Expired"


def test_a_disabled_source_is_not_consulted() -> None:
    cfg = replace(
        CFG,
        allow_offline_tx_for_unknown_id=True,
        local_auth_list_enabled=False,
        authorization_cache_enabled=False,
    )
    # with both sources switched off every tag is unknown: AllowOfflineTxForUnknownId decides
    assert run("A", online=False, config=cfg, lst=mklist(A=IdTagInfo("Blocked"))).outcome == "Accepted"
    assert run("B", online=False, config=cfg, cache=mkcache(B=IdTagInfo("Invalid"))).outcome == "Accepted"
    cfg = replace(cfg, allow_offline_tx_for_unknown_id=False)
    assert run("A", online=False, config=cfg, lst=mklist(A=IdTagInfo("Accepted"))).outcome == "Refused"


def test_invalid_tag_is_refused_without_lookup() -> None:
    cfg = replace(CFG, allow_offline_tx_for_unknown_id=True)
    for tag in ("", "X" * 21, "bad\ttag", "ÜBER"):
        d = run(tag, online=False, config=cfg)
        assert (d.outcome, d.source) == ("Refused", "invalid-tag")


def test_none_list_and_cache_are_allowed() -> None:
    d = decide("A", now=NOW, online=False, config=replace(CFG, allow_offline_tx_for_unknown_id=True),
               local_list=None, cache=None)  # fmt: skip
    assert d.outcome == "Accepted"


def test_decide_counts_as_cache_use() -> None:
    cache = AuthCache(2)
    cache.update("A", IdTagInfo("Accepted"), NOW)
    cache.update("B", IdTagInfo("Accepted"), NOW)
    run("A", online=True, cache=cache)
    cache.update("C", IdTagInfo("Accepted"), NOW)
    assert "A" in cache and "B" not in cache


def test_decide_refuses_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide("A", now=datetime(2024, 1, 1), online=True, config=CFG, local_list=None, cache=None)


# ---------------------------------------------------------------------------------------------- CSMS answer


def test_decision_from_csms() -> None:
    assert decision_from_csms(IdTagInfo("Accepted", FUTURE), NOW).outcome == "Accepted"
    assert decision_from_csms(IdTagInfo("Accepted", PAST), NOW).outcome == "Refused"
    for status in ("Blocked", "Invalid", "Expired", "ConcurrentTx"):
        d = decision_from_csms(IdTagInfo(status), NOW)  # type: ignore[arg-type]
        assert (d.outcome, d.source) == ("Refused", "csms")


def test_local_list_conflict() -> None:
    lst = mklist(A=IdTagInfo("Accepted"), B=IdTagInfo("Accepted", PAST))
    assert local_list_conflict(lst, "a", IdTagInfo("Blocked"), NOW) is True
    assert local_list_conflict(lst, "A", IdTagInfo("Accepted", FUTURE), NOW) is False
    assert local_list_conflict(lst, "B", IdTagInfo("Expired"), NOW) is False  # list entry is expired too
    assert local_list_conflict(lst, "Z", IdTagInfo("Blocked"), NOW) is False
    assert local_list_conflict(None, "A", IdTagInfo("Blocked"), NOW) is False


# ---------------------------------------------------------------------------------------------- stop


def test_same_group() -> None:
    g = IdTagInfo("Accepted", None, "GROUP")
    assert same_group("abc", None, "ABC", None) is True
    assert same_group("A", g, "B", IdTagInfo("Accepted", None, "group")) is True
    assert same_group("A", g, "B", IdTagInfo("Accepted", None, "OTHER")) is False
    assert same_group("A", g, "B", IdTagInfo("Accepted")) is False
    assert same_group("A", IdTagInfo("Accepted"), "B", IdTagInfo("Accepted")) is False
    assert same_group("A", g, "B", None) is False


def stop(presented: str, *, online: bool, tx_parent: str | None = "G", lst=None, cache=None):  # type: ignore[no-untyped-def]
    return decide_stop(
        presented,
        tx_id_tag="STARTER",
        tx_parent_id_tag=tx_parent,
        now=NOW,
        online=online,
        config=CFG,
        local_list=lst if lst is not None else mklist(),
        cache=cache if cache is not None else mkcache(),
    )


@pytest.mark.parametrize("online", [True, False])
def test_stop_with_same_tag_is_local(online: bool) -> None:
    d = stop("starter", online=online, tx_parent=None)
    assert (d.outcome, d.source) == ("Accepted", "same-tag")


@pytest.mark.parametrize("online", [True, False])
def test_stop_with_other_tag_same_parent_from_list_or_cache(online: bool) -> None:
    d = stop("OTHER", online=online, lst=mklist(OTHER=IdTagInfo("Accepted", None, "G")))
    assert (d.outcome, d.source) == ("Accepted", "list")
    d = stop("OTHER", online=online, cache=mkcache(OTHER=IdTagInfo("Accepted", None, "g")))
    assert (d.outcome, d.source) == ("Accepted", "cache")


def test_stop_with_unknown_other_tag_asks_csms_online_refuses_offline() -> None:
    assert stop("OTHER", online=True).outcome == "AskCSMS"
    assert stop("OTHER", online=False).outcome == "Refused"


def test_stop_with_other_group_is_not_local() -> None:
    lst = mklist(OTHER=IdTagInfo("Accepted", None, "H"))
    assert stop("OTHER", online=True, lst=lst).outcome == "AskCSMS"
    assert stop("OTHER", online=False, lst=lst).outcome == "Refused"


def test_stop_with_blocked_tag_of_same_group_is_not_local() -> None:
    lst = mklist(OTHER=IdTagInfo("Blocked", None, "G"))
    assert stop("OTHER", online=True, lst=lst).outcome == "AskCSMS"
    assert stop("OTHER", online=False, lst=lst).outcome == "Refused"


def test_stop_derives_transaction_parent_from_list_when_not_given() -> None:
    lst = mklist(STARTER=IdTagInfo("Accepted", None, "G"), OTHER=IdTagInfo("Accepted", None, "G"))
    assert stop("OTHER", online=False, tx_parent=None, lst=lst).outcome == "Accepted"
    lst = mklist(OTHER=IdTagInfo("Accepted", None, "G"))
    assert stop("OTHER", online=True, tx_parent=None, lst=lst).outcome == "AskCSMS"  # parent unknown


def test_may_stop_from_csms() -> None:
    kw = {"tx_id_tag": "STARTER", "tx_parent_id_tag": "G", "now": NOW}
    assert may_stop_from_csms("OTHER", IdTagInfo("Accepted", None, "g"), **kw) is True  # type: ignore[arg-type]
    assert may_stop_from_csms("OTHER", IdTagInfo("Accepted", None, "H"), **kw) is False  # type: ignore[arg-type]
    assert may_stop_from_csms("OTHER", IdTagInfo("Blocked", None, "G"), **kw) is False  # type: ignore[arg-type]
    assert may_stop_from_csms("OTHER", IdTagInfo("Accepted", PAST, "G"), **kw) is False  # type: ignore[arg-type]
    assert may_stop_from_csms("OTHER", IdTagInfo("Accepted"), **kw) is False  # type: ignore[arg-type]
    assert (
        may_stop_from_csms(
            "OTHER", IdTagInfo("Accepted", None, "G"), tx_id_tag="S", tx_parent_id_tag=None, now=NOW
        )
        is False
    )


# ---------------------------------------------------------------------------------------------- property

TAGS = [f"T{i}" for i in range(6)]
_statuses = st.sampled_from(["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"])
_expiry = st.one_of(
    st.none(), st.integers(min_value=-3600, max_value=3600).map(lambda s: NOW + timedelta(seconds=s))
)
_info = st.builds(
    IdTagInfo, status=_statuses, expiry_date=_expiry, parent_id_tag=st.sampled_from([None, "G"])
)
_entries = st.dictionaries(st.sampled_from(TAGS), _info, max_size=6)
_config = st.builds(AuthConfig, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans())


@settings(max_examples=300, deadline=None)
@given(list_entries=_entries, cache_entries=_entries, config=_config, online=st.booleans())
def test_a_refusing_deciding_entry_is_never_accepted(
    list_entries: dict[str, IdTagInfo], cache_entries: dict[str, IdTagInfo], config: AuthConfig, online: bool
) -> None:
    lst = LocalAuthList(1, list_entries)
    cache = AuthCache(len(TAGS))
    for tag, info in cache_entries.items():
        cache.update(tag, info, NOW - timedelta(hours=2))  # stored while still valid; expiry judged at NOW
    for tag in TAGS:
        # the entry that decides: the list's when the list is enabled and has one (§3.5), else the cache's
        deciding = None
        if config.local_auth_list_enabled and tag in list_entries:
            deciding = list_entries[tag]
        elif config.authorization_cache_enabled and tag in cache_entries:
            deciding = cache_entries[tag]
        infos = [deciding] if deciding is not None else []
        negative = any(
            i.status != "Accepted" or (i.expiry_date is not None and i.expiry_date <= NOW) for i in infos
        )
        d = decide(tag, now=NOW, online=online, config=config, local_list=lst, cache=cache)
        if negative:
            assert d.outcome != "Accepted", (tag, infos, config, d)
            assert d.outcome == ("AskCSMS" if online else "Refused")
        if not online and d.outcome == "Accepted":
            # offline acceptance has exactly two grounds
            assert (infos and config.local_authorize_offline) or config.allow_offline_tx_for_unknown_id
