"""Deprecated home of the direct dispatch channel: it moved to :mod:`qhpc.session.direct`.

The channel's frames are shared by both ends and belong to the session room, the
lower of the two. This module only re-exports them, silently, because the broker's
dispatcher still imports it (``qhpc.broker`` is restructured separately); import
from :mod:`qhpc.session.direct` in new code.
"""

from __future__ import annotations

from qhpc.session.direct import (
    DIRECT_VERSION,
    ERROR,
    FRAME_HEADER,
    HELLO,
    MAX_REPLY_BYTES,
    READ_AHEAD,
    READY,
    RESULT,
    SCHEME,
    TASK,
    DirectClient,
    FrameReader,
    frame,
    read_frame,
    socket_path,
)

__all__ = [
    "DIRECT_VERSION",
    "ERROR",
    "FRAME_HEADER",
    "HELLO",
    "MAX_REPLY_BYTES",
    "READY",
    "READ_AHEAD",
    "RESULT",
    "SCHEME",
    "TASK",
    "DirectClient",
    "FrameReader",
    "frame",
    "read_frame",
    "socket_path",
]  # fmt: skip
