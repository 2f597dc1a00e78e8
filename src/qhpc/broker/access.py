"""Tokens in the store: issue, resolve to a principal, revoke.

The secret is returned once by :meth:`Access.issue`; the store keeps only its
hash. :meth:`Access.authenticate` turns a presented secret into a
:class:`~qhpc.security.Principal` or raises :class:`~qhpc.security.AuthError`
(unknown, expired, revoked) — one message for all three would hide nothing an
attacker needs and cost users their diagnosis, so each says which.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from qhpc.security import (
    AuthError,
    Principal,
    Role,
    TokenExpired,
    TokenRevoked,
    hash_token,
    new_token,
)
from qhpc.store import Store, TokenRecord


class Access:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def issue(
        self,
        role: Role,
        subject: str,
        *,
        account: str | None = None,
        centre: str | None = None,
        session_id: str | None = None,
        resource: str | None = None,
        expires_at: float | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token; returns its record and the secret (shown once)."""
        secret = new_token()
        record = TokenRecord(
            token_id=uuid.uuid4().hex,
            token_hash=hash_token(secret),
            role=str(role),
            subject=subject,
            account=account,
            centre=centre,
            session_id=session_id,
            resource=resource,
            created_at=self.clock(),
            expires_at=expires_at,
            revoked_at=None,
        )
        self.store.create_token(record)
        return record, secret

    def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            raise AuthError("missing bearer token")
        record = self.store.token_by_hash(hash_token(secret))
        if record is None:
            raise AuthError("unknown token")
        if record.revoked_at is not None:
            raise TokenRevoked("token was revoked")
        if record.expires_at is not None and record.expires_at <= self.clock():
            raise TokenExpired("token has expired")
        return Principal(
            token_id=record.token_id,
            role=Role(record.role),
            subject=record.subject,
            account=record.account,
            centre=record.centre,
            session_id=record.session_id,
            resource=record.resource,
        )

    def revoke(self, token_id: str) -> None:
        self.store.revoke_token(token_id, self.clock())
