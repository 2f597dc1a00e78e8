"""One running program as the pool sees it: frames, output, stop conditions, outcome.

Everything but ``wait``/``cancel`` and the read-only properties runs on the pool's
I/O thread. A program is finished when its process has been reaped by the template
(so nothing it forked is left) and its output pipes are drained; then the work dir
is removed and the outcome published.
"""

from __future__ import annotations

import codecs
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from qhpc.runtime import isolation
from qhpc.runtime.errors import WaitTimeout, WireError
from qhpc.runtime.isolation import Limits
from qhpc.runtime.loop import EventLoop, Timer
from qhpc.runtime.outcome import ProgramOutcome, ProgramStatus, Progress
from qhpc.runtime.wire import (
    CHILD_DECODER,
    MAX_CHILD_FRAME,
    Finished,
    FrameReader,
    ProgressReport,
    Reaped,
    Running,
)

log = logging.getLogger(__name__)

#: ``on_output(stream, text)``: stream is ``"stdout"`` or ``"stderr"``
OutputCallback = Callable[[str, str], None]
#: after the process is reaped, how long to wait for its pipes to close
OUTPUT_DRAIN_S = 0.5
#: reads of up to 64 KiB (pipes) or 1 MiB (control) per readiness event
READ_BURSTS = 16
_FINISHED_STATUS = {
    "completed": ProgramStatus.COMPLETED,
    "failed": ProgramStatus.FAILED,
    "limit": ProgramStatus.LIMIT,
}


class _Stream:
    def __init__(self, name: str, fd: int, limit: int, callback: OutputCallback | None) -> None:
        self.name, self.fd, self.limit, self.callback = name, fd, limit, callback
        self.data = bytearray()
        self.dropped = 0
        self.eof = False
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self, bursts: int | None = READ_BURSTS) -> None:
        # Bounded per event (epoll is level-triggered): a program that prints without
        # pause must not keep the I/O thread from everyone else's descriptors.
        while not self.eof and (bursts is None or bursts > 0):
            bursts = None if bursts is None else bursts - 1
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                self.eof = True
                return
            room = self.limit - len(self.data)
            self.data += chunk[:room]
            self.dropped += max(0, len(chunk) - room)
            if self.callback is not None:
                try:
                    self.callback(self.name, self.decoder.decode(chunk))
                except Exception:
                    log.exception("runtime pool: on_output callback failed")

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        if self.dropped:
            text += f"\n[qhpc: {self.dropped} more bytes of {self.name} dropped]\n"
        return text


class ProgramHandle:
    """A submitted program: ``wait()``, ``cancel()``, ``iterations``, ``progress``."""

    def __init__(
        self, *, program_id: str, pid: int, control: socket.socket, stdout_fd: int,
        stderr_fd: int, loop: EventLoop, workdir: str, submitted_at: float,
        timeout: float | None, grace_s: float, limits: Limits, output_limit: int,
        on_output: OutputCallback | None, on_done: Callable[[ProgramHandle], None],
    ) -> None:  # fmt: skip
        self.program_id = program_id
        self.pid = pid
        self._control = control
        self._loop = loop
        self._workdir = workdir
        self._submitted_at = submitted_at
        self._grace_s = grace_s
        self._limits = limits
        self._on_done = on_done
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._outcome: ProgramOutcome | None = None
        self._reader = FrameReader(CHILD_DECODER, MAX_CHILD_FRAME)
        self._streams = [
            _Stream("stdout", stdout_fd, output_limit, on_output),
            _Stream("stderr", stderr_fd, output_limit, on_output),
        ]
        self._running_at: float | None = None
        self._first_reply_at: float | None = None
        self._finished: Finished | None = None
        self._finished_seen_at: float | None = None
        self._stop_status: ProgramStatus | None = None
        self._stop_message = ""
        self._kill_sent_at: float | None = None
        self._reaped: Reaped | None = None
        self._timers: list[Timer] = []
        self._iterations = 0
        self._progress: Progress | None = None
        self._finishing = False
        control.setblocking(False)
        for stream in self._streams:
            os.set_blocking(stream.fd, False)
            loop.add_reader(stream.fd, self._stream_reader(stream))
        loop.add_reader(control.fileno(), self._on_control)
        if timeout is not None:
            self._timers.append(loop.call_at(submitted_at + timeout, self._on_timeout(timeout)))

    # -- what callers see ---------------------------------------------------------

    @property
    def iterations(self) -> int:
        """The last iteration number the program reported."""
        return self._iterations

    @property
    def progress(self) -> Progress | None:
        """The last progress report (``progress.describe()`` for a status line)."""
        return self._progress

    @property
    def running(self) -> bool:
        """User code has started (isolation is in place)."""
        return self._running_at is not None

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> ProgramOutcome:
        """The outcome; raises :class:`WaitTimeout` if not finished within ``timeout`` s."""
        if not self._done.wait(timeout):
            raise WaitTimeout(f"program {self.program_id} still running after {timeout} s")
        assert self._outcome is not None  # set before the event
        return self._outcome

    def cancel(self) -> bool:
        """Stop the program (SIGTERM, SIGKILL after the grace period); ``False`` if it ended."""
        return self.stop(ProgramStatus.CANCELLED, "cancelled")

    # -- the pool's side ----------------------------------------------------------

    def stop(self, status: ProgramStatus, message: str, *, immediate: bool = False) -> bool:
        """Stop with ``status`` unless the program already reported its outcome."""
        with self._lock:
            if self._finished is not None or self._reaped is not None or self._stop_status:
                return False
            self._stop_status, self._stop_message = status, message
            self._kill_sent_at = time.monotonic()
        self._signal(signal.SIGKILL if immediate else signal.SIGTERM)
        if not immediate:
            self._timers.append(
                self._loop.call_at(self._kill_sent_at + self._grace_s, self._kill_now)
            )
        return True

    def on_reaped(self, reaped: Reaped) -> None:
        with self._lock:
            self._reaped = reaped
        self._drain()
        if all(stream.eof for stream in self._streams):
            self._finish()
        else:  # something it forked still holds a pipe; the template kills it shortly
            self._timers.append(self._loop.call_at(time.monotonic() + OUTPUT_DRAIN_S, self._finish))

    def on_template_lost(self) -> None:
        """The template died: no ``Reaped`` will come (the process died with it)."""
        self.on_reaped(Reaped(self.pid, signal.SIGKILL, 0.0, 0, time.monotonic()))

    # -- internals ------------------------------------------------------------------

    def _signal(self, sig: int) -> None:
        # Before setsid() in a fresh process the group does not exist yet: signal the pid.
        if not isolation.kill_group(self.pid, sig):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def _kill_now(self) -> None:
        if self._reaped is None:
            self._signal(signal.SIGKILL)

    def _on_timeout(self, timeout: float) -> Callable[[], None]:
        def expire() -> None:
            self.stop(ProgramStatus.TIMEOUT, f"wall-clock timeout of {timeout:g} s exceeded")

        return expire

    def _stream_reader(self, stream: _Stream) -> Callable[[], None]:
        def read() -> None:
            stream.read()
            if self._reaped is not None and all(s.eof for s in self._streams):
                self._finish()

        return read

    def _drain(self) -> None:
        self._on_control(None)
        for stream in self._streams:
            stream.read(None)

    def _on_control(self, bursts: int | None = READ_BURSTS) -> None:
        if self._control.fileno() < 0:
            return
        while bursts is None or bursts > 0:
            bursts = None if bursts is None else bursts - 1
            try:
                data = self._control.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._loop.remove_reader(self._control.fileno())
                self._control.close()
                return
            try:
                frames = self._reader.feed(data)
            except WireError as exc:
                self._loop.remove_reader(self._control.fileno())
                self._control.close()
                self.stop(ProgramStatus.KILLED, f"protocol violation: {exc}", immediate=True)
                return
            for frame in frames:
                self._on_frame(frame)

    def _on_frame(self, frame: Running | ProgressReport | Finished) -> None:
        now = time.monotonic()
        if self._first_reply_at is None:
            self._first_reply_at = now
        if isinstance(frame, Running):
            self._running_at = frame.at
        elif isinstance(frame, ProgressReport):
            self._iterations = frame.iteration
            self._progress = Progress(
                frame.iteration, frame.value, frame.fields, frame.at - self._submitted_at
            )
        else:
            with self._lock:
                self._finished, self._finished_seen_at = frame, now

    def _status(self) -> tuple[ProgramStatus, str | None]:
        finished, reaped = self._finished, self._reaped
        assert reaped is not None
        if (
            finished is not None
            and finished.status != "stopped"
            and (self._kill_sent_at is None or finished.at <= self._kill_sent_at)
        ):  # it reported its outcome before the stop reached it
            status = _FINISHED_STATUS.get(finished.status, ProgramStatus.FAILED)
            return status, finished.error
        if self._stop_status is not None:
            detail = finished.error if finished is not None and finished.error else None
            return self._stop_status, "\n".join(filter(None, [self._stop_message, detail]))
        if finished is not None:  # "stopped" without a stop of ours: a SIGTERM from elsewhere
            return ProgramStatus.KILLED, finished.error
        wait_status = reaped.wait_status
        cpu_limit = self._limits.cpu_seconds
        if os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            name = signal.Signals(sig).name if sig in set(signal.Signals) else str(sig)
            if cpu_limit is not None and (
                sig == signal.SIGXCPU or (sig == signal.SIGKILL and reaped.cpu_s >= cpu_limit)
            ):
                return ProgramStatus.LIMIT, (
                    f"CPU-time limit of {cpu_limit:g} s exceeded (killed by {name})"
                )
            return ProgramStatus.KILLED, f"the program process was killed by {name}"
        return ProgramStatus.KILLED, (
            f"the program process exited with code {os.waitstatus_to_exitcode(wait_status)} "
            "without reporting an outcome (os._exit, or its control socket was closed)"
        )

    def _value(self) -> tuple[Any, bool]:
        finished = self._finished
        if finished is None or finished.status != "completed":
            return None, False
        if finished.value_repr is not None:
            return finished.value_repr, True
        try:
            return msgspec.msgpack.decode(finished.value), False
        except msgspec.DecodeError:
            return None, False

    def _timings(self, ready_at: float) -> dict[str, float]:
        finished, reaped = self._finished, self._reaped
        assert reaped is not None
        timings = {"total_s": ready_at - self._submitted_at}
        if self._running_at is not None:
            timings["start_s"] = self._running_at - self._submitted_at
        if self._first_reply_at is not None:
            timings["first_reply_s"] = self._first_reply_at - self._submitted_at
        if finished is not None and finished.started_at is not None:
            timings["run_s"] = finished.at - finished.started_at
        ended = self._kill_sent_at if self._stop_status else self._finished_seen_at
        if ended is not None:
            timings["termination_s"] = max(0.0, reaped.reaped_at - ended)
        if finished is not None and self._finished_seen_at is not None:
            # The program's return → its outcome in the pool (both monotonic clocks of
            # this machine): when the broker knows how the program ended.
            timings["outcome_delivery_s"] = max(0.0, self._finished_seen_at - finished.at)
        return timings

    def _finish(self) -> None:
        with self._lock:
            if self._finishing:
                return
            self._finishing = True
        self._drain()
        status, error = self._status()
        value, is_repr = self._value()
        reaped, finished = self._reaped, self._finished
        assert reaped is not None
        for timer in self._timers:
            timer.cancel()
        for stream in self._streams:
            self._loop.remove_reader(stream.fd)
            os.close(stream.fd)
        if self._control.fileno() >= 0:
            self._loop.remove_reader(self._control.fileno())
            self._control.close()
        isolation.remove_tree(self._workdir)
        cpu_s = reaped.cpu_s or (finished.cpu_s if finished else 0.0)
        rss_kb = reaped.max_rss_kb or (finished.max_rss_kb if finished else 0)
        self._outcome = ProgramOutcome(
            program_id=self.program_id, status=status, return_value=value,
            return_is_repr=is_repr, error=error, stdout=self._streams[0].text(),
            stderr=self._streams[1].text(), timings=self._timings(time.monotonic()),
            exit_code=os.waitstatus_to_exitcode(reaped.wait_status),
            resource_usage={"cpu_s": cpu_s, "max_rss_mb": rss_kb / 1024},
            iterations=self._iterations, progress=self._progress, pid=self.pid,
        )  # fmt: skip
        self._done.set()
        self._on_done(self)
