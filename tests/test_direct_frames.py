"""Frames of the direct dispatch channel read whole, split, pipelined or broken."""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qhpc.runtime.direct import TASK, FrameReader, frame


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(10)
    b.settimeout(10)
    return a, b


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(max_size=3000), min_size=1, max_size=8),
    st.lists(st.integers(1, 700), min_size=1, max_size=20),
)
def test_any_split_of_a_stream_of_frames_reads_back_the_same_frames(
    bodies: list[bytes], cuts: list[int]
) -> None:
    ours, theirs = pair()
    stream = b"".join(frame(TASK, body) for body in bodies)
    pieces, offset, index = [], 0, 0
    while offset < len(stream):  # the peer writes in arbitrary pieces
        size = cuts[index % len(cuts)]
        pieces.append(stream[offset : offset + size])
        offset += size
        index += 1

    def write() -> None:
        for piece in pieces:
            theirs.sendall(piece)
        theirs.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write)
    writer.start()
    reader = FrameReader(ours)
    try:
        got = [reader.read(1 << 20) for _ in bodies]
        assert got == [(TASK, body) for body in bodies]
        assert reader.read(1 << 20) is None  # clean end of stream after the last frame
    finally:
        writer.join(10)
        ours.close()
        theirs.close()


def test_oversized_and_truncated_frames_are_errors() -> None:
    ours, theirs = pair()
    try:
        theirs.sendall(frame(TASK, b"x" * 100))
        with pytest.raises(ValueError, match="exceeds the limit of 10"):
            FrameReader(ours).read(10)
    finally:
        ours.close()
        theirs.close()
    ours, theirs = pair()
    try:
        theirs.sendall(frame(TASK, b"x" * 100)[:50])
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError, match="middle of a frame"):
            FrameReader(ours).read(1000)
    finally:
        ours.close()
        theirs.close()
