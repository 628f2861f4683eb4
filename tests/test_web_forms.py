"""Fuzzing the web UI's parsers and command endpoints: random input → a 4xx with a message, never a 5xx,
never a command sent to the station."""

from __future__ import annotations

import random
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.frontends.web.forms import (
    FormError,
    field,
    parse_amps,
    parse_connector_id,
    parse_date,
    parse_id_tag,
    parse_switch,
)
from tests.web_fakes import FakeApi
from tests.web_helpers import client_for, login

PARSERS = (parse_amps, parse_connector_id, parse_id_tag, parse_switch,
           lambda t: parse_date(t, "from"))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_parsers_give_a_value_or_a_form_error(text: str) -> None:
    for parse in PARSERS:
        try:
            parse(text)
        except FormError as exc:
            assert 400 <= exc.status < 500 and exc.message


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_amps_from_any_float_text(x: float) -> None:
    try:
        amps = parse_amps(repr(x))
    except FormError:
        return
    assert amps is not None and 0 <= amps <= 1000


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=100), st.binary(max_size=10))))
def test_field_never_raises_anything_but_form_error(form: dict) -> None:
    for name in list(form)[:3] + ["amps"]:
        try:
            field(form, name)
        except FormError as exc:
            assert exc.status == 400


def test_id_tag_and_amps_examples() -> None:
    assert parse_id_tag("04A2B3C4") == "04A2B3C4" and parse_id_tag("") is None
    assert parse_amps("16") == 16.0 and parse_amps("10,5") == 10.5 and parse_amps("") is None
    for bad in ("1e3", "inf", "-1", "16 A", "0x10", "１６"):
        try:
            parse_amps(bad)
        except FormError:
            continue
        raise AssertionError(bad)


def _random_text(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.uniform(-1e6, 1e6))
    if kind == 1:
        return str(rng.randrange(-10, 100))
    if kind == 2:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(0, 80)))
    if kind == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))).decode("latin-1")
    if kind == 4:
        return rng.choice(["", "nan", "inf", "-0", "1e309", "None", "true", "<script>", "' OR 1=1", "🔌" * 30])
    return "x" * rng.randrange(0, 5000)


async def test_fuzzed_commands_are_4xx_and_switch_nothing() -> None:
    """Random connector ids, actions and fields with a valid session and token: never a 5xx, and a
    refused request changes nothing at the station."""
    rng = random.Random(1414)
    api = FakeApi()
    async with client_for(api) as client:
        token = await login(client)
        for _ in range(300):
            cid = rng.choice(["1", "2", "3", "0", "-1", "01", "9999", "abc", "1.5", "%00", _random_text(rng)[:8]])
            action = rng.choice(["start", "stop", "limit", "available", "clear-fault", "reset"])
            data = {name: _random_text(rng) for name in rng.sample(["id_tag", "amps", "available", "x"], 2)}
            data["csrf"] = token
            calls = len(api.calls)
            before = api.view
            path = f"/connectors/{cid}/{action}"
            try:
                resp = await client.post(path, data=data, headers={"Accept": "application/json"})
            except ValueError:  # the client refuses to build that URL at all: nothing was sent
                continue
            assert resp.status < 500, (path, data, await resp.text())
            if resp.status >= 400:
                assert len(api.calls) == calls and api.view == before, (path, data)
                body = await resp.json()
                assert body["ok"] is False and body["message"]
            # keep the station in a state where commands can do something
            if rng.random() < 0.1:
                api.view = FakeApi().view


async def test_fuzzed_raw_bodies_and_headers_are_4xx() -> None:
    rng = random.Random(7)
    api = FakeApi()
    async with client_for(api) as client:
        token = await login(client)
        for _ in range(150):
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
            ctype = rng.choice(["application/x-www-form-urlencoded", "multipart/form-data",
                                "multipart/form-data; boundary=" + _random_text(rng)[:20], "text/plain",
                                "application/json", _random_text(rng)[:30]])
            headers = {"Content-Type": ctype, "Accept": "application/json"}
            if rng.random() < 0.5:
                headers["X-CSRF-Token"] = token
            try:
                resp = await client.post(rng.choice(["/connectors/1/limit", "/login", "/logout",
                                                     "/connectors/2/start"]), data=body, headers=headers)
            except ValueError:
                continue
            assert resp.status < 500, (body, ctype, await resp.text())
    assert api.calls == []
