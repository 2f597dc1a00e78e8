"""Frames on the runtime's control channels.

Two kinds of channel, both AF_UNIX socketpairs:

- pool ↔ template (zygote): ``SOCK_SEQPACKET``. Messages are small and a fork
  request carries three descriptors (``SCM_RIGHTS``), which a packet keeps together
  with its frame.
- pool ↔ program process: ``SOCK_STREAM``; a start frame carries the program's
  source and arguments and may be larger than a packet.

Every frame is ``!IB`` (body length, wire version) followed by a msgspec msgpack
body: a tagged struct, so one decoder per direction validates shape and types. A
version mismatch or an oversized or undecodable frame is a :class:`WireError`; the
pool treats one from a program process as a protocol violation (the program can
write to its own control socket) and kills it.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Final, TypeVar

import msgspec

from qhpc.runtime.errors import WireError
from qhpc.runtime.isolation import Limits, RunAs
from qhpc.runtime.outcome import ProgramContext

WIRE_VERSION: Final = 1
HEADER: Final = struct.Struct("!IB")
#: largest frame a program process may send (its return value, progress); 16 MiB
MAX_CHILD_FRAME: Final = 16 << 20
#: largest start frame (program source + arguments); 256 MiB
MAX_START_FRAME: Final = 256 << 20
#: the program process's control socket is always this descriptor
CONTROL_FD: Final = 3
#: msgpack's encoding of None
NIL: Final = b"\xc0"

T = TypeVar("T")


# -- pool ↔ template ---------------------------------------------------------------


class ForkRequest(msgspec.Struct, tag="fork", frozen=True):
    """Fork one program process; carries its control socket, stdout and stderr ends."""

    seq: int
    #: the private directory its program will run in (made by the pool, owned by its uid)
    workdir: str


class DrainRequest(msgspec.Struct, tag="drain", frozen=True):
    """Fork no more; exit once every child has been reaped."""


class TemplateReady(msgspec.Struct, tag="ready", frozen=True):
    pid: int
    preload_s: float
    rss_mb: float


class TemplateFailed(msgspec.Struct, tag="failed", frozen=True):
    message: str


class Forked(msgspec.Struct, tag="forked", frozen=True):
    seq: int
    pid: int
    #: the template's RSS after the fork, for recycling on memory growth
    rss_mb: float
    #: children forked by this template so far
    forked: int


class ForkFailed(msgspec.Struct, tag="fork_failed", frozen=True):
    seq: int
    message: str


class Reaped(msgspec.Struct, tag="reaped", frozen=True):
    """A child of the template ended; its process group is gone too."""

    pid: int
    wait_status: int
    cpu_s: float
    max_rss_kb: int
    #: ``time.monotonic()`` right after ``wait4`` returned
    reaped_at: float


PoolToTemplate = ForkRequest | DrainRequest
TemplateToPool = TemplateReady | TemplateFailed | Forked | ForkFailed | Reaped


# -- pool ↔ program process ---------------------------------------------------------


class StartProgram(msgspec.Struct, tag="start", frozen=True, kw_only=True):
    program_id: str
    source: str
    filename: str
    entry: str
    #: ``False`` when the caller left ``entry`` at its default: then ``execute(qi)`` is
    #: used if the module has no ``main``
    entry_explicit: bool
    args: msgspec.Raw
    context: ProgramContext
    env: dict[str, str]
    workdir: str
    limits: Limits
    run_as: RunAs | None
    max_iterations: int | None
    submitted_at: float


class Running(msgspec.Struct, tag="running", frozen=True):
    """Isolation is in place; user code starts now."""

    at: float


class ProgressReport(msgspec.Struct, tag="progress", frozen=True):
    iteration: int
    value: float | int | str | None
    fields: dict[str, Any]
    at: float


class Finished(msgspec.Struct, tag="finished", frozen=True, kw_only=True):
    """The program's outcome, sent just before the process calls ``os._exit``."""

    status: str
    #: the return value, msgpack-encoded (msgpack nil when there is none or it is a repr)
    value: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(NIL))
    value_repr: str | None = None
    error: str | None = None
    started_at: float | None = None
    at: float
    cpu_s: float
    max_rss_kb: int


ChildToPool = Running | ProgressReport | Finished

_encoder = msgspec.msgpack.Encoder()
TEMPLATE_DECODER: Final = msgspec.msgpack.Decoder(TemplateToPool)
TEMPLATE_REQUEST_DECODER: Final = msgspec.msgpack.Decoder(PoolToTemplate)
CHILD_DECODER: Final = msgspec.msgpack.Decoder(ChildToPool)
START_DECODER: Final = msgspec.msgpack.Decoder(StartProgram)


def encode(message: msgspec.Struct) -> bytes:
    body = _encoder.encode(message)
    return HEADER.pack(len(body), WIRE_VERSION) + body


def _decode_body(decoder: msgspec.msgpack.Decoder[T], body: bytes | memoryview) -> T:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise WireError(f"undecodable frame: {exc}") from None


def _check_header(header: bytes | bytearray | memoryview, max_size: int) -> int:
    length, version = HEADER.unpack(header)
    if version != WIRE_VERSION:
        raise WireError(f"frame of wire version {version}, expected {WIRE_VERSION}")
    if length > max_size:
        raise WireError(f"frame of {length} bytes exceeds the {max_size}-byte limit")
    return int(length)


def decode_packet(decoder: msgspec.msgpack.Decoder[T], packet: bytes) -> T:
    """One whole frame (a ``SOCK_SEQPACKET`` message)."""
    if len(packet) < HEADER.size:
        raise WireError(f"short packet of {len(packet)} bytes")
    length = _check_header(packet[: HEADER.size], len(packet))
    if length != len(packet) - HEADER.size:
        raise WireError("packet length does not match its header")
    return _decode_body(decoder, packet[HEADER.size :])


class FrameReader:
    """Reassembles frames from a non-blocking stream; ``feed`` returns whole ones."""

    def __init__(self, decoder: msgspec.msgpack.Decoder[T], max_size: int) -> None:
        self._decoder: msgspec.msgpack.Decoder[Any] = decoder
        self._max = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        frames: list[Any] = []
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            length = _check_header(buffer[offset : offset + HEADER.size], self._max)
            end = offset + HEADER.size + length
            if end > len(buffer):
                break
            # A copy: decoded ``Raw`` fields keep a reference to the bytes they came from.
            frames.append(_decode_body(self._decoder, bytes(buffer[offset + HEADER.size : end])))
            offset = end
        del buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)


def send_frame(sock: socket.socket, message: msgspec.Struct) -> None:
    sock.sendall(encode(message))


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, decoder: msgspec.msgpack.Decoder[T], max_size: int) -> T | None:
    """Block for one frame; ``None`` at end of stream."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    body = _recv_exact(sock, _check_header(header, max_size))
    if body is None:
        raise WireError("stream ended inside a frame")
    return _decode_body(decoder, body)
