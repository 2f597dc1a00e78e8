"""Handing a session token from the controller to the job, readable only by its user.

PrologSlurmctld (SlurmUser, controller) learns the token; the TaskProlog (the
job's user, node) must print it. Between them, the node's Prolog (root) copies
the controller's file into a file owned by the job's uid. Each file is written
whole (temporary file + rename) with its final mode from the start, so no reader
ever sees a partial file or a moment of wider permissions.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


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

    @property
    def ok(self) -> bool:
        return self.error is None and self.token is not None

    def exports(self) -> dict[str, str]:
        """The job's environment: the broker's addresses and the session token, nothing else."""
        if not self.ok:
            return {}
        assert self.token and self.url and self.fastpath and self.resource and self.session_id
        return {
            "QHPC_URL": self.url,
            "QHPC_FASTPATH": self.fastpath,
            "QHPC_RESOURCE": self.resource,
            "QHPC_SESSION": self.token,
            "QHPC_SESSION_ID": self.session_id,
        }


def handover_path(directory: Path, job_id: str) -> Path:
    if not job_id.isdigit():  # also keeps a crafted id from escaping the directory
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    return directory / f"job-{job_id}.json"


def write_handover(
    path: Path, handover: Handover, *, uid: int | None = None, gid: int | None = None
) -> None:
    """Write ``handover`` to ``path``, mode 0400/0600, owned by ``uid`` if given (root only)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump(asdict(handover), stream)
        if uid is not None:
            os.chown(temporary, uid, -1 if gid is None else gid)
            os.chmod(temporary, 0o400)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_handover(path: Path) -> Handover | None:
    """The handover in ``path``, or None if there is none."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    known = set(Handover.__dataclass_fields__)
    return Handover(**{k: v for k, v in data.items() if k in known})


def remove_handover(path: Path) -> None:
    path.unlink(missing_ok=True)
