"""Isolation of user programs: limits, identity, environment, files.

"All code run within the platform is run unsupervised" (Quantum Inspire, §V), so a
program process gets, before any user code runs:

- its own session and process group (``setsid``) and is a child subreaper, so every
  process it forks stays in its tree and is killed with it when it ends;
- rlimits: CPU seconds (SIGXCPU at the soft limit, SIGKILL 2 s later), address
  space (``MemoryError`` in user code), open files, no core files, and
  ``RLIMIT_NPROC`` when it runs under another uid than the pool;
- a private temporary directory (mode 0700, its owner the program's uid) that is
  its cwd, ``HOME`` and ``TMPDIR``, removed when the program ends;
- an environment rebuilt from an allow-list plus the ``QHPC_*`` variables of its
  :class:`~qhpc.runtime.outcome.ProgramContext`: the broker's credentials are not
  in it (the template process is *spawned* with the same scrubbed environment, so
  they are not in its memory either);
- no inherited file descriptors but stdin (``/dev/null``), stdout/stderr (pipes to
  the pool) and fd 3, its control socket;
- when the pool runs as root (or with ``CAP_SETUID`` and ``CAP_SETGID``, see
  :mod:`qhpc.runtime.privileges`) and ``run_as`` names an existing unprivileged user
  (``"auto"``: ``qhpc-runtime``, else ``nobody``): ``setgroups([])``,
  ``setresgid``, ``setresuid``, every capability dropped, a check that
  ``setuid(0)`` now fails, ``PR_SET_DUMPABLE`` 0 and ``PR_SET_NO_NEW_PRIVS``. The
  identity is pool-wide, so this happens right after the fork, before the spare
  waits: no start pays for it, and the rlimits set at the start can then only be
  lowered, never raised, by the program. Not dumpable, its ``/proc/PID`` files
  (environ, cwd, fd, mem) belong to root, so a co-located program under the same
  uid cannot read another's session token, memory or work dir (``ptrace`` is
  refused too); the kernel already does this on a uid change when
  ``fs.suid_dumpable`` is 0, but that is a host setting.

Not covered here: a shared ``nobody`` uid lets co-located programs signal each
other, and read each other's files wherever they can name them (a program that
writes outside its work dir, e.g. to ``/tmp``; a uid per slot would not); a child a
program ``exec``s is dumpable again; the program can write where its uid may (``/tmp``);
memory is limited by address space, not RSS (a cgroup would do both, and would
also give fork-bomb protection without a dedicated uid).

``RLIMIT_NPROC`` counts *every task (process or thread) of the uid*, not of the
program: it isolates only under a uid dedicated to that program. Under a shared
uid such as ``nobody`` concurrent programs share one budget, and it also limits
threads (BLAS, OpenMP). It is never applied under the pool's own uid, where it would
count the broker's processes. Forking is therefore allowed by default; whatever a
program forks is killed when it ends (process group, then a sweep of the orphans
the template inherits as subreaper).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import re
import resource
import shutil
import signal
import stat
import sysconfig
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from qhpc.envvars import FASTPATH_ENV, PROGRAM_ID_ENV, RESOURCE_ENV, SESSION_ENV
from qhpc.runtime.outcome import ProgramContext
from qhpc.runtime.privileges import can_switch_ids, clear_capabilities

#: environment variables a program process inherits from the pool's environment
DEFAULT_ENV_ALLOW: tuple[str, ...] = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONPATH",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)
log = logging.getLogger(__name__)

#: the users ``run_as="auto"`` tries, in order, when the pool runs as root
AUTO_USERS: tuple[str, ...] = ("qhpc-runtime", "nobody")
#: between the CPU soft limit (SIGXCPU, reported) and the hard limit (SIGKILL)
CPU_HARD_GRACE_S = 2
#: address space above the soft limit that only the runtime uses: after a MemoryError
#: it raises the soft limit to the hard one to format and send the outcome
AS_RESERVE_MB = 64
_QHPC_NAME = re.compile(r"QHPC_[A-Z0-9_]+")

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Resource limits of one program process (``None`` = not limited).

    ``address_space_mb`` counts virtual memory, including the ~1.4 GiB that
    numpy/scipy/qiskit/Aer map in the template; keep it well above that.
    ``processes`` becomes ``RLIMIT_NPROC`` only under a uid other than the pool's
    (see the module docstring for why).
    """

    cpu_seconds: float | None = 600
    address_space_mb: int | None = 4096
    open_files: int = 256
    processes: int | None = None

    def __post_init__(self) -> None:
        if self.cpu_seconds is not None and self.cpu_seconds <= 0:
            raise ValueError(f"Limits.cpu_seconds must be > 0 or None, got {self.cpu_seconds}")
        if self.address_space_mb is not None and self.address_space_mb < 64:
            raise ValueError(
                f"Limits.address_space_mb must be >= 64 or None, got {self.address_space_mb}"
            )
        if self.open_files < 16:
            raise ValueError(f"Limits.open_files must be >= 16, got {self.open_files}")
        if self.processes is not None and self.processes < 1:
            raise ValueError(f"Limits.processes must be >= 1 or None, got {self.processes}")


class RunAs(msgspec.Struct, frozen=True):
    """The unprivileged identity program processes switch to."""

    user: str
    uid: int
    gid: int


def resolve_run_as(spec: str | None) -> RunAs | None:
    """The identity for ``run_as``: ``None`` keeps the pool's; ``"auto"`` picks one if root.

    Dropping privileges needs root or ``CAP_SETUID`` + ``CAP_SETGID``; without them
    ``"auto"`` means ``None`` and an explicit user name other than the pool's own
    raises ``PermissionError``.
    """
    if spec is None:
        return None
    root = can_switch_ids()
    names = AUTO_USERS if spec == "auto" else (spec,)
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == os.geteuid():
            return None
        if not root:
            if spec == "auto":
                return None
            raise PermissionError(
                f"run_as={spec!r} needs a pool running as root or with CAP_SETUID and CAP_SETGID"
            )
        blocked = _unreachable_python_dir(entry.pw_uid, entry.pw_gid)
        if blocked is not None:
            # A program that cannot import the standard library is no program at all
            # (e.g. an interpreter under /root, mode 0700).
            message = (
                f"user {name!r} cannot read the Python installation ({blocked}); "
                "install Python where that user can read it, or create a dedicated "
                "'qhpc-runtime' user that can"
            )
            if spec == "auto":
                log.warning("%s; programs run as the pool's own user", message)
                return None
            raise PermissionError(message)
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    if spec == "auto":
        return None
    raise LookupError(f"run_as={spec!r}: no such user on this host")


def _unreachable_python_dir(uid: int, gid: int) -> str | None:
    """The first directory of the interpreter and its packages ``uid`` cannot enter."""
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        target = Path(paths[key]).resolve()
        for directory in (*reversed(target.parents), target):
            try:
                info = directory.stat()
            except OSError:
                continue
            if info.st_uid == uid:
                allowed = info.st_mode & stat.S_IXUSR
            elif info.st_gid == gid:
                allowed = info.st_mode & stat.S_IXGRP
            else:
                allowed = info.st_mode & stat.S_IXOTH
            if not allowed:
                return str(directory)
    return None


def context_variables(context: ProgramContext, program_id: str) -> dict[str, str]:
    """The ``QHPC_*`` variables of a program: its context's, as a Slurm job would see them.

    The dispatch endpoint is ``QHPC_FASTPATH`` (where session tasks go, whatever the
    channel); ``QHPC_URL``, the broker's REST API, comes from ``context.env`` if the
    broker knows it.
    """
    variables = dict(context.env, **{PROGRAM_ID_ENV: program_id})
    for name, value in ((FASTPATH_ENV, context.endpoint), (SESSION_ENV, context.session_token),
                        (RESOURCE_ENV, context.resource)):  # fmt: skip
        if value is not None:
            variables.setdefault(name, value)
    return variables


def program_environment(
    inherited: Mapping[str, str],
    allow: Iterable[str],
    extra: Mapping[str, str],
    workdir: str,
) -> dict[str, str]:
    """The whole environment of a program: allow-listed names, ``extra``, its own dirs."""
    env = {name: inherited[name] for name in allow if name in inherited}
    for name, value in extra.items():
        if not _QHPC_NAME.fullmatch(name):
            raise ValueError(f"program environment variable {name!r} must match QHPC_[A-Z0-9_]+")
        env[name] = value
    env.update(HOME=workdir, TMPDIR=workdir, PWD=workdir)
    env.setdefault("PATH", os.defpath)
    return env


def make_workdir(base: str, prefix: str, run_as: RunAs | None) -> str:
    """A fresh private directory under ``base`` owned by the program's uid."""
    path = tempfile.mkdtemp(prefix=f"{prefix}-", dir=base)
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)
    return path


def make_base_dir(parent: str | None = None) -> str:
    """The pool's directory of work dirs: traversable (0711) but not listable by programs."""
    path = tempfile.mkdtemp(prefix="qhpc-runtime-", dir=parent)
    os.chmod(path, 0o711)
    return path


def remove_tree(path: str) -> None:
    # rmtree's fd-based walk never follows the program's symlinks out of its dir.
    shutil.rmtree(path, ignore_errors=True)


_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: int) -> None:
    global _libc
    if _libc is None:  # loaded once, in the template, not in every program's start path
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}): {os.strerror(code)}")


def set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of init."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(sig: int) -> None:
    """Receive ``sig`` when the parent dies (cleared by uid changes: set it again after)."""
    _prctl(_PR_SET_PDEATHSIG, sig)


def enter_own_process_group() -> None:
    """Lead a new session and process group, so ``killpg(pid)`` reaches every descendant."""
    os.setsid()
    set_child_subreaper()


def close_inherited_fds(keep_up_to: int) -> None:
    """Close every descriptor above ``keep_up_to`` (the template's sockets, pidfds …)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    os.closerange(keep_up_to + 1, max(soft, 1024))


def apply_limits(limits: Limits, *, other_uid: bool) -> None:
    """Set the rlimits; called as root *before* dropping privileges, so they cannot be raised."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    if limits.cpu_seconds is not None:
        soft = max(1, round(limits.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + CPU_HARD_GRACE_S))
    if limits.address_space_mb is not None:
        soft = limits.address_space_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (soft, soft + (AS_RESERVE_MB << 20)))
    if limits.processes is not None and other_uid:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))


def release_memory_reserve() -> None:
    """After a MemoryError: let the runtime use the reserve to report it."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def drop_privileges(run_as: RunAs) -> None:
    """Become ``run_as`` for good (real, effective and saved ids) and verify it."""
    os.setgroups([])
    os.setresgid(run_as.gid, run_as.gid, run_as.gid)
    os.setresuid(run_as.uid, run_as.uid, run_as.uid)
    # From root the kernel has just cleared them; from a pool with ambient capabilities
    # (systemd, deploy/systemd) it has not: CAP_SETUID would let the program become root.
    clear_capabilities()
    # Belt and braces: a process that could get root back must not run user code.
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PermissionError("privileges were not dropped: setuid(0) still succeeds")
    _prctl(_PR_SET_DUMPABLE, 0)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal a process group; ``False`` when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # the group belongs to someone else now: not ours to kill
        return False
    return True
