"""Structured operator logs: the ids each record belongs to, and the two line formats.

An operator follows one request, job, session or resource through the broker's log
by its ids, so every record carries the ones known where it was emitted:
``request_id``, ``job_id``, ``task_id``, ``session_id``, ``resource``, ``user``.
Code deep in the broker does not pass them along: they live in a context variable.
The API opens a scope per request (:func:`log_scope`), authentication adds the user
to it (:func:`bind`: a request's handler threads see the same scope), a hybrid
program's thread binds its job. Event records (a job submitted, a session closed, a
resource calibrating) add fields of their own: ``log.info("...", extra=fields(...))``.
Never a token, never a payload: fields are ids, names, states and counts.

Two formats (``qhpc serve --log-format``), both one record per line, so that no
value a tenant chose (a job name, a path, an exception's text) can forge a record:

* ``json``: one JSON object per line, ASCII only (``\\n``, U+2028 and the rest are
  escaped by the encoder);
* ``text``: ``TS LEVEL LOGGER MESSAGE key=value ...`` with control and line-breaking
  characters escaped (``\\n``, ``\\x1b``...), values with spaces or quotes quoted, and
  a traceback's lines indented under their record.

Both redact anything shaped like a qhpc token (``qhpc_`` + 40 or more URL-safe
characters): no code path should log one, and this is the net under that rule.

This is a bottom module (it imports nothing of qhpc): every room may log with it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, TextIO

#: the context ids, in the order records show them
FIELDS: Final = ("request_id", "job_id", "task_id", "session_id", "resource", "user")
#: the formats ``configure`` knows
FORMATS: Final = ("text", "json")
#: the keys every JSON record has; an event field of the same name is dropped
RESERVED: Final = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})

_KNOWN = frozenset(FIELDS)
#: the record attribute holding an event's own fields (``extra=fields(...)``)
_EVENT = "qhpc_fields"
#: the record attribute holding the context ids as they were when it was emitted
_IDS = "qhpc_ids"
#: a request's scope is one mutable dict shared by every thread serving the request
_scope: ContextVar[dict[str, str] | None] = ContextVar("qhpc_log_scope", default=None)

_TOKEN = re.compile(r"qhpc_[A-Za-z0-9_-]{40,}")
_REDACTED = "qhpc_[redacted]"
#: a text value shown unquoted
_PLAIN = re.compile(r"[A-Za-z0-9._:/@+-]+")
#: every character that could end or fake a line: C0, DEL, C1, U+2028/9
_BREAKERS = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_SHORT = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPES: Final = {
    c: _SHORT.get(c, f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _BREAKERS
}


def _checked(ids: Mapping[str, str | None]) -> dict[str, str]:
    unknown = set(ids) - _KNOWN
    if unknown:
        raise ValueError(f"unknown log context field(s) {sorted(unknown)}; known: {FIELDS}")
    return {name: str(value) for name, value in ids.items() if value is not None}


@contextmanager
def log_scope(**ids: str | None) -> Iterator[None]:
    """A new scope for the block: the enclosing scope's ids plus these (None: unset)."""
    values = {**(_scope.get() or {}), **_checked(ids)}
    token = _scope.set(values)
    try:
        yield
    finally:
        _scope.reset(token)


def bind(**ids: str | None) -> None:
    """Add ids to the current scope, so later records in it carry them.

    Within a request this reaches every thread serving it (they share the scope);
    outside any scope it starts one for the rest of this thread's (or task's) life.
    """
    values = _checked(ids)
    scope = _scope.get()
    if scope is None:
        _scope.set(values)
    else:
        scope.update(values)


def current_ids() -> dict[str, str]:
    """The context ids known here (a copy)."""
    return dict(_scope.get() or {})


def fields(**values: object) -> dict[str, Any]:
    """An event's own fields, for ``extra=``; context ids among them win over the scope's.
    None values are left out."""
    return {_EVENT: {k: v for k, v in values.items() if v is not None}}


def escape(text: str) -> str:
    """``text`` on one line: control and line-breaking characters as escapes."""
    return text.translate(_ESCAPES)


def redact(text: str) -> str:
    """``text`` with every token-shaped word replaced."""
    return _TOKEN.sub(_REDACTED, text) if "qhpc_" in text else text


def utc_timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. ``2025-05-01T12:00:00.123Z``."""
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``event`` if it has one, its context ids (FIELDS order), then the
    rest of its event fields."""
    ids = getattr(record, _IDS, None)
    if ids is None:  # formatted outside a configured handler: the context is still ours
        ids = current_ids()
    event: dict[str, Any] = getattr(record, _EVENT, None) or {}
    merged: dict[str, Any] = {"event": event["event"]} if "event" in event else {}
    for name in FIELDS:
        value = event.get(name, ids.get(name))
        if value is not None:
            merged[name] = value
    merged.update((k, v) for k, v in event.items() if k not in _KNOWN and k not in RESERVED)
    return merged


class CaptureIds(logging.Filter):
    """Snapshots the context ids onto each record as it is handled (the emitting thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, _IDS):
            setattr(record, _IDS, current_ids())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the fields, exc/stack."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(record_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(line, ensure_ascii=True, default=str))


class TextFormatter(logging.Formatter):
    """``TS LEVEL LOGGER MESSAGE key=value ...``, one line, a traceback indented below."""

    def format(self, record: logging.LogRecord) -> str:
        head = (
            f"{utc_timestamp(record.created)} {record.levelname} {record.name} "
            f"{escape(record.getMessage())}"
        )
        parts = [head, *(f"{k}={_quoted(v)}" for k, v in record_fields(record).items())]
        text = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        extra = [record.exc_text or "", self.formatStack(record.stack_info or "")]
        for block in extra:
            # Every continuation line indented: only a record starts at column 0.
            text += "".join(f"\n    {escape(line)}" for line in block.splitlines())
        return redact(text)


def _quoted(value: object) -> str:
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


#: the handler ``configure`` installs is known by this name (a second call replaces it)
HANDLER_NAME: Final = "qhpc"


def configure(
    format: str = "text", level: str | int = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Send every record to ``stream`` (stderr) in ``format``: qhpc's and the HTTP
    server's at ``level`` and above, other libraries' from WARNING (a simulator's
    per-pass INFO lines are not the operator's business). Python warnings are logged.
    """
    formatters: dict[str, type[logging.Formatter]] = {
        "text": TextFormatter,
        "json": JsonFormatter,
    }
    if format not in formatters:
        raise ValueError(f"unknown log format {format!r}; one of {', '.join(FORMATS)}")
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatters[format]())
    handler.addFilter(CaptureIds())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(number, logging.WARNING))
    for name in ("qhpc", "uvicorn"):
        logging.getLogger(name).setLevel(number)
    logging.captureWarnings(True)
    return handler
