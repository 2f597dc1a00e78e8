"""Bearer tokens and who may do what.

Tokens are 256 random bits, shown once, stored only as a SHA-256 hash. A slow
password hash (argon2, bcrypt) buys nothing here: guessing 2^256 secrets is out
of reach whatever the hash costs, and the broker checks a token on every
request. Each token carries a role:

- ``admin``   — everything, including resources, accounts and other tokens;
- ``centre``  — acts for users of its own centre (federation, Slurm hooks);
- ``user``    — sees and cancels only its own jobs, charges its account;
- ``session`` — scoped to one session on one resource; dies with the session.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from qhpc.errors import QhpcError

TOKEN_PREFIX = "qhpc_"


class Role(enum.StrEnum):
    ADMIN = "admin"
    CENTRE = "centre"
    USER = "user"
    SESSION = "session"


class AuthError(QhpcError):
    """The token is missing, malformed, unknown, expired or revoked (HTTP 401)."""


class TokenRevoked(AuthError):
    """The token was revoked: for a session token, its session was closed (HTTP 401,
    problem type ``token-revoked``, so a client can tell "session over" from "wrong
    token" without reading the message)."""


class TokenExpired(AuthError):
    """The token's end has passed: for a session token, its session's deadline (HTTP
    401, problem type ``token-expired``)."""


class PermissionDenied(QhpcError):
    """The token is valid but may not do this (HTTP 403)."""


def new_token() -> str:
    """A fresh secret: show it to its owner once, store only :func:`hash_token` of it."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise AuthError("malformed token: qhpc tokens start with 'qhpc_'")
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)


@dataclass(frozen=True)
class Principal:
    """Who is asking: the resolved, valid token."""

    token_id: str
    role: Role
    subject: str  # user name, centre name, or "admin"
    account: str | None = None
    centre: str | None = None
    session_id: str | None = None
    resource: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            allowed = ", ".join(str(r) for r in roles)
            raise PermissionDenied(f"this needs a token with role {allowed}; yours is {self.role}")

    def may_act_for(self, user: str, centre: str | None) -> bool:
        """May this principal see or change work owned by ``user`` of ``centre``?"""
        if self.role is Role.ADMIN:
            return True
        if self.role is Role.CENTRE:
            return centre is not None and centre == self.centre
        # A user name is only unique within its centre: the local "alice" is not the
        # "alice" a federated centre submits for.
        return user == self.subject and centre == self.centre

    def check_owner(self, user: str, centre: str | None, what: str) -> None:
        if not self.may_act_for(user, centre):
            raise PermissionDenied(f"{what} belongs to another user")
