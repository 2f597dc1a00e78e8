"""The warm runtime pool: a template process forks a fresh process per user program.

Process tree (``ps`` shows exactly this)::

    broker (multi-threaded; the pool's I/O thread lives here)
     └─ template  python -m qhpc.runtime.zygote   spawned, imports numpy/scipy/qiskit/aer once
         ├─ program process (spare: own session, already the program uid, warmed up, waiting)
         ├─ program process (running user code)
         │   └─ whatever the program forked (killed with it)
         └─ …

Channels (AF_UNIX socketpairs, frames in :mod:`qhpc.runtime.wire`):
pool ↔ template ``SOCK_SEQPACKET`` (fork requests carrying 3 fds, ``Forked``,
``Reaped``); pool ↔ each program process ``SOCK_STREAM`` on its fd 3 (``StartProgram``
→, ← ``Running``, ``ProgressReport``, ``Finished``) plus a pipe each for stdout and
stderr. The template is on no program's path once it has forked it.

A start costs "send one frame to a process that is already forked and waiting":
the pool keeps ``size`` spares (each with its work dir made) and asks for a
replacement shortly after each start. Every program runs in a process nobody ran
before, so no state leaks between users. The template is replaced after
``recycle_after`` forks or when its RSS passes ``max_rss_mb``; it keeps serving
until its successor is ready, so there is no gap.

Ending costs the kernel's exit of a process that maps what the template imported
(~1 ms quiet, more on a loaded machine; ``bench/bench_dispatch.py`` measures that
floor next to ours); the outcome is handed out once the process is reaped, so
nothing it started is still running when the caller sees it.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from qhpc.runtime import isolation
from qhpc.runtime.errors import (
    NoSpareError,
    PoolClosedError,
    ProgramArgumentsError,
    TemplateStartError,
    WaitTimeout,
    WireError,
)
from qhpc.runtime.handle import OutputCallback, ProgramHandle
from qhpc.runtime.hooks import QpuFactory, factory_spec
from qhpc.runtime.isolation import DEFAULT_ENV_ALLOW, Limits
from qhpc.runtime.loop import EventLoop
from qhpc.runtime.outcome import ProgramContext, ProgramOutcome, ProgramStatus
from qhpc.runtime.templates import Spare, Template, read_program, spawn_template
from qhpc.runtime.warmup import DEFAULT_WARM_UP
from qhpc.runtime.wire import (
    Forked,
    ForkFailed,
    Reaped,
    StartProgram,
    TemplateFailed,
    TemplateReady,
    encode,
)

log = logging.getLogger(__name__)

DEFAULT_PRELOAD: tuple[str, ...] = ("numpy", "scipy", "qiskit", "qiskit_aer")
#: after a start, wait this long before forking a replacement while spares remain
REFILL_DELAY_S = 0.05


@dataclass(frozen=True)
class PoolStats:
    generation: int
    template_pid: int | None
    template_forked: int
    template_rss_mb: float
    spares: int
    running: int
    templates_started: int
    programs_started: int


def warm_up_spec(
    warmup: bool | str | Callable[[], object] | None, preload: tuple[str, ...]
) -> str | None:
    """What the template runs before forking: ``"auto"`` is the default warm-up of
    :mod:`qhpc.runtime.warmup` when the preload has qiskit (what it warms), ``True``
    always, ``False``/``None`` never; a function or ``module:function`` runs instead."""
    if warmup == "auto":
        return DEFAULT_WARM_UP if "qiskit" in preload else None
    if warmup is True:
        return DEFAULT_WARM_UP
    if warmup is False or warmup is None:
        return None
    function: Any = warmup  # only its import path is read
    try:
        return factory_spec(function)
    except ValueError:
        raise ValueError(
            "warmup must be True, False, 'auto', a module-level function or a "
            "'module:function' / '/path/file.py:function' string"
        ) from None


class RuntimePool:
    """Warm classical runtimes for hybrid programs (see the module docstring).

    ``warmup`` (see :func:`warm_up_spec`): by default a template that preloads
    qiskit runs one tiny stack before it forks, so programs start with the
    optimiser, transpiler and codec warm, not only imported.
    """

    def __init__(
        self, size: int = 2, recycle_after: int = 50, max_rss_mb: float = 2048,
        preload: tuple[str, ...] = DEFAULT_PRELOAD, *, limits: Limits | None = None,
        run_as: str | None = "auto", qpu_factory: str | QpuFactory | None = None,
        grace_s: float = 0.5, default_timeout: float | None = 3600.0,
        env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW, workdir_parent: str | None = None,
        output_limit: int = 4 << 20, python: str = sys.executable, huge_pages: bool = True,
        warmup: bool | str | Callable[[], object] | None = "auto",
    ) -> None:  # fmt: skip
        if size < 1 or recycle_after < 1:
            raise ValueError("size and recycle_after must be >= 1")
        self.size, self.recycle_after, self.max_rss_mb = size, recycle_after, max_rss_mb
        self.preload = tuple(preload)
        self.limits = limits or Limits()
        self.run_as = isolation.resolve_run_as(run_as)
        if self.limits.processes is not None and self.run_as is None:
            log.warning("Limits.processes is ignored: programs run under the pool's own uid")
        self.grace_s, self.default_timeout = grace_s, default_timeout
        self.env_allow, self.output_limit, self.python = env_allow, output_limit, python
        self.huge_pages = huge_pages
        self.warmup = warm_up_spec(warmup, self.preload)
        self._qpu_factory = factory_spec(qpu_factory)
        self._base = isolation.make_base_dir(workdir_parent)
        # A pool dropped without close(): its templates see end of stream and stop their
        # programs; this removes the work dirs.
        weakref.finalize(self, isolation.remove_tree, self._base)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._spares: deque[Spare] = deque()
        self._running: dict[int, ProgramHandle] = {}
        self._current: Template | None = None
        self._successor: Template | None = None
        self._templates: list[Template] = []
        self._error: str | None = None
        self._successor_failed_at = float("-inf")
        self._closed = False
        self._seq = itertools.count(1)
        self._generation = 0
        self._started = 0
        self._loop = EventLoop("qhpc-runtime-pool")
        with self._lock:
            self._current = self._spawn_template()

    # -- public API -------------------------------------------------------------------

    def __enter__(self) -> RuntimePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until ``size`` spares are forked and waiting."""
        with self._changed:
            self._wait(lambda: len(self._spares) >= self.size, time.monotonic() + timeout)

    def run(
        self, program: str | os.PathLike[str], entry: str = "main",
        args: dict[str, Any] | None = None, *, timeout: float | None = None,
        max_iterations: int | None = None, limits: Limits | None = None,
        on_output: OutputCallback | None = None, context: ProgramContext | None = None,
        program_id: str | None = None,
    ) -> ProgramOutcome:  # fmt: skip
        """Run a program to its end (see :meth:`start_program`); returns its outcome."""
        return self.start_program(
            program, entry, args, timeout=timeout, max_iterations=max_iterations, limits=limits,
            on_output=on_output, context=context, program_id=program_id,
        ).wait()  # fmt: skip

    def start_program(
        self, program: str | os.PathLike[str], entry: str = "main",
        args: dict[str, Any] | None = None, *, timeout: float | None = None,
        max_iterations: int | None = None, limits: Limits | None = None,
        on_output: OutputCallback | None = None, context: ProgramContext | None = None,
        program_id: str | None = None, spare_timeout: float = 120.0,
    ) -> ProgramHandle:  # fmt: skip
        """Start ``program`` (a ``.py`` path or source text) in a fresh process.

        The module's ``entry(**args)`` is called, or, when ``entry`` is left at
        ``"main"`` and the module has no ``main``, Quantum Inspire's shape:
        ``execute(qi)`` then ``finalize(results)`` if defined. ``timeout`` (wall
        clock, from now; default the pool's) and ``max_iterations`` (checked by the
        program's ``report()``) are stop conditions. Paths are read with the pool's
        privileges: pass files the broker staged, never a path a user chose.
        """
        submitted_at = time.monotonic()
        source, filename = read_program(program)
        context = context or ProgramContext()
        try:
            raw_args = msgspec.Raw(msgspec.msgpack.encode(args or {}))
        except (TypeError, msgspec.EncodeError) as exc:
            raise ProgramArgumentsError(f"program args must be msgpack-able: {exc}") from None
        timeout = self.default_timeout if timeout is None else timeout
        limits = limits or self.limits
        with self._changed:
            self._started += 1
            program_id = program_id or f"program-{self._started}"
            while True:
                spare = self._take_spare(submitted_at + spare_timeout)
                workdir = spare.workdir
                start = StartProgram(
                    program_id=program_id, source=source, filename=filename, entry=entry,
                    entry_explicit=entry != "main", args=raw_args, context=context,
                    env=self._environment(context, program_id, workdir), workdir=workdir,
                    limits=limits, run_as=self.run_as, max_iterations=max_iterations,
                    submitted_at=submitted_at,
                )  # fmt: skip
                try:
                    spare.control.sendall(encode(start))
                    break
                except OSError:  # the spare died since it was forked: use the next one
                    spare.discard()
            handle = ProgramHandle(
                program_id=program_id, pid=spare.pid, control=spare.control,
                stdout_fd=spare.stdout_fd, stderr_fd=spare.stderr_fd, loop=self._loop,
                workdir=workdir, submitted_at=submitted_at, timeout=timeout,
                grace_s=self.grace_s, limits=limits, output_limit=self.output_limit,
                on_output=on_output, on_done=self._on_program_done,
            )  # fmt: skip
            self._running[spare.pid] = handle
            spare.template.running.add(spare.pid)
            if self._spares:
                # A fork costs the template ~2-4 ms of CPU, and it cannot reap while it
                # forks: give the new program's start and a short program's exit priority.
                self._loop.call_at(time.monotonic() + REFILL_DELAY_S, self._top_up_locked)
            else:
                self._top_up()
        return handle

    def stats(self) -> PoolStats:
        with self._lock:
            current = self._current
            return PoolStats(
                generation=current.generation if current else 0,
                template_pid=current.pid if current and current.ready else None,
                template_forked=current.forked if current else 0,
                template_rss_mb=current.rss_mb if current else 0.0,
                spares=len(self._spares), running=len(self._running),
                templates_started=self._generation, programs_started=self._started,
            )  # fmt: skip

    def close(self, timeout: float = 5.0) -> None:
        """Cancel running programs, stop the templates, remove the work dirs."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            running = list(self._running.values())
            self._changed.notify_all()
        for handle in running:
            handle.stop(ProgramStatus.CANCELLED, "the runtime pool was closed", immediate=True)
        deadline = time.monotonic() + timeout
        for handle in running:
            try:
                handle.wait(max(0.0, deadline - time.monotonic()))
            except WaitTimeout:
                log.warning("runtime pool: program %s did not end at close", handle.program_id)
        with self._lock:
            spares, self._spares = list(self._spares), deque()
            templates = list(self._templates)
            for template in templates:
                spares += template.pending.values()
                template.pending.clear()
        for spare in spares:
            spare.discard()
        for template in templates:  # end of stream: the template kills its children, exits
            self._loop.remove_reader(template.sock.fileno())
            template.sock.close()
        for template in templates:
            template.reap()
        self._loop.stop()
        isolation.remove_tree(self._base)

    # -- internals (hold self._lock unless noted) --------------------------------------

    def _wait(self, ready: Callable[[], bool], deadline: float) -> None:
        while not ready():
            if self._closed:
                raise PoolClosedError("the runtime pool is closed")
            if self._error is not None:
                raise TemplateStartError(f"the template process failed:\n{self._error}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoSpareError("no program process became ready in time")
            self._changed.wait(min(remaining, 1.0))

    def _take_spare(self, deadline: float) -> Spare:
        self._wait(lambda: bool(self._spares), deadline)
        return self._spares.popleft()

    def _environment(
        self, context: ProgramContext, program_id: str, workdir: str
    ) -> dict[str, str]:
        extra = isolation.context_variables(context, program_id)
        try:
            return isolation.program_environment(os.environ, self.env_allow, extra, workdir)
        except ValueError as exc:
            raise ProgramArgumentsError(str(exc)) from None

    def _spawn_template(self) -> Template:
        self._generation += 1
        template = spawn_template(
            self._generation, python=self.python, preload=self.preload,
            env_allow=self.env_allow, qpu_factory=self._qpu_factory, huge_pages=self.huge_pages,
            run_as=self.run_as, warm_up=self.warmup,
        )  # fmt: skip
        self._templates.append(template)
        self._loop.add_reader(template.sock.fileno(), lambda: self._on_template(template))
        return template

    def _top_up(self) -> None:
        template = self._current
        if template is None or not template.ready or self._closed:
            return
        for _ in range(self.size - len(self._spares) - len(template.pending)):
            seq = next(self._seq)
            template.request_fork(seq, isolation.make_workdir(self._base, f"w{seq}", self.run_as))

    def _on_program_done(self, handle: ProgramHandle) -> None:
        with self._lock:
            self._running.pop(handle.pid, None)
            for template in self._templates:
                template.running.discard(handle.pid)
            self._retire_finished()

    def _retire_finished(self) -> None:
        for template in list(self._templates):
            if template.popen.poll() is not None and not template.running:
                self._templates.remove(template)

    # -- template messages (I/O thread) ---------------------------------------------------

    def _on_template(self, template: Template) -> None:
        try:
            message = template.receive()
        except BlockingIOError:
            return
        except WireError:
            log.exception("runtime pool: bad frame from template %s", template.pid)
            return
        if message is None:
            self._on_template_gone(template)
            return
        handle: ProgramHandle | None = None
        with self._changed:
            if isinstance(message, Reaped):
                handle = self._running.get(message.pid)
                if handle is None and self._forget_spare(message.pid):
                    # A spare died unused (OOM killer, or its setup failed): replace it, but
                    # not at once, so a setup that always fails cannot spin.
                    log.warning("runtime pool: spare %s ended unused", message.pid)
                    self._loop.call_at(time.monotonic() + 0.5, self._top_up_locked)
            else:
                self._on_template_message(template, message)
            self._changed.notify_all()
        if handle is not None and isinstance(message, Reaped):
            handle.on_reaped(message)

    def _on_template_message(
        self, template: Template, message: TemplateReady | TemplateFailed | Forked | ForkFailed
    ) -> None:
        if isinstance(message, TemplateReady):
            template.ready, template.pid, template.rss_mb = True, message.pid, message.rss_mb
            if template is self._successor:
                self._promote(template)
            self._top_up()
        elif isinstance(message, TemplateFailed):
            log.error("runtime pool: template failed to start:\n%s", message.message)
            if template is self._current:
                self._error = message.message
            if template is self._successor:  # keep the current one; retry in a minute
                self._successor, self._successor_failed_at = None, time.monotonic()
        elif isinstance(message, Forked):
            spare = template.pending.pop(message.seq)
            spare.pid = message.pid
            template.forked, template.rss_mb = message.forked, message.rss_mb
            if template is self._current and not self._closed:
                self._spares.append(spare)
            else:
                spare.discard()
            worn = message.forked >= self.recycle_after or message.rss_mb > self.max_rss_mb
            retry = time.monotonic() - self._successor_failed_at > 60.0
            if worn and retry and template is self._current and self._successor is None:
                self._successor = self._spawn_template()
        else:
            log.warning("runtime pool: fork failed: %s", message.message)
            template.pending.pop(message.seq).discard()
            self._loop.call_at(time.monotonic() + 0.5, self._top_up_locked)

    def _top_up_locked(self) -> None:
        with self._changed:
            self._top_up()

    def _promote(self, successor: Template) -> None:
        old, self._current, self._successor = self._current, successor, None
        stale = [s for s in self._spares if s.template is old]
        self._spares = deque(s for s in self._spares if s.template is not old)
        for spare in stale:
            spare.discard()
        if old is not None:
            old.drain()

    def _forget_spare(self, pid: int) -> bool:
        for spare in list(self._spares):
            if spare.pid == pid:
                self._spares.remove(spare)
                spare.discard()
                return True
        return False

    def _on_template_gone(self, template: Template) -> None:
        self._loop.remove_reader(template.sock.fileno())
        template.sock.close()
        template.reap()
        with self._changed:
            lost = [self._running[pid] for pid in template.running if pid in self._running]
            for spare in [s for s in self._spares if s.template is template]:
                self._spares.remove(spare)
                spare.discard()
            for spare in template.pending.values():
                spare.discard()
            template.pending.clear()
            if template is self._current and not self._closed and self._error is None:
                log.error("runtime pool: template %s died; starting another", template.pid)
                self._current = self._successor or self._spawn_template()
                self._successor = None
            self._retire_finished()
            self._changed.notify_all()
        for handle in lost:
            handle.on_template_lost()
