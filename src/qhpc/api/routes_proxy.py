"""``/v1/proxy/{resource}/…``: a Slurm job's vendor SDK reaches its QPU's vendor.

Thin: who may (a session token of a session that holds this resource), then the
proxy room (``qhpc.proxy``) decides what passes and forwards it, and the broker
(``broker.vendor_jobs``) books submissions and QPU seconds and says who owns a vendor
job. Async, so a slow vendor costs a socket, not one of the worker threads that serve
the rest of the API; store calls run on those threads.

Booking after the vendor accepted a job never fails the request: the job exists at
the vendor whatever the store says, and an error would make the client submit again.
A booking that fails is logged as an error for the operators instead.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from qhpc.api.deps import BrokerDep, CurrentPrincipal
from qhpc.broker import Broker
from qhpc.proxy import (
    Decision,
    Kind,
    VendorProxies,
    check_submission,
    classify,
    job_id_of,
    usage_of,
)
from qhpc.resources import LimitExceeded, ProxySpec
from qhpc.security import PermissionDenied, Principal, Role
from qhpc.store import NotFoundError

log = logging.getLogger(__name__)

proxy = APIRouter(prefix="/proxy", tags=["proxy"])


def holder_of(principal: Principal, resource: str) -> str:
    """The session id of ``principal`` if it is a session token holding ``resource``."""
    if principal.role is not Role.SESSION or principal.session_id is None:
        raise PermissionDenied("the vendor proxy takes a session token (QHPC_SESSION) only")
    if principal.resource != resource:
        raise PermissionDenied(
            f"this session holds resource {principal.resource!r}, not {resource!r}"
        )
    return principal.session_id


async def forward(
    resource: str, path: str, request: Request, broker: BrokerDep, principal: CurrentPrincipal
) -> Response:
    session_id = holder_of(principal, resource)
    vendor = cast(VendorProxies, request.app.state.vendor_proxies).get(resource)
    spec = vendor.spec
    decision = classify(spec, request.method, path, request.url.query)
    body = await request.body()  # already bounded by the app's body limit
    if len(body) > spec.max_request_bytes:
        raise LimitExceeded(
            "max_request_bytes", spec.max_request_bytes, "the request body is too large"
        )
    submission = check_submission(spec, body) if decision.kind is Kind.SUBMIT else None
    if decision.job_id is not None:
        owner = await run_in_threadpool(broker.vendor_jobs.owner, resource, decision.job_id)
        if owner != session_id:  # someone else's job answers like a missing one
            raise NotFoundError(f"no vendor job {decision.job_id!r} in this session")
    answer = await vendor.forward(
        request.method, decision, request.url.query, request.headers, body
    )
    if 200 <= answer.status < 300:
        await run_in_threadpool(_book, broker, spec, decision, session_id, answer.body, submission)
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


# One route per method, each with its own operation id (one route for all five would
# publish five operations under one id).
for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
    proxy.add_api_route(
        "/{resource}/{path:path}",
        forward,
        methods=[_method],
        operation_id=f"proxy_{_method.lower()}",
        summary=f"forward a vendor API {_method} of this session's QPU, with the broker's "
        "credential",
        description="For vendor SDKs inside a Slurm job (QRMI, qiskit-ibm-runtime): point "
        "the SDK's endpoint at `/v1/proxy/RESOURCE` and send the session token as the "
        "bearer. Submissions must name the session's backend; a job's own paths answer its "
        "submitter only; other paths only if the resource's proxy allows them. Vendor "
        "answers pass through as they are (status, body, Content-Type, Retry-After); 502/504 "
        "when the vendor cannot be reached or answers what the proxy will not pass on.",
        response_class=Response,
    )


def _book(
    broker: Broker, spec: ProxySpec, decision: Decision, session_id: str, body: bytes,
    submission: Any,
) -> None:  # fmt: skip
    try:
        if decision.kind is Kind.SUBMIT:
            job_id = job_id_of(spec, body, submission)
            if job_id is None:
                log.error(
                    "vendor of %s accepted a job of session %s but named no usable %r; "
                    "not booked", spec.resource, session_id, spec.job_id_field,
                )  # fmt: skip
                return
            broker.vendor_jobs.submitted(session_id, job_id)
        elif decision.kind is Kind.JOB and decision.job_id is not None:
            seconds = usage_of(spec, body)
            if seconds is not None:
                broker.vendor_jobs.used(spec.resource, decision.job_id, seconds)
    except Exception:
        log.exception("booking a vendor request of session %s failed", session_id)
