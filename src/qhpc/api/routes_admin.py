"""Reservations, accounts, accounting and tokens: mostly admin business."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from qhpc.api import rules
from qhpc.api.deps import BrokerDep, CurrentPrincipal
from qhpc.api.models import (
    AccountUpdate,
    GroupBy,
    Name,
    PathId,
    QueryName,
    ReservationRequest,
    TokenRequest,
)
from qhpc.api.views import (
    AccountingView,
    AccountView,
    ReservationView,
    TokenCreated,
    TokenView,
    UsageRow,
    account_view,
    reservation_view,
    token_view,
)
from qhpc.security import PermissionDenied, Principal, Role
from qhpc.store import AccountRecord, NotFoundError, ReservationRecord

reservations = APIRouter(prefix="/reservations", tags=["reservations"])
accounts = APIRouter(prefix="/accounts", tags=["accounts"])
accounting = APIRouter(prefix="/accounting", tags=["accounting"])
tokens = APIRouter(prefix="/tokens", tags=["tokens"])

_Time = Annotated[float | None, Query(ge=0, le=1e11, allow_inf_nan=False)]


# -- reservations: booked windows are public so everyone can plan around them ------------


@reservations.post("", status_code=201, summary="book a window on a resource (admin)")
def create_reservation(
    broker: BrokerDep, principal: CurrentPrincipal, body: ReservationRequest
) -> ReservationView:
    principal.require(Role.ADMIN)
    broker.resources.spec(body.resource)
    record = ReservationRecord(
        reservation_id=uuid.uuid4().hex, resource=body.resource, account=body.account,
        start=body.start, end=body.end, allow_backfill=body.allow_backfill,
        created_by=principal.subject,
    )  # fmt: skip
    broker.records.create_reservation(record)  # overlap → 409
    return reservation_view(record)


@reservations.get("", summary="reservations by start time (past ones with include_past)")
def list_reservations(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    resource: QueryName = None,
    include_past: bool = False,
) -> list[ReservationView]:
    after = None if include_past else broker.clock()
    found = broker.records.reservations(resource=resource, ending_after=after)
    return [reservation_view(r) for r in found]


@reservations.delete("/{reservation_id}", status_code=204, summary="drop a reservation (admin)")
def delete_reservation(
    broker: BrokerDep, principal: CurrentPrincipal, reservation_id: PathId
) -> Response:
    principal.require(Role.ADMIN)
    broker.records.delete_reservation(reservation_id)
    return Response(status_code=204)


# -- accounts -----------------------------------------------------------------------------


def _account_visible(principal: Principal, account: AccountRecord) -> bool:
    if principal.role is Role.ADMIN:
        return True
    if principal.role is Role.CENTRE:
        return principal.centre is not None and account.centre == principal.centre
    return account.name == principal.account


@accounts.get("", summary="accounts: all (admin), the centre's, or the token's own")
def list_accounts(broker: BrokerDep, principal: CurrentPrincipal) -> list[AccountView]:
    return [account_view(a) for a in broker.records.accounts() if _account_visible(principal, a)]


@accounts.get("/{name}", summary="one account with its fair-share weight")
def get_account(broker: BrokerDep, principal: CurrentPrincipal, name: PathId) -> AccountView:
    account = broker.records.account(name)
    if not _account_visible(principal, account):
        raise NotFoundError(f"no account {name!r}")
    return account_view(account)


@accounts.put("/{name}", summary="create an account or set its shares and centre (admin)")
def put_account(
    broker: BrokerDep, principal: CurrentPrincipal, name: Name, body: AccountUpdate
) -> AccountView:
    principal.require(Role.ADMIN)
    record = AccountRecord(name=name, shares=body.shares, centre=body.centre)
    broker.records.upsert_account(record)
    return account_view(record)


# -- accounting ---------------------------------------------------------------------------


@accounting.get(
    "",
    summary="QPU usage totals per group in [since, until)",
    description="Admins see everything; centre tokens their centre's usage; users their own.",
)
def get_accounting(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    group_by: GroupBy = "account",
    since: _Time = None,
    until: _Time = None,
) -> AccountingView:
    rules.no_session_tokens(principal)
    if principal.role is Role.ADMIN:
        rows = broker.records.usage_rollup(group_by, since=since, until=until)
    elif principal.role is Role.CENTRE:
        if principal.centre is None:
            rows = []
        else:
            usage = broker.records.usage(since=since, until=until, centre=principal.centre)
            rows = rules.rollup(usage, group_by)
    else:
        usage = broker.records.usage(since=since, until=until, user=principal.subject)
        rows = rules.rollup(usage, group_by)
    return AccountingView(
        group_by=group_by, since=since, until=until, rows=[UsageRow(**r) for r in rows]
    )


# -- tokens -------------------------------------------------------------------------------


@tokens.post("", status_code=201, summary="issue a token (admin); the secret is shown once")
def create_token(
    broker: BrokerDep, principal: CurrentPrincipal, body: TokenRequest
) -> TokenCreated:
    principal.require(Role.ADMIN)
    if body.resource is not None:
        broker.resources.spec(body.resource)
    expires = None if body.ttl_seconds is None else broker.clock() + body.ttl_seconds
    record, secret = broker.access.issue(
        Role(body.role), body.subject, account=body.account, centre=body.centre,
        resource=body.resource, expires_at=expires,
    )  # fmt: skip
    return TokenCreated(**token_view(record).model_dump(), token=secret)


@tokens.get("", summary="tokens (admin); never hashes or secrets")
def list_tokens(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    subject: QueryName = None,
    include_revoked: bool = False,
) -> list[TokenView]:
    principal.require(Role.ADMIN)
    found = broker.records.tokens(subject=subject, include_revoked=include_revoked)
    return [token_view(t) for t in found]


@tokens.delete(
    "/{token_id}", status_code=204, summary="revoke a token (admin, or the token's holder)"
)
def revoke_token(broker: BrokerDep, principal: CurrentPrincipal, token_id: PathId) -> Response:
    # Decided before any lookup, so a non-admin learns nothing about other ids.
    if not principal.is_admin and principal.token_id != token_id:
        raise PermissionDenied("only admins may revoke other tokens")
    broker.access.revoke(token_id)
    return Response(status_code=204)
