"""The program process: forked from the template, runs one user program, then ``os._exit``.

Life of one process: fork → own session, stdio on the pool's pipes, control socket
on fd 3, every other descriptor closed → wait (a spare) → ``StartProgram`` →
isolation (:mod:`qhpc.runtime.isolation`) → ``Running`` → user code → ``Finished``
→ ``os._exit``. It never tears the interpreter down gracefully: with qiskit loaded
that costs 160-200 ms, ``os._exit`` a few.

Inside, user code reaches the runtime through :func:`current_program` or through
parameters of its entry point named ``qpu``/``qi``, ``report``, ``context`` or
``runtime``.
"""

from __future__ import annotations

import fcntl
import inspect
import io
import linecache
import os
import resource
import signal
import socket
import sys
import tempfile
import time
import traceback
import types
from typing import Any, NoReturn

import msgspec

from qhpc.envvars import FASTPATH_ENV, PROGRAM_ID_ENV, RESOURCE_ENV, SESSION_ENV, URL_ENV
from qhpc.runtime import isolation
from qhpc.runtime.api import (
    CpuLimitExceeded,
    IterationLimitReached,
    ProgramRuntime,
    ProgramStopped,
    activate,
)
from qhpc.runtime.errors import QpuNotConfiguredError
from qhpc.runtime.hooks import QpuFactory, UnconfiguredQpu
from qhpc.runtime.outcome import ProgramContext
from qhpc.runtime.wire import (
    CONTROL_FD,
    HEADER,
    MAX_CHILD_FRAME,
    MAX_START_FRAME,
    NIL,
    START_DECODER,
    Finished,
    ProgressReport,
    Running,
    StartProgram,
    encode,
    recv_frame,
    send_frame,
)

#: the module name user code runs under (``__main__`` would run ``if __name__`` blocks)
PROGRAM_MODULE = "qhpc_program"
#: parameters of an entry point the runtime fills in when ``args`` does not
INJECTED = ("qpu", "qi", "report", "context", "runtime")
#: exit code when the outcome could not be sent (user code closed the control socket)
EXIT_NO_CHANNEL = 71


class _ShapeError(Exception):
    """The program cannot be run as given (no entry point, setup failed): no traceback."""


def _raise_stopped(signum: int, frame: types.FrameType | None) -> None:
    raise ProgramStopped("stopped by the runtime (SIGTERM)")


def _raise_cpu(signum: int, frame: types.FrameType | None) -> None:
    raise CpuLimitExceeded("CPU-time limit reached (SIGXCPU)")


def _prepare(
    ctl_fd: int, out_fd: int, err_fd: int, template_pid: int, run_as: isolation.RunAs | None
) -> socket.socket:
    """Own process group, stdio on the pool's pipes, fd 3 = control, nothing else open.

    The identity is pool-wide, so a spare drops privileges before it waits: no
    start pays for it, and a spare never holds root longer than it must.
    """
    isolation.enter_own_process_group()
    if run_as is not None:
        isolation.drop_privileges(run_as)
    isolation.set_parent_death_signal(signal.SIGKILL)  # after the uid change, which clears it
    if os.getppid() != template_pid:  # the template died before the line above
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    # Move the sources above the targets first so no dup2 overwrites one still needed.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (devnull, out_fd, err_fd, ctl_fd)]
    for target, fd in enumerate(moved):
        os.dup2(fd, target, inheritable=target != CONTROL_FD)
    isolation.close_inherited_fds(CONTROL_FD)
    # Unbuffered text streams: whatever the program printed survives a kill.
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = io.TextIOWrapper(
            io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
            write_through=True,
        )  # fmt: skip
        setattr(sys, name, stream)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Installed now rather than at the start: a spare told to stop just ends.
    signal.signal(signal.SIGTERM, _raise_stopped)
    signal.signal(signal.SIGXCPU, _raise_cpu)
    return socket.socket(fileno=CONTROL_FD)


def _set_environment(env: dict[str, str]) -> None:
    # Changes only: the template's environment is already scrubbed, and each
    # putenv/unsetenv through os.environ costs microseconds.
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _isolate(start: StartProgram) -> None:
    if os.getcwd() != start.workdir:
        os.chdir(start.workdir)
    _set_environment(start.env)
    tempfile.tempdir = None  # the template may have cached /tmp
    os.umask(0o077)
    if start.run_as is not None and os.getuid() != start.run_as.uid:
        raise PermissionError(f"program process is uid {os.getuid()}, not {start.run_as.user}")
    # Unprivileged now: limits can only be lowered, and the program cannot raise them.
    isolation.apply_limits(start.limits, other_uid=start.run_as is not None)


def _load(start: StartProgram) -> types.ModuleType:
    lines = start.source.splitlines(keepends=True)
    # Tracebacks read source through linecache; the file itself may be unreadable here.
    linecache.cache[start.filename] = (len(start.source), None, lines, start.filename)
    code = compile(start.source, start.filename, "exec")
    module = types.ModuleType(PROGRAM_MODULE)
    module.__file__ = start.filename
    sys.modules[PROGRAM_MODULE] = module
    sys.argv = [start.filename]
    exec(code, module.__dict__)
    return module


def _injected(fn: Any, args: dict[str, Any], runtime: ProgramRuntime | None) -> dict[str, Any]:
    try:
        names = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return args
    values: dict[str, Any] = dict(args)
    for name in INJECTED:
        if runtime is None or name not in names or name in values:
            continue
        if name in ("qpu", "qi"):
            values[name] = runtime.qpu  # built only when the entry point asks for it
        elif name == "report":
            values[name] = runtime.report
        elif name == "context":
            values[name] = runtime.context
        else:
            values[name] = runtime
    return values


def _collected_results(qi: object, fallback: Any) -> Any:
    # Quantum Inspire's QuantumInterface keeps every measurement; finalize() gets those.
    if isinstance(qi, UnconfiguredQpu):
        return fallback
    try:
        collected = qi.results  # type: ignore[attr-defined]
    except (AttributeError, QpuNotConfiguredError):
        return fallback
    return collected() if callable(collected) else collected


def _call_entry(module: types.ModuleType, start: StartProgram, runtime: ProgramRuntime) -> Any:
    args: dict[str, Any] = msgspec.msgpack.decode(start.args)
    namespace = module.__dict__
    entry = namespace.get(start.entry)
    if start.entry_explicit or callable(entry):
        if not callable(entry):
            raise _ShapeError(f"the program defines no function {start.entry!r}")
        return entry(**_injected(entry, args, runtime))
    execute = namespace.get("execute")
    if not callable(execute):
        public = sorted(n for n, v in namespace.items() if callable(v) and not n.startswith("_"))
        raise _ShapeError(
            "the program defines neither main() nor execute(qi) "
            f"(its functions: {', '.join(public) or 'none'})"
        )
    qi = runtime.qpu
    result = execute(qi, **args)
    finalize = namespace.get("finalize")
    if callable(finalize):
        return finalize(_collected_results(qi, result))
    return result


def _user_traceback(exc: BaseException) -> str:
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    # The runtime's own frames (the call into user code, the signal handlers) say
    # nothing to the user.
    report.stack = traceback.StackSummary.from_list(
        [frame for frame in report.stack if frame.filename != __file__]
    )
    return "".join(report.format()).rstrip()


def _to_builtin(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_value_encoder = msgspec.msgpack.Encoder(enc_hook=_to_builtin)


def _encode_value(value: Any) -> tuple[msgspec.Raw, str | None]:
    try:
        data = _value_encoder.encode(value)
        if len(data) < MAX_CHILD_FRAME - 65536:
            return msgspec.Raw(data), None
    except Exception:
        pass
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return msgspec.Raw(NIL), text[:100_000]


def _run(control: socket.socket, start: StartProgram, make_qpu: QpuFactory) -> int:
    status, value, error, started_at = "failed", None, None, None
    try:
        try:
            _isolate(start)
        except Exception as exc:  # e.g. a limit above what the program's uid may set
            raise _ShapeError(f"runtime setup failed before user code ran: {exc!r}") from None
        runtime = ProgramRuntime(control, start, make_qpu)
        activate(runtime)
        started_at = time.monotonic()
        send_frame(control, Running(started_at))
        value = _call_entry(_load(start), start, runtime)
        status = "completed"
    except ProgramStopped as exc:
        status, error = "stopped", _user_traceback(exc)
    except CpuLimitExceeded as exc:
        status = "limit"
        error = f"CPU-time limit of {start.limits.cpu_seconds} s exceeded\n{_user_traceback(exc)}"
    except IterationLimitReached as exc:
        status, error = "limit", f"{exc}\n{_user_traceback(exc)}"
    except MemoryError as exc:
        isolation.release_memory_reserve()
        if start.limits.address_space_mb is None:  # not our limit: the machine's memory
            error = f"the program ran out of memory\n{_user_traceback(exc)}"
        else:
            status = "limit"
            error = (
                f"memory limit: the program exceeded its address space of "
                f"{start.limits.address_space_mb} MiB (MemoryError)\n{_user_traceback(exc)}"
            )
    except SystemExit as exc:
        if exc.code in (None, 0):
            status = "completed"
        else:
            error = f"the program called sys.exit({exc.code!r})"
    except _ShapeError as exc:
        error = str(exc)
    except BaseException as exc:
        error = _user_traceback(exc)
    ended_at = time.monotonic()
    # From here on a late SIGTERM/SIGXCPU must not interrupt sending the outcome.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGXCPU})
    raw, text = _encode_value(value) if status == "completed" else (msgspec.Raw(NIL), None)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    finished = Finished(
        status=status, value=raw, value_repr=text, error=error, started_at=started_at,
        at=ended_at, cpu_s=usage.ru_utime + usage.ru_stime, max_rss_kb=usage.ru_maxrss,
    )  # fmt: skip
    try:
        send_frame(control, finished)
    except OSError:
        return EXIT_NO_CHANNEL
    return 0


_WARM_UP_SOURCE = "def main(value=None):\n    return {'value': value}\n"


#: the variables a co-located program is started with (runtime.isolation), set once
#: here so glibc's allocation for each is taken while the process is still a spare
_WARM_UP_NAMES = (PROGRAM_ID_ENV, SESSION_ENV, URL_ENV, RESOURCE_ENV, FASTPATH_ENV)


def _warm_up(workdir: str) -> None:
    """Run the start path once on dummy data, while this process is still a spare.

    A fresh fork shares every page with the template; the first write to one (even a
    reference count) copies it. Taking those faults now keeps them off the start.
    """
    sample = StartProgram(
        program_id="warm-up", source=_WARM_UP_SOURCE, filename="<warm-up>", entry="main",
        entry_explicit=False, args=msgspec.Raw(msgspec.msgpack.encode({"value": 1})),
        context=ProgramContext(), env={}, workdir="/", limits=isolation.Limits(),
        run_as=None, max_iterations=None, submitted_at=time.monotonic(),
    )  # fmt: skip
    data = encode(sample)
    START_DECODER.decode(data[HEADER.size :])
    namespace: dict[str, Any] = {}
    exec(compile(sample.source, sample.filename, "exec"), namespace)
    entry = namespace["main"]
    value = entry(**_injected(entry, msgspec.msgpack.decode(sample.args), None))
    raw, _ = _encode_value(value)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    encode(Running(time.monotonic()))
    encode(ProgressReport(1, 1.0, {}, time.monotonic()))
    encode(Finished(status="completed", value=raw, at=time.monotonic(), cpu_s=usage.ru_utime,
                    max_rss_kb=usage.ru_maxrss))  # fmt: skip
    # The isolation steps: its own directory (known at fork), the environment as far as
    # it is known (each new variable costs glibc a fresh allocation: take it now), then
    # no-ops for umask and limits.
    os.chdir(workdir)
    for name in _WARM_UP_NAMES:
        os.environ[name] = workdir
        del os.environ[name]
    _set_environment({**os.environ, "HOME": workdir, "TMPDIR": workdir, "PWD": workdir})
    tempfile.tempdir = tempfile.tempdir
    os.umask(os.umask(0o077))
    for limit in (resource.RLIMIT_CORE, resource.RLIMIT_NOFILE, resource.RLIMIT_CPU,
                  resource.RLIMIT_AS, resource.RLIMIT_NPROC):  # fmt: skip
        resource.setrlimit(limit, resource.getrlimit(limit))


def child_main(
    ctl_fd: int, out_fd: int, err_fd: int, make_qpu: QpuFactory, template_pid: int,
    run_as: isolation.RunAs | None, workdir: str,
) -> NoReturn:  # fmt: skip
    """Body of a forked program process; never returns."""
    code = 70
    try:
        control = _prepare(ctl_fd, out_fd, err_fd, template_pid, run_as)
        _warm_up(workdir)
        start = recv_frame(control, START_DECODER, MAX_START_FRAME)
        code = 0 if start is None else _run(control, start, make_qpu)
    except BaseException:
        pass
    os._exit(code)
