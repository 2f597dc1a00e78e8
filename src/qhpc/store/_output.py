"""Store methods for hybrid programs' output (a mixin of :class:`qhpc.store.Store`).

Output is bytes addressed by byte offset, per program and stream, kept in rows of
``schema.OUTPUT_CHUNK`` bytes. The broker writes it behind the running program
(:meth:`OutputMixin.append_output`, many programs in one transaction) and reads it
from any offset (:meth:`OutputMixin.read_output`); the program's row in ``programs``
is never touched, so output and outcome are written independently.

Writes are *relaxed* (see ``Database.tx``): they survive a crash of the broker process,
which is what they are for, but the last ones may be lost with the machine.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, desc, func, insert, select

from qhpc.store import schema
from qhpc.store.database import Database
from qhpc.store.records import OUTPUT_STREAMS, OutputPiece

_o = schema.program_output
_CHUNK = schema.OUTPUT_CHUNK


class OutputMixin:
    _db: Database

    def append_output(self, pieces: Sequence[OutputPiece]) -> None:
        """Stores each piece's bytes at its offset (replacing what was there from it on).

        One transaction for all pieces: ValueError for an unknown stream or an offset
        past the stream's end (it would leave a gap), and then none of them is stored.
        """
        for piece in pieces:
            if piece.stream not in OUTPUT_STREAMS:
                raise ValueError(f"unknown output stream {piece.stream!r}")
            if piece.offset < 0:
                raise ValueError(f"output offset {piece.offset} is negative")
        if not pieces:
            return
        with self._db.tx(write=True, relaxed=True) as conn:
            for piece in pieces:
                _put(conn, piece)

    def read_output(self, job_id: str, stream: str, offset: int = 0) -> tuple[bytes, int]:
        """The stream's bytes from ``offset`` on, and the stream's length in bytes."""
        if stream not in OUTPUT_STREAMS:
            raise ValueError(f"unknown output stream {stream!r}")
        first = max(0, offset) // _CHUNK * _CHUNK
        mine = (_o.c.job_id == job_id) & (_o.c.stream == stream)
        with self._db.tx() as conn:
            rows = conn.execute(
                select(_o.c.chunk_offset, _o.c.data)
                .where(mine, _o.c.chunk_offset >= first)
                .order_by(_o.c.chunk_offset)
            ).all()
            if not rows:  # nothing from there on: how long is it, then?
                return b"", _length(conn, job_id, stream)
        data = b"".join(bytes(row.data) for row in rows)
        end = int(rows[-1].chunk_offset) + len(rows[-1].data)
        return data[max(0, offset) - first :], end


def _length(conn: Connection, job_id: str, stream: str) -> int:
    last = conn.execute(
        select(_o.c.chunk_offset, func.length(_o.c.data))
        .where(_o.c.job_id == job_id, _o.c.stream == stream)
        .order_by(desc(_o.c.chunk_offset))
        .limit(1)
    ).one_or_none()
    return 0 if last is None else int(last[0]) + int(last[1])


def _put(conn: Connection, piece: OutputPiece) -> None:
    length = _length(conn, piece.job_id, piece.stream)
    if piece.offset > length:
        raise ValueError(
            f"output of {piece.job_id} {piece.stream} is {length} bytes long: "
            f"nothing can be written at {piece.offset}"
        )
    mine = (_o.c.job_id == piece.job_id) & (_o.c.stream == piece.stream)
    first = piece.offset // _CHUNK * _CHUNK
    data = piece.data
    if piece.offset > first:  # starts inside a row: keep that row's head
        head = conn.execute(select(_o.c.data).where(mine, _o.c.chunk_offset == first)).scalar_one()
        data = bytes(head)[: piece.offset - first] + data
    conn.execute(delete(_o).where(mine, _o.c.chunk_offset >= first))
    rows = [
        {"job_id": piece.job_id, "stream": piece.stream, "chunk_offset": first + at,
         "data": data[at : at + _CHUNK]}
        for at in range(0, len(data), _CHUNK)
    ]  # fmt: skip
    if rows:
        conn.execute(insert(_o), rows)
