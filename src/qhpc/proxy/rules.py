"""What the proxy lets through, and what it reads from the traffic: pure functions.

A request path is split into segments and refused unless every segment is plain
(``resources.proxy.PROXY_SEGMENT``: no ``%``, no ``.``/``..``, no empty segment), so what
is matched here is exactly what the vendor receives. Then, by the resource's
:class:`ProxySpec`:

- ``POST <jobs>`` is a **submission**: its JSON body must name the resource's vendor
  backend (``backend_field``), so a session cannot run work on another QPU of the same
  vendor account;
- ``<jobs>/{id}`` and anything below it is **one job's**: allowed (GET, POST, DELETE)
  to the session that submitted that job only — the API asks the broker who did;
- anything else must match one of the ``allow`` rules, or is refused. Listing
  ``<jobs>`` is not allowed by default: it would show every tenant's jobs.

JSON is parsed only from bodies already inside the proxy's byte budgets, and a body
nested too deep for the parser is refused like malformed JSON.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any

from qhpc.resources import PROXY_SEGMENT, LimitExceeded, ProxySpec
from qhpc.security import PermissionDenied

#: the longest request path (after the resource) and query string forwarded
MAX_PATH_CHARS = 1024
MAX_QUERY_CHARS = 4096
#: answers larger than this are not searched for a job id or usage (they are passed on)
MAX_INSPECTED_BYTES = 4 << 20
#: the largest QPU seconds one vendor job may report (a year): past it, a vendor bug
MAX_QPU_SECONDS = 366 * 86400.0


class Kind(enum.Enum):
    SUBMIT = "submit"
    JOB = "job"
    ALLOWED = "allowed"


@dataclass(frozen=True)
class Decision:
    """A request the proxy may forward: what kind it is, and its path as forwarded."""

    kind: Kind
    segments: tuple[str, ...]
    #: the vendor job a JOB request is about
    job_id: str | None = None

    @property
    def path(self) -> str:
        return "/" + "/".join(self.segments)


class BadProxyRequest(PermissionDenied):
    """A path or body the proxy refuses to forward (HTTP 403)."""


def split_path(path: str) -> tuple[str, ...]:
    """The segments of a request path (without the ``/v1/proxy/RESOURCE`` prefix)."""
    if len(path) > MAX_PATH_CHARS:
        raise BadProxyRequest(f"the path is longer than {MAX_PATH_CHARS} characters")
    segments = tuple(path.strip("/").split("/")) if path.strip("/") else ()
    for segment in segments:
        if not PROXY_SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise BadProxyRequest(
                "each path segment must be letters, digits and ._~:@+,=- only "
                "(no empty, '.' or '..' segments, no percent-escapes)"
            )
    return segments


def classify(spec: ProxySpec, method: str, path: str, query: str) -> Decision:
    """What ``method path`` is for ``spec``'s vendor, or BadProxyRequest (403) if the
    proxy does not forward it."""
    if len(query) > MAX_QUERY_CHARS:
        raise LimitExceeded("query characters", MAX_QUERY_CHARS, "the query string is too long")
    segments = split_path(path)
    jobs = spec.jobs
    if jobs is not None and segments[: len(jobs)] == jobs:
        if len(segments) == len(jobs) and method == "POST":
            return Decision(Kind.SUBMIT, segments)
        if len(segments) > len(jobs) and method in ("GET", "POST", "DELETE"):
            return Decision(Kind.JOB, segments, job_id=segments[len(jobs)])
    for rule in spec.allow:
        if rule.matches(method, segments):
            return Decision(Kind.ALLOWED, segments)
    shown = "/" + "/".join(segments)
    raise BadProxyRequest(
        f"{method} {shown} is not forwarded to the vendor of resource {spec.resource!r} "
        "(not a submission, not one of this session's jobs, not in the proxy's allow list)"
    )


def check_submission(spec: ProxySpec, body: bytes) -> Any:
    """The submission's JSON, if it names the resource's backend (BadProxyRequest if not)."""
    document = _json(body)
    if document is None or not isinstance(document, dict):
        raise BadProxyRequest("a job submission through the proxy must be a JSON object")
    if spec.backend is not None and document.get(spec.backend_field) != spec.backend:
        raise BadProxyRequest(
            f"a job submitted through the proxy of resource {spec.resource!r} must name "
            f"{spec.backend_field!r}: {spec.backend!r} (this session's QPU)"
        )
    return document


def job_id_of(spec: ProxySpec, answer: bytes, submission: Any) -> str | None:
    """The vendor job id of an accepted submission: in the answer's JSON, else in the
    request's (IBM's on-premises API takes the id from the client); None if neither
    holds a plain one."""
    for document in (_json(answer) if len(answer) <= MAX_INSPECTED_BYTES else None, submission):
        if isinstance(document, dict):
            value = document.get(spec.job_id_field)
            if (
                isinstance(value, str)
                and PROXY_SEGMENT.fullmatch(value)
                and value not in (".", "..")
            ):
                return value
    return None


def usage_of(spec: ProxySpec, answer: bytes) -> float | None:
    """The QPU seconds at ``spec.usage_field`` in a JSON answer about a job; None if the
    answer has none (or an implausible figure: negative, not finite, over a year)."""
    if len(answer) > MAX_INSPECTED_BYTES:
        return None
    value: Any = _json(answer)
    for key in spec.usage_field.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_QPU_SECONDS):
        return None
    return seconds


def _json(body: bytes) -> Any:
    """``body`` as JSON, None if it is not JSON (or nested deeper than the parser goes)."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None
