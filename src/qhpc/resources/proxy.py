"""The vendor proxy of a resource: its ``[resources.NAME.proxy]`` table, checked at load.

A job inside Slurm that uses a vendor's own SDK (QRMI, qiskit-ibm-runtime) talks to
the broker's proxy (``/v1/proxy/NAME/…``) with its session token; the broker adds
the vendor credential and forwards to ``base_url``. This module only reads and
checks the table, so that a bad one fails when the resources file is loaded, naming
the file, the resource and the key; forwarding lives in :mod:`qhpc.proxy`.

The credential itself is never in the table: ``credential_file`` names a file the
broker reads when it starts and again whenever it changes (rotation without a
restart), refused if group or others may read it. Example (IBM Qiskit Runtime)::

    [resources.heron.proxy]
    base_url = "https://quantum.cloud.ibm.com/api"
    credential_file = "/etc/qhpc/vendor/heron.token"    # root- or broker-owned, 0600
    headers = { "Service-CRN" = "crn:v1:…", "IBM-API-Version" = "2025-05-01" }
    jobs = "/v1/jobs"          # POST here submits; /v1/jobs/{id}/… only the submitter's
    backend = "ibm_torino"     # a submission must name this backend
    allow = ["GET /v1/backends/ibm_torino/**"]
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from qhpc.resources.errors import ResourceConfigError

#: a path segment the proxy forwards (RFC 3986 unreserved plus a few sub-delims);
#: anything else (``%``, ``/``, ``?``, ``#``, spaces, controls) is refused outright
PROXY_SEGMENT = re.compile(r"[A-Za-z0-9._~:@+,=-]{1,200}")
#: a header field name (RFC 9110 token)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: headers the proxy sets or that belong to one hop only: never configurable
RESERVED_HEADERS = frozenset(
    {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive",
        "proxy-authorization", "proxy-authenticate", "proxy-connection", "te", "trailer",
        "upgrade", "cookie", "set-cookie", "authorization", "forwarded", "x-forwarded-for",
        "x-forwarded-host", "x-forwarded-proto", "content-encoding",
    }
)  # fmt: skip
CREDENTIAL_PLACEHOLDER = "{credential}"

_KEYS = {
    "base_url", "credential_file", "auth_header", "auth_value", "headers", "pass_headers",
    "pass_response_headers", "jobs", "job_id_field", "backend", "backend_field",
    "usage_field", "allow", "max_request_bytes", "max_response_bytes", "timeout",
    "connect_timeout", "max_connections", "http_proxy",
}  # fmt: skip


@dataclass(frozen=True)
class AllowRule:
    """``METHOD /a/*/b/**``: ``*`` is one segment, a final ``**`` any number (none too)."""

    method: str
    segments: tuple[str, ...]

    def matches(self, method: str, segments: tuple[str, ...]) -> bool:
        if method != self.method:
            return False
        pattern = self.segments
        if pattern and pattern[-1] == "**":
            head = pattern[:-1]
            return len(segments) >= len(head) and _fits(head, segments[: len(head)])
        return len(segments) == len(pattern) and _fits(pattern, segments)

    def __str__(self) -> str:
        return f"{self.method} /{'/'.join(self.segments)}"


def _fits(pattern: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    return all(p in ("*", s) for p, s in zip(pattern, segments, strict=True))


@dataclass(frozen=True)
class ProxySpec:
    """One resource's vendor proxy, as configured (see the module docstring)."""

    resource: str
    #: the vendor's API root, ``https://host[:port][/prefix]`` without a trailing slash
    base_url: str
    #: a file holding the credential, one line; read by the broker, never shown
    credential_file: str
    #: the header that carries the credential, and its value around ``{credential}``
    auth_header: str = "Authorization"
    auth_value: str = "Bearer {credential}"
    #: fixed headers added to every forwarded request (e.g. ``Service-CRN``)
    headers: tuple[tuple[str, str], ...] = ()
    #: the client's request headers forwarded as they are (lower case); all others dropped
    pass_headers: tuple[str, ...] = ("accept", "content-type")
    #: the vendor's response headers returned to the client (lower case); all others dropped
    pass_response_headers: tuple[str, ...] = ("content-type", "retry-after")
    #: the vendor's jobs collection: POST there submits, ``JOBS/{id}/…`` is the job's own
    jobs: tuple[str, ...] | None = None
    #: where a job's id is, in the submission's response (else in its request) JSON
    job_id_field: str = "id"
    #: the vendor backend a submission must name in ``backend_field`` (None: unchecked)
    backend: str | None = None
    backend_field: str = "backend"
    #: dotted path of a job's QPU seconds in the vendor's JSON answers about the job
    usage_field: str = "usage.quantum_seconds"
    #: further requests allowed as they are (e.g. reading the backend's properties)
    allow: tuple[AllowRule, ...] = ()
    max_request_bytes: int = 8 << 20
    max_response_bytes: int = 64 << 20
    #: seconds for one whole forwarded exchange, and for connecting
    timeout: float = 60.0
    connect_timeout: float = 10.0
    max_connections: int = 8
    #: an explicit outgoing HTTP proxy (the broker ignores HTTP(S)_PROXY and .netrc)
    http_proxy: str | None = None

    def auth_header_value(self, credential: str) -> str:
        return self.auth_value.replace(CREDENTIAL_PLACEHOLDER, credential)


def parse_proxy(resource: str, table: Any, source: str) -> ProxySpec:
    """The checked :class:`ProxySpec` of ``[resources.RESOURCE.proxy]`` (``table``)."""

    def fail(key: str, detail: str) -> ResourceConfigError:
        return ResourceConfigError(f"{source}: proxy: {detail}", resource, f"proxy.{key}")

    if not isinstance(table, dict):
        raise ResourceConfigError(f"{source}: 'proxy' must be a table", resource, "proxy")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; allowed: {', '.join(sorted(_KEYS))}")
    for required in ("base_url", "credential_file"):
        if required not in table:
            raise fail(required, "missing (the vendor's API root and the credential's file)")

    def text(key: str, default: str | None = None) -> str | None:
        value = table.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def number(key: str, default: float, low: float, high: float) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(key, f"must be a number, got {value!r}")
        if not (low <= value <= high and math.isfinite(value)):
            raise fail(key, f"must be between {low:g} and {high:g}, got {value!r}")
        return value

    base_url = _base_url(str(text("base_url")), lambda d: fail("base_url", d))
    credential_file = str(text("credential_file"))
    if not PurePosixPath(credential_file).is_absolute():
        raise fail("credential_file", "must be an absolute path")
    auth_header = _header_name(str(text("auth_header", "Authorization")), "auth_header", fail)
    auth_value = str(text("auth_value", "Bearer {credential}"))
    if auth_value.count(CREDENTIAL_PLACEHOLDER) != 1 or _unsafe_value(auth_value):
        raise fail("auth_value", "must contain '{credential}' once and no control characters")
    headers = table.get("headers", {})
    if not isinstance(headers, dict):
        raise fail("headers", "must be a table of header names to values")
    fixed: list[tuple[str, str]] = []
    for name, value in headers.items():
        checked = _header_name(name, "headers", fail)
        if checked.lower() == auth_header.lower():
            raise fail("headers", f"{name!r} is the credential's header (auth_header)")
        if not isinstance(value, str) or _unsafe_value(value):
            raise fail("headers", f"the value of {name!r} must be a string without controls")
        fixed.append((checked, value))
    jobs = text("jobs")
    backend = text("backend")
    if backend is not None and jobs is None:
        raise fail("backend", "needs 'jobs' (the path where jobs are submitted)")
    usage_field = str(text("usage_field", "usage.quantum_seconds"))
    if not all(usage_field.split(".")):
        raise fail("usage_field", "must be a dotted path of JSON keys, e.g. usage.quantum_seconds")
    proxy_url = text("http_proxy")
    if proxy_url is not None:
        _base_url(proxy_url, lambda d: fail("http_proxy", d), require_tls=False)
    passed = _header_list(table, "pass_headers", ("accept", "content-type"), fail)
    clash = set(passed) & {auth_header.lower(), *(name.lower() for name, _ in fixed)}
    if clash:
        raise fail(
            "pass_headers", f"{sorted(clash)[0]!r} is set by the proxy (credential, headers)"
        )
    return ProxySpec(
        resource=resource,
        base_url=base_url,
        credential_file=credential_file,
        auth_header=auth_header,
        auth_value=auth_value,
        headers=tuple(fixed),
        pass_headers=passed,
        pass_response_headers=_header_list(
            table, "pass_response_headers", ("content-type", "retry-after"), fail
        ),
        jobs=None if jobs is None else _pattern(jobs, lambda d: fail("jobs", d), wild=False),
        job_id_field=str(text("job_id_field", "id")),
        backend=backend,
        backend_field=str(text("backend_field", "backend")),
        usage_field=usage_field,
        allow=_allow_rules(table.get("allow", []), lambda d: fail("allow", d)),
        max_request_bytes=int(number("max_request_bytes", 8 << 20, 1, 1 << 30)),
        max_response_bytes=int(number("max_response_bytes", 64 << 20, 1, 1 << 31)),
        timeout=float(number("timeout", 60.0, 0.1, 3600)),
        connect_timeout=float(number("connect_timeout", 10.0, 0.1, 600)),
        max_connections=int(number("max_connections", 8, 1, 1024)),
        http_proxy=proxy_url,
    )


def _unsafe_value(value: str) -> bool:
    """A line break in a header value would let it smuggle in more headers."""
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def _header_name(name: Any, key: str, fail: Any) -> str:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise fail(key, f"{name!r} is not a header name")
    if name.lower() in RESERVED_HEADERS - {"authorization"} or (
        key != "auth_header" and name.lower() == "authorization"
    ):
        raise fail(key, f"{name!r} is set by the proxy itself or belongs to one hop only")
    return name


def _header_list(
    table: dict[str, Any], key: str, default: tuple[str, ...], fail: Any
) -> tuple[str, ...]:
    names = table.get(key, list(default))
    if not isinstance(names, list):
        raise fail(key, "must be a list of header names")
    return tuple(_header_name(name, key, fail).lower() for name in names)


def _base_url(url: str, fail: Any, *, require_tls: bool = True) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise fail("must be an http(s) URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise fail("must not carry credentials, a query or a fragment (use credential_file)")
    if require_tls and parts.scheme == "http" and not _loopback(parts.hostname):
        raise fail("plain http is allowed to a loopback address only; use https")
    return url.rstrip("/")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pattern(path: str, fail: Any, *, wild: bool) -> tuple[str, ...]:
    if not path.startswith("/"):
        raise fail(f"{path!r} must start with '/'")
    segments = tuple(path.strip("/").split("/")) if path.strip("/") else ()
    for index, segment in enumerate(segments):
        if wild and (segment == "*" or (segment == "**" and index == len(segments) - 1)):
            continue
        if not PROXY_SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise fail(f"{path!r}: segment {segment!r} is not allowed")
    return segments


def _allow_rules(rules: Any, fail: Any) -> tuple[AllowRule, ...]:
    if not isinstance(rules, list):
        raise fail("must be a list like ['GET /v1/backends/NAME/**']")
    parsed = []
    for rule in rules:
        method, _, path = str(rule).partition(" ")
        if not isinstance(rule, str) or method not in METHODS:
            raise fail(f"{rule!r}: expected 'METHOD /path' with METHOD one of {METHODS}")
        parsed.append(AllowRule(method, _pattern(path.strip(), fail, wild=True)))
    return tuple(parsed)
