"""Slurm hook entry points: ``python -m qhpc.slurm.hooks HOOK``.

=====================  =========================  ==========================================
hook                   runs as, where             does
=====================  =========================  ==========================================
``prolog-slurmctld``   SlurmUser, controller      opens the job's session at the broker
                                                  (admin/centre token), writes the handover
``prolog``             root, node (Alloc)         copies the handover into a file only the
                                                  job's user can read
``task-prolog``        the job's user, node       prints ``export QHPC_…`` lines, or
                                                  ``print`` lines and fails when there is
                                                  no session
``epilog``             root, node                 removes the job's file
``epilog-slurmctld``   SlurmUser, controller      closes the job's sessions, writes QPU
                                                  seconds and shots into AdminComment
=====================  =========================  ==========================================

A job that asked for no QPU passes through every hook untouched. Hooks other
than the TaskProlog always exit 0: a failing node Prolog or Epilog drains the
node, and a failing PrologSlurmctld requeues the job again and again (see
docs/slurm-admin.md). Problems reach the job through the handover instead, and
the TaskProlog turns them into a message in the job's output and a failed job.
The admin token is read from the settings file and never printed or logged.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from qhpc.files import open_private
from qhpc.slurm.errors import SlurmError
from qhpc.slurm.handover import (
    Handover,
    UnsafeDirectory,
    handover_path,
    open_directory,
    read_handover,
    remove_handover,
    unsafe_directory,
    write_handover,
)
from qhpc.slurm.jobinfo import (
    TASK_QPU_ENV,
    UNLIMITED_SECONDS,
    JobView,
    job_from_env,
    show_job,
)
from qhpc.slurm.settings import HookSettings, load_settings

if TYPE_CHECKING:
    from qhpc.slurm.link import BrokerLink

HOOKS = ("prolog-slurmctld", "prolog", "task-prolog", "epilog", "epilog-slurmctld")
LOG_NAME = "hooks.log"

ShowJob = Callable[[str], Mapping[str, str]]


def _log(settings: HookSettings | None, message: str, stream: TextIO | None = None) -> None:
    """One line to stderr (the daemon's log) and, if writable, the spool's hooks.log."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} qhpc-slurm[{os.getpid()}]: {message}"
    print(line, file=stream or sys.stderr)
    if settings is None:
        return
    try:
        # 0600 whatever slurmctld's umask: job ids and broker errors are SlurmUser's.
        fd = open_private(settings.spool_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(fd, "a", encoding="utf-8") as log:
            log.write(line + "\n")
    except OSError:
        pass


def _job_on_node(env: Mapping[str, str], show: ShowJob) -> JobView:
    """The job as the node's Prolog can know it.

    Its environment carries ``--qpu`` (the SPANK variable) but no licences, so a job
    that asked for its QPU with ``-L qpu_NAME`` alone shows up only in ``scontrol``.
    """
    job = job_from_env(env)
    if job.spank_qpu is not None:
        return job
    return job_from_env(env, show(job.job_id))


# -- controller side ----------------------------------------------------------------------


def prolog_slurmctld(
    env: Mapping[str, str],
    settings: HookSettings,
    *,
    show: ShowJob = show_job,
    now: Callable[[], float] = time.time,
) -> int:
    """Open the job's session and leave the handover for the node's Prolog."""
    from qhpc.slurm.link import BrokerLink, BrokerRefused, BrokerUnreachable

    first = job_from_env(env)
    if not first.wants_qpu:
        return 0
    spool = handover_path(settings.spool_dir, first.job_id)
    try:
        job = job_from_env(env, show(first.job_id))
    except SlurmError as exc:
        _log(settings, f"job {first.job_id}: {exc}; using the environment alone")
        job = first
    try:
        resources = job.qpus()
    except ValueError as exc:
        return _refuse(settings, spool, job, None, f"{exc}")
    resource = resources[0]
    deadline = now() + (job.time_limit_s or UNLIMITED_SECONDS)
    created: list[dict[str, Any]] = []
    try:
        with BrokerLink(settings.broker_url, settings.token, settings.broker_timeout_s) as link:
            adopted = _federated_session(link, job, resource, settings)
            if adopted is not None and len(resources) == 1:
                return _adopt(settings, spool, job, resource, adopted)
            try:
                for name in resources:  # all or none: a job never runs with half its QPUs
                    created.append(link.open_session(
                        name, deadline=deadline, user=job.user,
                        account=job.account or job.user, slurm_job_id=job.job_id,
                        mode=settings.session_mode,
                    ))  # fmt: skip
                types = ",".join(link.resource_type(name) for name in resources)
            except BaseException:
                for opened in created:
                    with contextlib.suppress(Exception):
                        link.close_session(str(opened["session_id"]))
                raise
    except BrokerUnreachable:
        return _refuse(
            settings, spool, job, resource,
            f"the qhpc broker at {settings.broker_url} is unreachable; "
            "the job was stopped before it started (ask your admin)",
        )  # fmt: skip
    except BrokerRefused as exc:
        return _refuse(settings, spool, job, resource, f"the broker refused it: {exc.detail}")
    # The broker's answer names the QPU a session is on (a pool's name resolves to one).
    resources = [str(o.get("resource") or name) for name, o in zip(resources, created, strict=True)]
    resource = resources[0]
    primary, *more = created
    handover = Handover(
        job_id=job.job_id, resource=resource, session_id=str(primary["session_id"]),
        token=str(primary["token"]), url=settings.broker_url, fastpath=settings.fastpath,
        deadline=float(primary["deadline"]), types=types,
        others=[
            {"resource": name, "session_id": str(o["session_id"]), "token": str(o["token"])}
            for name, o in zip(resources[1:], more, strict=True)
        ],
    )  # fmt: skip
    write_handover(spool, handover)
    pairs = zip(resources, created, strict=True)
    ids = ", ".join(f"{o['session_id']} on {name}" for name, o in pairs)
    _log(
        settings,
        f"job {job.job_id}: session(s) {ids} for {job.user} until {handover.deadline:.0f}",
    )
    return 0


def _federated_session(
    link: BrokerLink, job: JobView, resource: str, settings: HookSettings
) -> dict[str, Any] | None:
    """An open session a federated centre tied to this job, if the job is that centre's
    (submitted by the Slurm user the site maps the centre to); else None."""
    if not settings.federated_users:
        return None
    for session in link.sessions_of_job(job.job_id):
        centre = session.get("centre")
        if (
            isinstance(centre, str)
            and settings.federated_users.get(centre) == job.user
            and session.get("resource") == resource
            and session.get("closed_at") is None
        ):
            return session
    return None


def _adopt(
    settings: HookSettings, spool: Path, job: JobView, resource: str, session: dict[str, Any]
) -> int:
    handover = Handover(
        job_id=job.job_id, resource=resource, session_id=str(session["session_id"]),
        url=settings.broker_url, fastpath=settings.fastpath,
        deadline=float(session["deadline"]), adopted=True,
    )  # fmt: skip
    write_handover(spool, handover)
    _log(
        settings,
        f"job {job.job_id}: adopted session {handover.session_id} of centre "
        f"{session.get('centre')} on {resource} (user {session.get('user')})",
    )
    return 0


def _refuse(
    settings: HookSettings, spool: Path, job: JobView, resource: str | None, reason: str
) -> int:
    qpu = f" on {resource}" if resource else ""
    message = f"no QPU session{qpu} for job {job.job_id}: {reason}"
    write_handover(spool, Handover(job_id=job.job_id, resource=resource, error=message))
    _log(settings, message)
    return 0


def epilog_slurmctld(
    env: Mapping[str, str],
    settings: HookSettings,
    *,
    write_comment: Callable[[str, str], None] | None = None,
    attempts: int = 3,
    pause_s: float = 1.0,
) -> int:
    """Close every open session of the job; book its QPU seconds and shots into Slurm."""
    from qhpc.slurm.link import BrokerLink, BrokerRefused, BrokerUnreachable
    from qhpc.slurm.sacct import set_admin_comment, usage_comment

    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return 0
    spool = handover_path(settings.spool_dir, job_id)
    handover = read_handover(spool)
    if handover is None and not job_from_env(env).wants_qpu:
        return 0
    comment = write_comment or set_admin_comment
    for attempt in range(attempts):
        try:
            with BrokerLink(settings.broker_url, settings.token, settings.broker_timeout_s) as link:
                sessions, foreign = _sessions_of(link, job_id, handover, env.get("SLURM_JOB_USER"))
                for session in foreign:
                    _log(
                        settings,
                        f"job {job_id}: ignored session {session.get('session_id')} that names "
                        f"this job but belongs to user {session.get('user')!r} of centre "
                        f"{session.get('centre')!r}",
                    )
                for session in sessions:
                    if session.get("closed_at") is None:
                        link.close_session(str(session["session_id"]))
                if not sessions:
                    break
                since = min(float(s["opened_at"]) for s in sessions)
                usage = link.usage_by_job(since=since)
        except BrokerUnreachable as exc:
            _log(settings, f"job {job_id}: {exc} (attempt {attempt + 1} of {attempts})")
            if attempt + 1 < attempts:
                time.sleep(pause_s)
                continue
            _log(
                settings,
                f"job {job_id}: sessions left open; the broker closes them at their deadline",
            )
            return 0
        except BrokerRefused as exc:
            _log(settings, f"job {job_id}: closing its session failed: {exc}")
            return 0
        rows = [usage.get(str(s["session_id"]), {}) for s in sessions]
        text = usage_comment(
            resources=[str(s["resource"]) for s in sessions],
            qpu_seconds=sum(float(r.get("qpu_seconds", 0.0)) for r in rows),
            shots=sum(int(r.get("shots", 0)) for r in rows),
            tasks=sum(int(r.get("tasks", 0)) for r in rows),
        )
        try:
            comment(job_id, text)
        except SlurmError as exc:
            _log(settings, f"job {job_id}: cannot record usage in Slurm: {exc}")
        _log(settings, f"job {job_id}: closed {len(sessions)} session(s); {text}")
        break
    remove_handover(spool)
    return 0


def _sessions_of(
    link: BrokerLink, job_id: str, handover: Handover | None, job_user: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The job's sessions, and those that only claim to be.

    The job's own: the session handed over (open or not; our PrologSlurmctld opened
    it), and any other open session of this Slurm job whose user is the job's user
    and whose centre is the hooks' own — the handed-over session's centre, or None
    (an admin token's sessions) without one. Only open sessions are listed, so the
    epilog's cost does not grow with the broker's history.
    """
    from qhpc.slurm.link import BrokerRefused

    own: dict[str, Any] | None = None
    if handover is not None and handover.session_id:
        try:
            own = link.session(handover.session_id)
        except BrokerRefused as exc:
            if exc.status != 404:
                raise
    centre = own.get("centre") if own is not None else None
    user = job_user or (own.get("user") if own is not None else None)
    found = {own["session_id"]: own} if own is not None else {}
    foreign = []
    for session in link.sessions_of_job(job_id):
        if session["session_id"] in found:
            continue
        if user is not None and session.get("user") == user and session.get("centre") == centre:
            found[session["session_id"]] = session
        else:
            foreign.append(session)
    return list(found.values()), foreign


# -- node side ----------------------------------------------------------------------------


def prolog(
    env: Mapping[str, str],
    settings: HookSettings,
    *,
    show: ShowJob = show_job,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """(root) Give the job's user a private copy of its handover; never fails the node."""
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return 0
    try:
        job = _job_on_node(env, show)
    except SlurmError as exc:
        _log(settings, f"job {job_id}: {exc}; cannot tell whether it wants a QPU")
        return 0
    if not job.wants_qpu:
        return 0
    if job.uid is None:
        _log(settings, f"job {job_id}: no SLURM_JOB_UID; no QPU session handed over")
        return 0
    source = handover_path(settings.spool_dir, job_id)
    # With PrologFlags=Alloc this Prolog may start while PrologSlurmctld still runs.
    give_up = clock() + settings.handover_wait_s
    handover = read_handover(source)
    while handover is None and clock() < give_up:
        sleep(0.1)
        handover = read_handover(source)
    if handover is None:
        handover = Handover(
            job_id=job_id, resource=job.spank_qpu,
            error=f"no QPU session for job {job_id}: the controller's hook left none "
            f"within {settings.handover_wait_s:.0f} s (ask your admin to check hooks.log)",
        )  # fmt: skip
        _log(settings, handover.error or "")
    target = handover_path(settings.run_dir, job_id)
    try:
        directory = _open_run_dir(settings.run_dir)
    except UnsafeDirectory as exc:
        _log(settings, f"job {job_id}: refusing the run directory: {exc}; nothing handed over")
        return 0
    except OSError as exc:
        _log(settings, f"job {job_id}: cannot hand over its session: {exc}")
        return 0
    try:
        remove_handover(target, directory=directory)
        write_handover(target, handover, uid=job.uid, gid=_gid_of(env), directory=directory)
    except OSError as exc:
        _log(settings, f"job {job_id}: cannot hand over its session: {exc}")
    finally:
        os.close(directory)
    return 0


def _open_run_dir(run_dir: Path) -> int:
    """(root) The run directory, created 0711 if missing, refused unless root's own.

    Root writes files for users there: a directory someone else owns or may write to
    (or a symlink to one) would let them redirect those writes.
    """
    if not run_dir.is_symlink():
        run_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    return open_directory(run_dir)


def _gid_of(env: Mapping[str, str]) -> int | None:
    text = env.get("SLURM_JOB_GID", "")
    return int(text) if text.isdigit() else None


def epilog(env: Mapping[str, str], settings: HookSettings) -> int:
    """(root) Remove the job's private copy of its handover."""
    job_id = env.get("SLURM_JOB_ID", "")
    if job_id.isdigit():
        try:
            directory = open_directory(settings.run_dir)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            _log(settings, f"job {job_id}: cannot remove its handover: {exc}")
            return 0
        try:
            remove_handover(handover_path(settings.run_dir, job_id), directory=directory)
        except OSError as exc:
            _log(settings, f"job {job_id}: cannot remove its handover: {exc}")
        finally:
            os.close(directory)
    return 0


def component_job_ids(env: Mapping[str, str]) -> list[str]:
    """The job ids whose handover a task should look for, most likely first.

    A plain job: its own. A task of a heterogeneous job sees the *leader's*
    ``SLURM_JOB_ID`` (measured on Slurm 22.05), while each component is a job of its
    own whose PrologSlurmctld opened the session: the component is the one whose
    node list is the task's (``SLURM_JOB_NODELIST_HET_GROUP_k``, as Slurm formats
    both), then any other component, then the leader.
    """
    job_id = env.get("SLURM_JOB_ID", "")
    size = env.get("SLURM_HET_SIZE", "")
    if not size.isdigit():
        return [job_id]
    groups = [
        (env.get(f"SLURM_JOB_ID_HET_GROUP_{k}", ""), env.get(f"SLURM_JOB_NODELIST_HET_GROUP_{k}"))
        for k in range(min(int(size), 64))
    ]
    nodes = env.get("SLURM_JOB_NODELIST")
    mine = [g for g, listed in groups if g.isdigit() and listed is not None and listed == nodes]
    others = [g for g, _ in groups if g.isdigit() and g not in mine]
    ordered = [*mine, *others, job_id]
    return list(dict.fromkeys(ordered))


def _find_handover(run_dir: Path, job_ids: list[str]) -> Handover | None:
    """The first of the jobs' handovers this user can read; a read error counts only
    if no handover is found (a component's file is the job user's alone, and the
    variables naming components come from an environment the user can set)."""
    first_error: Exception | None = None
    for component in job_ids:
        try:
            handover = read_handover(handover_path(run_dir, component))
        except (OSError, ValueError) as exc:
            first_error = first_error or exc
            continue
        if handover is not None:
            return handover
    if first_error is not None:
        raise first_error
    return None


def task_prolog(env: Mapping[str, str], run_dir: Path, out: TextIO) -> int:
    """(the job's user) ``export`` lines for the session, or ``print`` lines and exit 1."""
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return 0
    unsafe = unsafe_directory(run_dir)
    handover: Handover | None = None
    try:
        if unsafe:  # whoever controls it could hand this job their own session
            handover = Handover(
                job_id=job_id, resource=None,
                error=f"no QPU session for job {job_id}: the run directory is unsafe "
                f"({unsafe}); ask your admin",
            )  # fmt: skip
        else:
            handover = _find_handover(run_dir, component_job_ids(env))
    except (OSError, ValueError) as exc:
        handover = Handover(job_id=job_id, resource=None, error=f"unreadable handover: {exc}")
    if handover is None:
        qpu = env.get(TASK_QPU_ENV)
        if not qpu:
            return 0  # a job without a QPU
        handover = Handover(
            job_id=job_id, resource=qpu,
            error=f"no QPU session for job {job_id} on {qpu}: nothing was handed over "
            "(are qhpc's Prolog and PrologFlags=Alloc configured?)",
        )  # fmt: skip
    exports = handover.exports()
    tampered = [name for name, value in exports.items() if _one_line(value) != value]
    if tampered:  # a line break would smuggle in more TaskProlog commands
        handover = Handover(
            job_id=job_id, resource=None,
            error=f"no QPU session for job {job_id}: the handover's "
            f"{', '.join(tampered)} hold control characters (ask your admin)",
        )  # fmt: skip
    if not handover.ok:
        out.write(f"print qhpc: error: {_one_line(handover.error or 'no session')}\n")
        out.flush()
        return 1
    for name, value in exports.items():
        out.write(f"export {name}={value}\n")
    out.flush()
    return 0


def _one_line(text: str) -> str:
    """``text`` with control characters (line breaks above all) made spaces.

    Slurm reads the TaskProlog's output line by line as commands (``export``,
    ``unset``, ``print``): text from the broker must stay inside its one line.
    """
    return "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


# -- command line -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qhpc.slurm.hooks", description=__doc__)
    parser.add_argument("hook", choices=HOOKS)
    parser.add_argument("--settings", type=Path, help="hook settings (not for task-prolog)")
    parser.add_argument("--run-dir", type=Path, help="task-prolog: where handovers are")
    args = parser.parse_args(argv)
    environment = os.environ if env is None else env
    if args.hook == "task-prolog":
        if args.run_dir is None:
            parser.error("task-prolog needs --run-dir")
        return task_prolog(environment, args.run_dir, sys.stdout)
    if args.settings is None:
        parser.error(f"{args.hook} needs --settings")
    try:
        controller = args.hook in ("prolog-slurmctld", "epilog-slurmctld")
        settings = load_settings(args.settings, need_token=controller)
    except SlurmError as exc:
        _log(None, f"{args.hook}: {exc}")
        return 0
    handlers: dict[str, Callable[[Mapping[str, str], HookSettings], int]] = {
        "prolog-slurmctld": prolog_slurmctld,
        "prolog": prolog,
        "epilog": epilog,
        "epilog-slurmctld": epilog_slurmctld,
    }
    try:
        return handlers[args.hook](environment, settings)
    except Exception as exc:  # a hook must not drain the node or loop the job
        _log(settings, f"{args.hook}: unexpected {type(exc).__name__}: {exc}")
        if args.hook == "prolog-slurmctld":
            _fail_job(environment, settings, f"{type(exc).__name__} in qhpc's PrologSlurmctld")
        return 0


def _fail_job(env: Mapping[str, str], settings: HookSettings, reason: str) -> None:
    """Leave an error handover, so the job fails at once with a message (not after a wait)."""
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return
    message = f"no QPU session for job {job_id}: {reason} (ask your admin to check hooks.log)"
    try:
        write_handover(
            handover_path(settings.spool_dir, job_id),
            Handover(job_id=job_id, resource=None, error=message),
        )
    except OSError as exc:
        _log(settings, f"job {job_id}: cannot leave an error handover: {exc}")


def _entry() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
