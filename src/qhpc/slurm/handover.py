"""Handing a session token from the controller to the job, readable only by its user.

PrologSlurmctld (SlurmUser, controller) learns the token; the TaskProlog (the
job's user, node) must print it. Between them, the node's Prolog (root) copies
the controller's file into a file owned by the job's uid. Each file is written
whole (temporary file + rename) with its final mode from the start, so no reader
ever sees a partial file or a moment of wider permissions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qhpc.envvars import (
    FASTPATH_ENV,
    PROXY_ENV,
    QRMI_RESOURCES_ENV,
    QRMI_TYPES_ENV,
    RESOURCE_ENV,
    SESSION_ENV,
    SESSION_ID_ENV,
    URL_ENV,
    proxy_env_for,
    proxy_url,
    session_env_for,
    session_id_env_for,
)


@dataclass(frozen=True)
class Handover:
    """What a job gets: a session, or the reason it could not get one."""

    job_id: str
    resource: str | None
    session_id: str | None = None
    token: str | None = None
    url: str | None = None
    fastpath: str | None = None
    deadline: float | None = None
    error: str | None = None
    #: a federated centre's session, tied to this job before it was released: the job
    #: carries that session's token in its own environment, the hooks hand over nothing
    adopted: bool = False
    #: the job's further QPUs (``--qpu=a,b``): ``{"resource", "session_id", "token"}`` each
    others: list[dict[str, str]] = field(default_factory=list)
    #: the resource types of all the job's QPUs, comma-separated, in order (QRMI's contract)
    types: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and (self.token is not None or self.adopted)

    def exports(self) -> dict[str, str]:
        """The job's environment: the broker's addresses and the session token, nothing else
        (the vendor proxy's URL is an address too: the vendor credential stays at the broker)."""
        if not self.ok or self.adopted:
            return {}
        assert self.token and self.url and self.fastpath and self.resource and self.session_id
        exports = {
            URL_ENV: self.url,
            FASTPATH_ENV: self.fastpath,
            RESOURCE_ENV: self.resource,
            SESSION_ENV: self.token,
            SESSION_ID_ENV: self.session_id,
            PROXY_ENV: proxy_url(self.url, self.resource),
        }
        sessions = [(self.resource, self.session_id, self.token)] + [
            (o["resource"], o["session_id"], o["token"]) for o in self.others
        ]
        exports[QRMI_RESOURCES_ENV] = ",".join(resource for resource, _, _ in sessions)
        if self.types:
            exports[QRMI_TYPES_ENV] = self.types
        if self.others:  # each QPU's own session beside the first's plain names
            for resource, session_id, token in sessions:
                exports[session_env_for(resource)] = token
                exports[session_id_env_for(resource)] = session_id
                exports[proxy_env_for(resource)] = proxy_url(self.url, resource)
        return exports


def handover_path(directory: Path, job_id: str) -> Path:
    if not job_id.isdigit():  # also keeps a crafted id from escaping the directory
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    return directory / f"job-{job_id}.json"


class UnsafeDirectory(OSError):
    """A handover directory root must not write into: a symlink, not a directory, owned
    by someone else, or writable by group or others."""


def open_directory(path: Path) -> int:
    """A descriptor of ``path`` that later writes go through, once it is known to be safe.

    Refused (:class:`UnsafeDirectory`): a symlink, anything but a directory, a directory
    owned by neither root nor this process's user, or one group or others may write to
    — there someone else could plant or swap files root then writes as. Checking the
    open descriptor (not the path again) leaves no gap between the check and the use.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symlink" if path.is_symlink() else "not a directory"
            raise UnsafeDirectory(f"{path} is {kind}") from None
        raise
    try:
        problem = _unsafe(os.fstat(descriptor))
        if problem:
            raise UnsafeDirectory(f"{path} is {problem}")
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _unsafe(status: os.stat_result) -> str | None:
    if status.st_uid not in (0, os.geteuid()):
        return f"owned by uid {status.st_uid}, not root"
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(status.st_mode):04o})"
    return None


def unsafe_directory(path: Path) -> str | None:
    """Why ``path`` is no safe handover directory, or None (None too if it is missing)."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(status.st_mode):
        return f"{path} is a symlink"
    if not stat.S_ISDIR(status.st_mode):
        return f"{path} is not a directory"
    problem = _unsafe(status)
    return f"{path} is {problem}" if problem else None


def write_handover(
    path: Path,
    handover: Handover,
    *,
    uid: int | None = None,
    gid: int | None = None,
    directory: int | None = None,
) -> None:
    """Write ``handover`` to ``path``, mode 0400/0600, owned by ``uid`` if given (root only).

    ``directory``: an open descriptor of ``path``'s directory (:func:`open_directory`);
    every step then goes through it. Ownership and mode are set on the open file, never
    by path, so nothing swapped in between can redirect them.
    """
    own = directory is None
    folder = open_directory(path.parent) if directory is None else directory
    name = path.name
    temporary = f".{name}.{os.getpid()}"
    try:
        descriptor = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
            dir_fd=folder,
        )  # fmt: skip
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                json.dump(asdict(handover), stream)
                stream.flush()
                if uid is not None:
                    os.fchown(stream.fileno(), uid, -1 if gid is None else gid)
                    os.fchmod(stream.fileno(), 0o400)
            os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        if own:
            os.close(folder)


def read_handover(path: Path) -> Handover | None:
    """The handover in ``path``, or None if there is none."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    known = set(Handover.__dataclass_fields__)
    return Handover(**{k: v for k, v in data.items() if k in known})


def remove_handover(path: Path, *, directory: int | None = None) -> None:
    """Remove ``path`` (through ``directory``, an open descriptor of its folder, if given)."""
    if directory is None:
        path.unlink(missing_ok=True)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path.name, dir_fd=directory)
