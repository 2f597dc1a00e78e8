"""Dependencies every router shares: the broker and the authenticated principal."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from qhpc.broker import Broker
from qhpc.logcontext import bind
from qhpc.security import AuthError, Principal

# auto_error=False: the scheme is declared for OpenAPI, but the header is parsed
# below so that "missing" and "malformed" get their own 401 messages.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="a qhpc token (qhpc_…) issued by an admin, or a session token",
)


def get_broker(request: Request) -> Broker:
    return cast(Broker, request.app.state.broker)


BrokerDep = Annotated[Broker, Depends(get_broker)]


def get_principal(
    request: Request,
    broker: BrokerDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Principal:
    header = request.headers.get("authorization")
    if header is None:
        raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthError("malformed Authorization header: expected 'Bearer <token>'")
    principal = broker.access.authenticate(secret.strip())
    # The request's later records (its handler runs on another thread) name who asked.
    bind(user=principal.subject, session_id=principal.session_id)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
