"""Hybrid jobs: user programs the broker runs next to the QPU (co-located).

A hybrid job is persisted (job + program, one transaction) before it is
acknowledged, then started on a thread of its own: the broker opens a session
for the job's owner on the resource (session priority, accounting under the
owner's account), starts the program in its :class:`~qhpc.runtime.RuntimePool`
with the session token and the direct dispatch endpoint in its context, waits
for the outcome, closes the session (leftover tasks cancelled, usage booked) and
stores the outcome with the job's final state. The pool is created on the first
program; it is a separate process tree (never a fork of the broker).

Stop conditions: the wall-clock ``timeout``, ``max_iterations`` (checked by the
program's ``report()``), the pool's CPU/memory limits, ``cancel``, and the
session being closed from outside (Slurm's epilog, an admin). Programs are not
resumable: a program that was running when the broker stopped is marked failed
("interrupted: …") at the next start; what it printed until then is in the store
(:mod:`qhpc.broker.output` writes it while the program runs).

Server-side programs: a job may name a registered *entry point* instead of
carrying source. An entry point ``name → "package.module:function"`` is called
as ``function(qpu, spec)`` with the job's JSON ``args`` as ``spec``; register one
with :func:`register_entry_point` (or ``BrokerConfig.entry_points``).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from qhpc.broker.dispatch import DirectDispatcher
from qhpc.broker.lifecycle import program_started
from qhpc.broker.output import (
    FLUSH_BYTES,
    MIN_OUTPUT_LIMIT,
    OutputWriter,
    ProgramLogs,
    ProgramOutput,
    read_logs,
)
from qhpc.envvars import URL_ENV
from qhpc.errors import QhpcError
from qhpc.logcontext import bind
from qhpc.runtime import (
    PoolStats,
    ProgramContext,
    ProgramHandle,
    ProgramOutcome,
    ProgramStatus,
    RuntimeBaseError,
    RuntimePool,
)
from qhpc.store import ConflictError, JobRecord, ProgramRecord

if TYPE_CHECKING:
    from qhpc.broker.idempotency import Idempotency
    from qhpc.broker.ports import ProgramHost

log = logging.getLogger(__name__)

#: entry points every broker offers: name → "package.module:function"
BUILTIN_ENTRY_POINTS: dict[str, str] = {"qhpc.stack": "qhpc.program.server:run_stack"}
#: checks of an entry point's args, run before anything is stored: name → "module:function";
#: the function raises ValueError naming what is wrong, and the submission is refused (422)
ENTRY_POINT_CHECKS: dict[str, str] = {"qhpc.stack": "qhpc.program.server:check_spec"}
_registered: dict[str, str] = {}
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: a session outlives its program's timeout by this much (stop, grace, close)
SESSION_MARGIN_S = 120.0
#: job state of each final program status
JOB_STATE_OF = {
    "completed": "completed",
    "cancelled": "cancelled",
    "failed": "failed",
    "timeout": "failed",
    "limit": "failed",
    "killed": "failed",
}


class ProgramError(QhpcError, ValueError):
    """A hybrid job that cannot be accepted (bad source, entry point, limits)."""


def register_entry_point(name: str, target: str) -> None:
    """Offer ``target`` (``"package.module:function"``) as server-side program ``name``.

    The function is called in a runtime-pool process as ``function(qpu, spec)``;
    it must be importable there (the pool's Python path is the broker's).
    """
    if not _TARGET.match(target):
        raise ValueError(f"entry point target {target!r} is not 'package.module:function'")
    _registered[name] = target


def entry_points(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Every entry point a broker offers: built in, registered, then ``extra``."""
    return {**BUILTIN_ENTRY_POINTS, **_registered, **(extra or {})}


def entry_point_source(target: str) -> str:
    """A program that calls ``target(qpu, spec)``: how entry points run in the pool."""
    module, _, function = target.partition(":")
    return (
        "import importlib\n\n\n"
        "def main(qpu, spec):\n"
        f"    return getattr(importlib.import_module({module!r}), {function!r})(qpu, spec)\n"
    )


@dataclass(frozen=True)
class ProgramInfo:
    """A program as the API shows it: its record, or live figures while it runs."""

    record: ProgramRecord
    qpu_calls: int
    progress: dict[str, Any] | None
    progress_line: str | None
    timings: dict[str, float]
    return_value: Any


@dataclass
class _Live:
    job_id: str
    output: ProgramOutput
    session_id: str | None = None
    handle: ProgramHandle | None = None
    cancel_message: str | None = None


class ProgramManager:
    """Runs a broker's hybrid jobs (see the module docstring)."""

    def __init__(self, broker: ProgramHost) -> None:
        self.broker = broker
        self.config = broker.config
        if self.config.program_output_limit < MIN_OUTPUT_LIMIT:
            raise ValueError(
                f"program_output_limit is {self.config.program_output_limit} bytes; "
                f"at least {MIN_OUTPUT_LIMIT}"
            )
        self._lock = threading.Lock()
        self._writer = OutputWriter(broker.store)
        self._pool: RuntimePool | None = None
        self._dispatcher: DirectDispatcher | None = None
        self._live: dict[str, _Live] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._closing = False
        #: the REST API as reached from the broker's own host (``qhpc serve`` sets it);
        #: programs get it as QHPC_URL, and none while it is unknown
        self.rest_url: str | None = None

    # -- submission --------------------------------------------------------------------

    def submit(
        self, *, user: str, account: str, resource: str, source: str | None = None,
        entry_point: str | None = None, entry: str = "main", args: dict[str, Any] | None = None,
        timeout: float | None = None, max_iterations: int | None = None,
        centre: str | None = None, name: str | None = None, filename: str = "program.py",
        idempotency: Idempotency | None = None,
    ) -> JobRecord:  # fmt: skip
        """Validate, persist (durable before return), start; returns the hybrid job.

        With ``idempotency``, a submission that reuses a key returns the job of the
        first one instead, without starting anything.
        """
        prior = self.broker.keys.prior(idempotency)
        if prior is not None:
            return prior
        # A pool's name → its member now (the program's session opens there); unknown
        # name → UnknownResourceError
        routed = self.broker.pools.route(resource)
        if self._closing:
            raise ProgramError("the broker is stopping: it takes no new programs")
        if (source is None) == (entry_point is None):
            raise ProgramError("give either the program source or a server-side entry point")
        if source is not None:
            size = len(source.encode("utf-8", "replace"))
            if size > self.config.max_program_bytes:
                raise ProgramError(
                    f"the program is {size} bytes; the limit is {self.config.max_program_bytes}"
                )
            _check_syntax(source, filename)
        else:
            known = entry_points(self.config.entry_points)
            if entry_point not in known:
                offered = ", ".join(sorted(known)) or "none"
                raise ProgramError(f"no server-side program {entry_point!r} (offered: {offered})")
            _check_entry_point_args(entry_point, args or {}, self.broker.decoder.check_qpy)
            entry = "main"
        if not entry.isidentifier():
            raise ProgramError(f"entry {entry!r} is not a Python function name")
        timeout = self.config.program_default_timeout if timeout is None else timeout
        if not 0 < timeout <= self.config.program_max_timeout:
            raise ProgramError(
                f"timeout {timeout:g} s is outside (0, {self.config.program_max_timeout:g}] s"
            )
        if max_iterations is not None and max_iterations < 1:
            raise ProgramError(f"max_iterations must be >= 1, got {max_iterations}")
        try:
            args_text = json.dumps(args or {}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ProgramError(f"args must be a JSON object: {exc}") from None
        now = self.broker.clock()
        job_id = uuid.uuid4().hex
        job = JobRecord(
            job_id=job_id, user=user, account=account, centre=centre, resource=routed.resource,
            kind="hybrid", priority=0, state="queued", created_at=now, finished_at=None,
            session_id=None, name=name or entry_point or filename, task_count=0,
            pool=routed.pool,
        )  # fmt: skip
        record = ProgramRecord(
            job_id=job_id, source=source, entry_point=entry_point, entry=entry,
            args=args_text, timeout=timeout, max_iterations=max_iterations, status="queued",
        )  # fmt: skip
        winner = self.broker.keys.store_once(
            idempotency, job_id, now, lambda key: self.broker.store.create_program(job, record, key)
        )
        if winner is not None:
            return winner
        self.broker.job_log.submitted(job)
        live = _Live(job_id, ProgramOutput(job_id, self.config.program_output_limit))
        thread = threading.Thread(
            target=self._run, args=(job, record, live), name=f"qhpc-program-{job_id[:8]}",
            daemon=True,
        )  # fmt: skip
        with self._lock:
            self._live[job_id] = live
            self._threads[job_id] = thread
        thread.start()
        return job

    # -- control -----------------------------------------------------------------------

    def owns(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._live

    def cancel(self, job_id: str, message: str = "cancelled by its owner") -> bool:
        """Stop a running program (or keep a queued one from starting); False if ended."""
        with self._lock:
            live = self._live.get(job_id)
        if live is None:
            return False
        live.cancel_message = live.cancel_message or message
        if live.handle is not None:
            return live.handle.stop(ProgramStatus.CANCELLED, live.cancel_message)
        return True  # the starting thread sees cancel_message before it starts the program

    def session_closed(self, session_id: str) -> None:
        """Called when a session closes: a program running in it is stopped."""
        with self._lock:
            owners = [live for live in self._live.values() if live.session_id == session_id]
        for live in owners:
            self.cancel(
                live.job_id,
                f"its session {session_id} was closed (Slurm job ended, or an admin closed it)",
            )

    def recover(self) -> list[str]:
        """At start: programs that were queued or running are failed (not resumable).

        Their output so far stays where the writer put it; the message says why they
        ended, and their sessions are closed.
        """
        failed = []
        for record in self.broker.store.open_programs():
            when = "ran" if record.status == "running" else "was queued"
            message = (
                f"interrupted: the broker restarted while the program {when}; hybrid "
                "programs are not resumable: submit it again"
            )
            try:
                self.broker.store.fail_program(record.job_id, message, self.broker.clock())
            except ConflictError:
                continue
            self.broker.job_log.settled(record.job_id, program="failed")
            failed.append(record.job_id)
            if record.session_id is not None:
                try:
                    self.broker.close_session(record.session_id)
                except ConflictError:
                    pass  # closed already
        if failed:
            log.warning("marked %d hybrid program(s) failed after a restart", len(failed))
        return failed

    def close(self, timeout: float = 30.0) -> None:
        """Stop every program (status cancelled), then the pool and the dispatch socket."""
        with self._lock:
            self._closing = True
            live = list(self._live)
            threads = list(self._threads.values())
        for job_id in live:
            self.cancel(job_id, "the broker stopped while the program ran")
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            pool, self._pool = self._pool, None
            dispatcher, self._dispatcher = self._dispatcher, None
        if pool is not None:
            pool.close()
        if dispatcher is not None:
            dispatcher.stop()
        self._writer.close()

    # -- reading -----------------------------------------------------------------------

    def info(self, job_id: str) -> ProgramInfo:
        record = self.broker.store.get_program(job_id)
        with self._lock:
            live = self._live.get(job_id)
        handle = live.handle if live is not None else None
        if handle is not None and live is not None and record.status == "running":
            progress = handle.progress
            calls = self._calls(live.session_id)
            record = replace(record, iterations=handle.iterations, qpu_calls=calls)
            as_dict = None
            if progress is not None:
                as_dict = {
                    "iteration": progress.iteration, "value": progress.value,
                    "fields": progress.fields, "at_s": progress.at_s,
                }  # fmt: skip
            line = progress.describe() if progress is not None else None
            return ProgramInfo(record, calls, as_dict, line, {}, None)
        progress_dict = json.loads(record.progress) if record.progress else None
        line = None
        if progress_dict is not None:
            parts = [f"iteration {progress_dict['iteration']}"]
            if progress_dict.get("value") is not None:
                parts.append(f"value {progress_dict['value']}")
            parts += [f"{k} {v}" for k, v in (progress_dict.get("fields") or {}).items()]
            line = ", ".join(parts)
        timings = json.loads(record.timings) if record.timings else {}
        value = json.loads(record.return_value) if record.return_value else None
        return ProgramInfo(record, record.qpu_calls, progress_dict, line, timings, value)

    def logs(self, job_id: str, stdout_offset: int = 0, stderr_offset: int = 0) -> ProgramLogs:
        """Output from the given byte offsets on: from memory while the program runs here,
        else from the store (the same bytes: the store holds a prefix of memory's)."""
        with self._lock:
            live = self._live.get(job_id)
        if live is not None:
            return read_logs(live.output.read, stdout_offset, stderr_offset, final=False)
        record = self.broker.store.get_program(job_id)  # status first: final means all stored
        final = record.status not in ("queued", "running")

        def stored(stream: str, offset: int) -> tuple[bytes, int]:
            return self.broker.store.read_output(job_id, stream, offset)

        return read_logs(stored, stdout_offset, stderr_offset, final=final)

    def pool(self) -> RuntimePool:
        """The runtime pool, created on first use."""
        with self._lock:
            if self._closing:
                raise ProgramError("the broker is stopping")
            if self._pool is None:
                self._dispatcher = DirectDispatcher(self.broker)
                self._pool = RuntimePool(
                    size=self.config.runtime_pool_size,
                    qpu_factory="qhpc.session:make_qpu",
                    limits=self.config.program_limits,
                    default_timeout=self.config.program_default_timeout,
                )  # fmt: skip
            return self._pool

    def pool_stats(self) -> PoolStats | None:
        """The runtime pool's figures, None before the first program (never creates it)."""
        with self._lock:
            pool = self._pool
        return None if pool is None else pool.stats()

    @property
    def endpoint(self) -> str:
        """The direct dispatch endpoint programs reach the broker on (starts the pool)."""
        self.pool()
        assert self._dispatcher is not None
        return self._dispatcher.endpoint

    # -- one program's life ------------------------------------------------------------

    def _calls(self, session_id: str | None) -> int:
        if session_id is None:
            return 0
        try:
            return self.broker.get_job(session_id).task_count
        except QhpcError:
            return 0

    def _run(self, job: JobRecord, record: ProgramRecord, live: _Live) -> None:
        bind(job_id=job.job_id, user=job.user, resource=job.resource)  # this thread's records
        began = time.monotonic()
        try:
            self._run_program(job, record, live, began)
        except Exception as exc:  # never leave a job open because of a bug here
            log.exception("hybrid job %s failed in the broker", job.job_id)
            self._finish_unstarted(job.job_id, live, "failed", f"internal error: {exc!r}")
        finally:
            self._writer.finish(live.output)  # written before readers turn to the store
            with self._lock:
                self._live.pop(job.job_id, None)
                self._threads.pop(job.job_id, None)

    def _finish_unstarted(self, job_id: str, live: _Live, status: str, message: str) -> None:
        try:
            record = replace(
                self.broker.store.get_program(job_id), status=status, message=message,
                finished_at=self.broker.clock(),
            )  # fmt: skip
            self.broker.store.finish_program(record, JOB_STATE_OF[status])
            self.broker.job_log.settled(job_id, program=status)
        except ConflictError:
            pass
        if live.session_id is not None:
            self._close_session(live.session_id)

    def _run_program(
        self, job: JobRecord, record: ProgramRecord, live: _Live, began: float
    ) -> None:
        broker = self.broker
        if live.cancel_message is not None:
            self._finish_unstarted(job.job_id, live, "cancelled", live.cancel_message)
            return
        try:
            pool = self.pool()
            endpoint = self.endpoint
        except (RuntimeBaseError, QhpcError, OSError) as exc:
            self._finish_unstarted(job.job_id, live, "failed", f"cannot start the runtime: {exc}")
            return
        session, token = broker.open_session(
            user=job.user, account=job.account, resource=job.resource, centre=job.centre,
            deadline=broker.clock() + record.timeout + SESSION_MARGIN_S,
        )  # fmt: skip
        live.session_id = session.session_id
        try:
            broker.store.start_program(job.job_id, session.session_id, broker.clock())
        except ConflictError:  # cancelled between submit and here
            self._close_session(session.session_id)
            return
        if record.entry_point is not None:
            target = entry_points(self.config.entry_points)[record.entry_point]
            source, args = entry_point_source(target), {"spec": json.loads(record.args)}
        else:
            assert record.source is not None
            source, args = record.source, json.loads(record.args)
        # The program reaches the QPU through ``endpoint`` (QHPC_FASTPATH) and the REST
        # API, if this broker knows where it is served, through QHPC_URL: the same two
        # names as in a Slurm job, so qhpc.connect() and QPU.from_env() work in both.
        rest = {URL_ENV: self.rest_url} if self.rest_url else {}
        context = ProgramContext(
            endpoint=endpoint, session_token=token, resource=job.resource, user=job.user,
            account=job.account, env=rest,
        )  # fmt: skip
        self._writer.add(live.output)

        def on_output(stream: str, text: str) -> None:  # on the pool's I/O thread: no I/O
            if live.output.write(stream, text) >= FLUSH_BYTES:
                self._writer.nudge()

        submitted = time.monotonic()
        try:
            handle = pool.start_program(
                source, record.entry, args, timeout=record.timeout,
                max_iterations=record.max_iterations, on_output=on_output, context=context,
                program_id=job.job_id,
            )  # fmt: skip
        except (RuntimeBaseError, OSError) as exc:
            self._finish_unstarted(job.job_id, live, "failed", f"cannot start the program: {exc}")
            return
        live.handle = handle
        program_started(job, session.session_id)
        if live.cancel_message is not None:  # cancelled while it was being started
            handle.stop(ProgramStatus.CANCELLED, live.cancel_message)
        outcome = handle.wait()
        # All output has been delivered once the outcome is (pipes drained): store it
        # before the outcome, so a final program's output is complete in the store.
        self._writer.finish(live.output)
        closing = time.monotonic()
        self._close_session(session.session_id)
        closed = time.monotonic()
        stats = self._dispatcher.stats(session.session_id) if self._dispatcher else None
        if self._dispatcher is not None:
            self._dispatcher.forget(session.session_id)
        timings = _timings(outcome, submitted - began, closed - closing, stats)
        self._store_outcome(record, outcome, session.session_id, timings)

    def _close_session(self, session_id: str) -> None:
        try:
            self.broker.close_session(session_id)
        except ConflictError:
            pass  # closed from outside (Slurm, an admin): that is what stopped it

    def _store_outcome(
        self, record: ProgramRecord, outcome: ProgramOutcome, session_id: str,
        timings: dict[str, float],
    ) -> None:  # fmt: skip
        status = str(outcome.status)
        message = outcome.error
        value: str | None = None
        if outcome.status is ProgramStatus.COMPLETED:
            value = json.dumps(outcome.return_value, default=repr)
            if outcome.return_is_repr:
                message = "the return value could not be encoded; it is shown as its repr"
        progress = outcome.progress
        progress_text = None
        if progress is not None:
            progress_text = json.dumps(
                {"iteration": progress.iteration, "value": progress.value,
                 "fields": progress.fields, "at_s": progress.at_s},
                default=repr,
            )  # fmt: skip
        final = replace(
            record, status=status, message=message, return_value=value,
            timings=json.dumps(timings), progress=progress_text, iterations=outcome.iterations,
            qpu_calls=self._calls(session_id), session_id=session_id,
            started_at=self.broker.store.get_program(record.job_id).started_at,
            finished_at=self.broker.clock(),
        )  # fmt: skip
        try:
            self.broker.store.finish_program(final, JOB_STATE_OF[status])
        except ConflictError:
            log.warning("program of job %s had already been finished", record.job_id)
            return
        self.broker.job_log.settled(record.job_id, program=status)


def _check_entry_point_args(
    name: str, args: dict[str, Any], screen: Callable[[bytes], None]
) -> None:
    """Run the entry point's admission check; ``screen`` gets every QPY blob the check
    would decode in this process first (a decoding worker's budget: docs/security.md)."""
    target = ENTRY_POINT_CHECKS.get(name)
    if target is None:
        return
    module, _, function = target.partition(":")
    check = getattr(importlib.import_module(module), function)
    try:
        check(args, screen=screen)
    except ValueError as exc:
        raise ProgramError(f"server-side program {name!r} refused its args: {exc}") from None


def _check_syntax(source: str, filename: str) -> None:
    try:
        compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        text = (exc.text or "").rstrip()
        shown = f": {text.strip()}" if text else ""
        raise ProgramError(f"syntax error in {filename} at {where}: {exc.msg}{shown}") from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
        raise ProgramError(f"{filename} cannot be compiled: {exc}") from None


def _timings(
    outcome: ProgramOutcome, prepare_s: float, close_s: float, stats: Any
) -> dict[str, float]:
    """The per-program timings the job reports (seconds; see docs/runtime.md)."""
    t = outcome.timings
    timings: dict[str, float] = {
        # job start → user code running: session, spare process, isolation
        "initialisation_s": prepare_s + t.get("start_s", t.get("first_reply_s", 0.0)),
        "run_s": t.get("run_s", 0.0),
        # outcome (or kill) → process reaped, plus closing the session (books usage)
        "termination_s": t.get("termination_s", 0.0) + close_s,
        # the program's return → its outcome known to the broker
        "outcome_delivery_s": t.get("outcome_delivery_s", 0.0),
        "total_s": prepare_s + t.get("total_s", 0.0) + close_s,
    }
    if stats is not None and stats.calls:
        timings["qpu_s"] = stats.qpu_s
        timings["dispatch_overhead_s"] = stats.dispatch_overhead_s
        timings["dispatch_overhead_per_call_s"] = stats.dispatch_overhead_s / stats.calls
        timings["classical_s"] = max(0.0, timings["run_s"] - stats.busy_s)
    else:
        timings["qpu_s"] = 0.0
        timings["classical_s"] = timings["run_s"]
    return timings
