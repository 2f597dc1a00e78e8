"""Who is looking at the console: sign-in with a qhpc token, cookie sessions, CSRF.

A browser cannot send ``Authorization: Bearer`` on a plain link, and a token kept in
the page's JavaScript would be readable by any script that ever got in. So the
console trades the token once, at sign-in, for a *console login*: a random id
(256 bits) in a cookie the page's scripts cannot read (``HttpOnly``), that other
sites cannot make the browser send (``SameSite=Strict``) and that no other path of
the broker sees (``Path=/dashboard``); ``Secure`` when the request came over https.

The logins live in this process's memory only (a broker restart signs everyone
out), keyed by the SHA-256 of the cookie value, so a lookup compares hashes and a
memory dump shows no usable cookie. Each login keeps the token's secret so that
every request checks the token again (:meth:`Logins.current`): a token that was
revoked or has expired ends its console logins at the next request. A login lasts
:data:`LOGIN_SECONDS` at most, and never past the token's own expiry.

Every state-changing request (sign-in, sign-out, cancel) is a POST that must come
from the console itself: its ``Origin`` (or, failing that, ``Referer``) must be this
server's own origin, and, once signed in, it must carry the login's CSRF token
(a form field or the ``X-CSRF-Token`` header). GETs change nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from qhpc.broker import Broker
from qhpc.security import AuthError, Principal, Role

#: the cookie that carries a console login's id
COOKIE = "qhpc_console"
#: the cookie's path, and the prefix of every console URL
CONSOLE_PATH = "/dashboard"
#: longest a console login lasts (it also ends with its token)
LOGIN_SECONDS = 8 * 3600.0
#: most console logins kept at once; the oldest go first past it
MAX_LOGINS = 10_000
#: the hidden form field and the header that carry the CSRF token
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
#: a cookie value as :func:`secrets.token_urlsafe` (32 bytes) makes it
_COOKIE_LENGTH = 43

SESSION_TOKENS_REFUSED = (
    "session tokens cannot sign in to the console: a session token belongs to one "
    "Slurm job's session. Sign in with your own qhpc user token."
)


class CrossSiteRequest(Exception):
    """A state-changing request that did not come from the console (HTTP 403)."""


@dataclass(frozen=True)
class Login:
    """One signed-in browser: who, until when, and the token for its forms."""

    key: str  # SHA-256 of the cookie value
    principal: Principal
    secret: str  # the qhpc token, kept to check it again on each request
    csrf: str
    created_at: float
    expires_at: float


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class Logins:
    """The console logins of one app (see the module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._logins: dict[str, Login] = {}
        self._lock = threading.Lock()

    def sign_in(self, broker: Broker, secret: str) -> tuple[str, Login]:
        """A new login for ``secret``; returns the cookie value and the login.

        Raises :class:`AuthError` for a token that is unknown, malformed, expired
        or revoked, or that is a session token.
        """
        principal = broker.access.authenticate(secret)
        if principal.role is Role.SESSION:
            raise AuthError(SESSION_TOKENS_REFUSED)
        now = self.clock()
        expires = now + LOGIN_SECONDS
        token_end = _token_expiry(broker, principal)
        if token_end is not None:
            expires = min(expires, token_end)
        cookie = secrets.token_urlsafe(32)
        login = Login(_key(cookie), principal, secret, secrets.token_urlsafe(32), now, expires)
        with self._lock:
            self._purge(now)
            while len(self._logins) >= MAX_LOGINS:
                oldest = min(self._logins.values(), key=lambda entry: entry.created_at)
                del self._logins[oldest.key]
            self._logins[login.key] = login
        return cookie, login

    def current(self, broker: Broker, cookie: str | None) -> Login | None:
        """The live login this cookie names, its token checked again; else None."""
        if cookie is None or len(cookie) != _COOKIE_LENGTH:
            return None
        key = _key(cookie)
        with self._lock:
            login = self._logins.get(key)
        if login is None:
            return None
        if login.expires_at <= self.clock():
            self.end(cookie)
            return None
        try:
            broker.access.authenticate(login.secret)
        except AuthError:  # revoked or expired since sign-in
            self.end(cookie)
            return None
        return login

    def end(self, cookie: str) -> None:
        with self._lock:
            self._logins.pop(_key(cookie), None)

    def count(self) -> int:
        with self._lock:
            return len(self._logins)

    def _purge(self, now: float) -> None:
        for key in [k for k, login in self._logins.items() if login.expires_at <= now]:
            del self._logins[key]


def _token_expiry(broker: Broker, principal: Principal) -> float | None:
    for record in broker.records.tokens(subject=principal.subject):
        if record.token_id == principal.token_id:
            return record.expires_at
    return None


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def cookie_header(request: Request, value: str, max_age: int) -> str:
    """The ``Set-Cookie`` value of a login (``max_age`` 0 deletes it)."""
    parts = [
        f"{COOKIE}={value}", f"Max-Age={max_age}", f"Path={CONSOLE_PATH}", "HttpOnly",
        "SameSite=Strict",
    ]  # fmt: skip
    if is_https(request):
        parts.append("Secure")
    return "; ".join(parts)


def _origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_origin(request: Request) -> None:
    """Refuse a request whose ``Origin`` (else ``Referer``) is not this server's own.

    This server's origin is the scheme of the request and its ``Host`` header: a
    reverse proxy in front must pass both on (``X-Forwarded-Proto`` to uvicorn).
    A request with neither header is refused too: every browser that posts a form
    sends at least one of them to its own site.
    """
    host = request.headers.get("host")
    if not host:
        raise CrossSiteRequest("the request names no host")
    own = f"{request.url.scheme}://{host}".lower()
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        if _origin_of(origin) != own:
            raise CrossSiteRequest("the request came from another site")
        return
    referer = request.headers.get("referer")
    if referer is None or _origin_of(referer) != own:
        raise CrossSiteRequest("the request did not come from this console")


def check_csrf(login: Login, request: Request, form: dict[str, str]) -> None:
    """Refuse a POST of a login that lacks its CSRF token (after :func:`check_origin`)."""
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(sent.encode(), login.csrf.encode()):
        raise CrossSiteRequest("the form's CSRF token is missing or wrong; reload the page")
