"""Typed errors of the resources room; each message names what to fix."""

from __future__ import annotations

from qhpc.errors import QhpcError


class ResourceError(QhpcError):
    """Base class of errors raised by ``qhpc.resources``."""


#: longest parser message passed on: parsers quote the source, which can be long
MAX_DETAIL_CHARS = 300


class CircuitParseError(ResourceError):
    """A circuit source could not be read; carries the format, line and column."""

    def __init__(self, fmt: str, detail: str, line: int | None = None, column: int | None = None):
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[:MAX_DETAIL_CHARS] + " …"
        self.format = fmt
        self.detail = detail
        self.line = line
        self.column = column
        where = ""
        if line is not None:
            where = f" at line {line}" + (f", column {column}" if column is not None else "")
        super().__init__(f"invalid {fmt} circuit{where}: {detail}")


class LimitExceeded(ResourceError):
    """Untrusted input passed a decoding budget (bytes, operations, depth, time, memory).

    Names the limit and its value, never the input: the caller can fix the request or
    ask the operator to raise the limit (``qhpc serve --decode-limit``).
    """

    def __init__(self, limit: str, value: float | int, detail: str):
        self.limit = limit
        self.value = value
        self.detail = detail
        super().__init__(f"{detail} (limit {limit} = {value})")


class UnsupportedCircuitError(ResourceError):
    """A valid circuit uses something the target format or resource cannot express."""


class PayloadError(ResourceError):
    """A task payload does not fit the resource (width, shots, parameters, observables)."""


class UnknownResourceError(ResourceError):
    """No resource (nor pool) of that name is configured."""

    def __init__(self, name: str, known: list[str], pools: list[str] | None = None):
        self.name = name
        self.known = known
        self.pools = pools or []
        listing = ", ".join(sorted(known)) or "none"
        message = f"unknown resource {name!r}; configured resources: {listing}"
        if self.pools:
            message += f"; pools: {', '.join(sorted(self.pools))}"
        super().__init__(message)


class ResourceConfigError(ResourceError):
    """A resource configuration is unreadable or incomplete; names the resource (or the
    pool, with ``what="pool"``) and the key."""

    def __init__(
        self,
        detail: str,
        resource: str | None = None,
        key: str | None = None,
        *,
        what: str = "resource",
    ):
        self.resource = resource
        self.key = key
        self.detail = detail
        prefix = ""
        if resource is not None:
            prefix = f"{what} {resource!r}"
            if key is not None:
                prefix += f", key {key!r}"
            prefix += ": "
        elif key is not None:
            prefix = f"key {key!r}: "
        super().__init__(prefix + detail)


class UnknownTaskError(ResourceError):
    """The task id is not known to this resource."""


class TaskNotFinishedError(ResourceError):
    """A result was asked for a task that has not completed yet."""


class TaskFailedError(ResourceError):
    """The task failed or was cancelled; the message carries the reason."""


class UnsupportedPayloadError(ResourceError):
    """The resource cannot run this kind of payload."""


class AcquisitionError(ResourceError):
    """An acquisition token is unknown or already released."""
