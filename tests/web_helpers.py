"""Shared set-up of the web UI's tests: an app over the fake API and a logged-in client."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from chargepoint.frontends.web.app import WebContext, make_app
from chargepoint.frontends.web.auth import hash_password
from chargepoint.frontends.web.config import WebConfig

ADMIN_PW = "correct horse battery"
USER_PW = "user password 1"
# cheap scrypt parameters for tests (the real default is n=2**14)
ADMIN_HASH = hash_password(ADMIN_PW, n=2**10)
USER_HASH = hash_password(USER_PW, n=2**10)


def web_config(**kw: Any) -> WebConfig:
    base: dict[str, Any] = dict(enabled=True, listen="127.0.0.1", port=0, password_hash=ADMIN_HASH,
                                user_password_hash=USER_HASH)
    base.update(kw)
    return WebConfig(**base)


@asynccontextmanager
async def client_for(api: Any, context: WebContext | None = None, **kw: Any):
    app = make_app(api, web_config(**kw), context)
    async with TestClient(TestServer(app)) as client:
        yield client


async def csrf_of(client: TestClient, path: str = "/login") -> str:
    resp = await client.get(path)
    text = await resp.text()
    m = re.search(r'<meta name="csrf" content="([^"]+)"', text)
    assert m, text[:500]
    return m.group(1)


async def login(client: TestClient, password: str = ADMIN_PW) -> str:
    """Log in; returns the new session's CSRF token."""
    token = await csrf_of(client)
    resp = await client.post("/login", data={"csrf": token, "password": password, "next": "/"},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()
    return await csrf_of(client, "/")


async def post(client: TestClient, path: str, token: str | None, **data: str):
    if token is not None:
        data["csrf"] = token
    return await client.post(path, data=data, headers={"Accept": "application/json"}, allow_redirects=False)
