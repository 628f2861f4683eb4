"""Passwords, login sessions, CSRF tokens and the login rate limit of the web UI.

Pure logic: no I/O and no clock of its own (``now`` is an argument, loop time in seconds), so the rules
are tested without a server. The aiohttp layer (:mod:`chargepoint.frontends.web.app`) holds one
:class:`SessionStore` and one :class:`LoginLimiter` and runs :func:`verify_password` in a thread: scrypt
takes tens of milliseconds on purpose, which the control loop must never wait for.

Why scrypt from :mod:`hashlib` and not argon2: it is in the standard library (OpenSSL), so no compiled
dependency is added for one hash; with n=2**14, r=8 (16 MiB) it is memory-hard like argon2 and slow enough
that a stolen configuration file does not give the password away cheaply.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from chargepoint.api import Role

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_PREFIX = "scrypt"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # a longer "password" is a denial-of-service attempt on the hash, not a password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    """``scrypt$n=16384,r=8,p=1$<salt>$<hash>`` (base64 without padding): the form ``[web] password_hash``
    holds and ``chargepoint set-password`` writes."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password of {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=64 * 1024 * 1024, dklen=HASH_BYTES)
    return f"{_PREFIX}$n={n},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class _Parsed:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _parse_hash(stored: str) -> _Parsed:
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != _PREFIX:
        raise ValueError("not a scrypt$… hash")
    try:
        params = dict(item.split("=", 1) for item in parts[1].split(","))
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
        salt, digest = _unb64(parts[2]), _unb64(parts[3])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"damaged scrypt hash ({exc})") from None
    if n < 2**10 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 4:
        raise ValueError("scrypt parameters out of range")
    if len(salt) < 8 or len(digest) != HASH_BYTES:
        raise ValueError("scrypt salt too short or hash not 32 bytes")
    return _Parsed(n, r, p, salt, digest)


def password_hash_problem(stored: str) -> str | None:
    """Why ``stored`` is not a usable password hash, or None (used by the configuration check)."""
    try:
        _parse_hash(stored)
    except ValueError as exc:
        return f"a hash written by `chargepoint set-password` ({exc})"
    return None


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison; False for a damaged hash or an absurd password (never raises)."""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        parsed = _parse_hash(stored)
        digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=parsed.salt, n=parsed.n,
                                r=parsed.r, p=parsed.p, maxmem=128 * 1024 * 1024, dklen=len(parsed.digest))
    except (ValueError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(digest, parsed.digest)


# ------------------------------------------------------------------------------------------------ sessions


@dataclass
class WebSession:
    """One browser: anonymous until a login. The CSRF token is per session and sent back in every form
    (hidden field ``csrf``) or fetch (header ``X-CSRF-Token``); a cross-site page cannot read it."""

    sid: str
    csrf: str
    role: Role | None  # None: not logged in (the viewer role, if enabled, applies)
    created: float
    last_seen: float


@dataclass
class SessionStore:
    """Bounded: at most ``max_sessions`` (the least recently used goes first), so a flood of anonymous
    requests costs memory only up to that bound. ``idle_s`` ends a session nobody used; ``max_age_s`` ends
    any session (a login lasts at most that long)."""

    max_sessions: int = 256
    idle_s: float = 3600.0
    max_age_s: float = 12 * 3600.0
    _sessions: OrderedDict[str, WebSession] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, sid: str | None, now: float) -> WebSession | None:
        if not sid:
            return None
        s = self._sessions.get(sid)
        if s is None:
            return None
        if now - s.last_seen > self.idle_s or now - s.created > self.max_age_s:
            del self._sessions[sid]
            return None
        s.last_seen = now
        self._sessions.move_to_end(sid)
        return s

    def new(self, now: float, role: Role | None = None) -> WebSession:
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        s = WebSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), role, now, now)
        self._sessions[s.sid] = s
        return s

    def login(self, old: WebSession | None, role: Role, now: float) -> WebSession:
        """A fresh session id and CSRF token at login (no session fixation: an id planted before the login
        is worth nothing after it)."""
        if old is not None:
            self._sessions.pop(old.sid, None)
        return self.new(now, role)

    def logout(self, s: WebSession) -> None:
        self._sessions.pop(s.sid, None)


def csrf_ok(session: WebSession | None, token: str | None) -> bool:
    return bool(session is not None and token and hmac.compare_digest(session.csrf.encode(), token.encode()))


# ------------------------------------------------------------------------------------------------ rate limit


@dataclass
class LoginLimiter:
    """Failed logins per client address in a sliding window, plus a bound for all addresses together (a
    guesser with many addresses is still slowed down). Successful logins do not count."""

    per_client: int = 5
    overall: int = 30
    window_s: float = 60.0
    max_clients: int = 1024
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _all: deque[float] = field(default_factory=deque)

    def _trim(self, q: deque[float], now: float) -> None:
        while q and now - q[0] >= self.window_s:
            q.popleft()

    def retry_after(self, client: str, now: float) -> float:
        """0 when a login attempt may be tried now, else the seconds until one may."""
        self._trim(self._all, now)
        q = self._failures.get(client)
        wait = 0.0
        if q is not None:
            self._trim(q, now)
            if len(q) >= self.per_client:
                wait = q[0] + self.window_s - now
        if len(self._all) >= self.overall:
            wait = max(wait, self._all[0] + self.window_s - now)
        return max(0.0, wait)

    def failed(self, client: str, now: float) -> None:
        q = self._failures.pop(client, None) or deque()
        q.append(now)
        self._failures[client] = q
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
        self._all.append(now)
