"""Quantum Inspire's compute-runtime messages: decode with a budget, validate, build.

The protocol is QuTech's interface between a Quantum Inspire *job processor* (the
QI hybrid runtime, "2200" in their documents) and a backend's *control software*
("2300"): JSON objects, one per ZeroMQ frame. The job processor sends requests on a
REQ socket (``initialize``, ``execute``, ``terminate``, ``get_static``,
``get_dynamic``) and the control software answers on a REP socket; the control
software also publishes ``publish_state`` on a PUB socket. Published at
github.com/QuTech-Delft/compute-runtime-schema (``schemas/v3/*.schema.json`` and
``docs/``, commit ``c872a0a052c7265d798f468d6cc35317a896428a``, protocol version 3).

qhpc's own JSON Schema for these messages (``schemas/compute_runtime_v3.schema.json``,
package data) is written from those definitions, one ``$defs`` entry per message;
where it is stricter than the published one (bounded ``session_id`` and ``job_id``)
or adds to it (a token in ``initialize``), the entry says so. Every message in and
out is checked against it here.

Every frame comes from an untrusted peer, so decoding has a budget: its size, then
the nesting depth of its JSON (counted by a scan before the parser runs, since
Python's parser recurses; the scan is linear in the frame, as it runs before the
peer has proved anything), and no ``NaN``/``Infinity``. Error messages name the
field and the rule it breaks, never the value that broke it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

from qhpc.errors import QhpcError

if TYPE_CHECKING:  # jsonschema loads on the first validation: the command line stays quick
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

PROTOCOL_VERSION = 3
#: the ports the published protocol names for the REP (requests) and PUB (state) sockets
REQUEST_PORT = 4203
PUBLISH_PORT = 4204
REQUESTS = ("initialize", "execute", "terminate", "get_static", "get_dynamic")
#: the session_id of a failure reply to a request whose own could not be read
NIL_SESSION = "00000000-0000-0000-0000-000000000000"
#: the published states, in the order the protocol says to test them
STATES = ("OFFLINE", "CALIBRATING", "EXECUTING", "IDLE")
SCHEMA_FILE = "compute_runtime_v3.schema.json"
SCHEMA_SOURCE = (
    "github.com/QuTech-Delft/compute-runtime-schema schemas/v3 "
    "@ c872a0a052c7265d798f468d6cc35317a896428a"
)

#: which schema entry the success reply to each request must satisfy
SUCCESS_REPLY = {
    "initialize": "SimpleSuccessReply",
    "terminate": "SimpleSuccessReply",
    "execute": "ExecuteReply",
    "get_static": "StaticDataReply",
    "get_dynamic": "DynamicDataReply",
}

#: what a JSON scan must see: strings (skipped whole; possessive, so no backtracking),
#: brackets, and last a lone ``"``: a string that never ends. That one stops the scan
#: (the frame is not JSON), since retrying the string rule at every later ``"`` would
#: scan to the end each time, quadratic in the frame (``"\\"\\"\\"...``).
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]|"')
_ERROR_TEXT = 300
#: a schema rule in words (``{bound}`` is the schema's value for it, never the message's)
_PHRASES = {
    "type": "must be of type {bound}",
    "const": "must be {bound!r}",
    "enum": "must be one of {bound}",
    "format": "must be a {bound}",
    "exclusiveMinimum": "must be greater than {bound}",
    "minimum": "must be at least {bound}",
    "maximum": "must be at most {bound}",
    "maxLength": "must be at most {bound} characters",
    "minItems": "must have at least {bound} items",
    "maxItems": "must have at most {bound} items",
}


@dataclass(frozen=True)
class MessageLimits:
    """The budget of one incoming frame: bytes and JSON nesting depth.

    Frames above ``max_bytes`` get a failure reply; ZeroMQ itself drops a peer whose
    frame exceeds :attr:`frame_cap` (``MAXMSGSIZE``) before a byte of it is buffered
    here, so that peer gets no reply at all.
    """

    max_bytes: int = 1 << 20
    max_depth: int = 16

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_depth <= 0:
            raise ValueError("message limits must be positive")

    @property
    def frame_cap(self) -> int:
        return 2 * self.max_bytes


class QiProtocolError(QhpcError):
    """A frame that is not a valid message; ``session_id`` is the one to reply with."""

    def __init__(self, message: str, session_id: str = NIL_SESSION) -> None:
        self.message = message
        self.session_id = session_id
        super().__init__(message)


def decode(frame: bytes, limits: MessageLimits) -> dict[str, Any]:
    """One frame as a JSON object, within ``limits``."""
    if len(frame) > limits.max_bytes:
        raise QiProtocolError(f"message of {len(frame)} bytes; the limit is {limits.max_bytes}")
    depth = 0
    for token in _JSON_TOKENS.finditer(frame):
        char = token.group()
        if char == b'"':
            raise QiProtocolError(
                f"message is not valid JSON (a string at byte {token.start()} never ends)"
            )
        if char in (b"[", b"{"):
            depth += 1
            if depth > limits.max_depth:
                raise QiProtocolError(f"JSON nested deeper than {limits.max_depth} levels")
        elif char in (b"]", b"}"):
            depth -= 1
    try:
        message = json.loads(frame.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise QiProtocolError("message is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise QiProtocolError(
            f"message is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError):  # NaN/Infinity, an integer of too many digits
        raise QiProtocolError("message is not JSON (NaN, Infinity or a huge number)") from None
    if not isinstance(message, dict):
        raise QiProtocolError(f"message is a JSON {type(message).__name__}, not an object")
    return message


def check_request(message: dict[str, Any]) -> str:
    """The command of a valid request; :class:`QiProtocolError` naming the first problem."""
    session = message.get("session_id")
    reply_to = session if isinstance(session, str) and _is_session_id(session) else NIL_SESSION
    command = message.get("command")
    if command not in REQUESTS:
        if not isinstance(command, str):
            problem = "no 'command'" if command is None else "'command' is not a string"
        elif command == "publish_state":
            problem = "publish_state is published by this endpoint (its PUB socket), not requested"
        else:
            shown = f" {command!r}" if len(command) <= 32 and command.isprintable() else ""
            problem = f"unknown command{shown}"
        raise QiProtocolError(f"{problem}; requests are {', '.join(REQUESTS)}", reply_to)
    error = _first_error("Request", message)
    if error is not None:
        raise QiProtocolError(f"invalid {command} request: {describe(error)}", reply_to)
    return str(command)


def check(message: dict[str, Any], entry: str) -> None:
    """Validate an outgoing ``message`` against the schema entry ``entry``."""
    error = _first_error(entry, message)
    if error is not None:
        raise QiProtocolError(f"invalid {entry}: {describe(error)}", NIL_SESSION)


def describe(error: ValidationError) -> str:
    """Where and which rule, in words from the schema, not from the value."""
    where = ".".join(str(p) for p in error.absolute_path) or "message"
    rule, bound = str(error.validator), cast(Any, error.validator_value)
    if rule == "required":
        present = error.instance if isinstance(error.instance, dict) else {}
        missing = [k for k in bound if k not in present]
        return f"{where}: missing {', '.join(repr(k) for k in missing)}"
    if rule == "enum":
        bound = ", ".join(repr(v) for v in bound)
    phrase = _PHRASES.get(rule, "breaks the schema rule {rule!r}").format(bound=bound, rule=rule)
    return f"{where}: {phrase}"


def success(session_id: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"session_id": session_id, "status": "success"}
    if payload is not None:
        reply["payload"] = payload
    return reply


def failure(session_id: str, error_msg: str) -> dict[str, Any]:
    """A failure reply; the text is cut short and kept printable."""
    text = "".join(c for c in error_msg if c.isprintable())
    if len(text) > _ERROR_TEXT:
        text = text[: _ERROR_TEXT - 1] + "…"
    return {"session_id": session_id, "status": "failure", "payload": {"error_msg": text}}


def state_message(state: str, timestamp: float) -> dict[str, Any]:
    return {"command": "publish_state", "payload": {"state": state, "timestamp": timestamp}}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


@cache
def schema() -> dict[str, Any]:
    """qhpc's JSON Schema of the protocol (package data)."""
    text = resources.files("qhpc.session").joinpath("schemas", SCHEMA_FILE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _first_error(entry: str, message: Any) -> ValidationError | None:
    from jsonschema.exceptions import best_match

    error: ValidationError | None = best_match(_validator(entry).iter_errors(message))
    return error


@cache
def _validator(entry: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    root = schema()
    if entry not in root["$defs"]:
        raise KeyError(f"no schema entry {entry!r}")
    return Draft202012Validator(
        {"$defs": root["$defs"], "$ref": f"#/$defs/{entry}"},
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def _is_session_id(value: str) -> bool:
    return not any(_validator("SessionId").iter_errors(value))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


__all__ = [
    "NIL_SESSION",
    "PROTOCOL_VERSION",
    "PUBLISH_PORT",
    "REQUESTS",
    "REQUEST_PORT",
    "SCHEMA_SOURCE",
    "STATES",
    "MessageLimits",
    "QiProtocolError",
    "check",
    "check_request",
    "decode",
    "encode",
    "failure",
    "schema",
    "state_message",
    "success",
]
