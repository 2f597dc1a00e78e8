"""What the hooks know about a Slurm job: its QPU, its time limit, its owner.

Slurm hands each hook a different slice of the job: PrologSlurmctld and
EpilogSlurmctld see ``SLURM_JOB_LICENSES`` and (through the SPANK plugin)
``SPANK_SLURM_JOB_QPU``; the node's Prolog sees only the SPANK variable; tasks
see ``SLURM_JOB_QPU``. ``scontrol show job -o`` fills the rest (time limit,
account, licences), parsed here without a Slurm Python binding (pyslurm does not
match 22.05).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from qhpc.slurm.errors import SlurmCommandError

LICENCE_PREFIX = "qpu_"
SPANK_QPU_ENV = "SPANK_SLURM_JOB_QPU"  # the --qpu choice, as hooks see it
TASK_QPU_ENV = "SLURM_JOB_QPU"  # the --qpu choice, as tasks see it

# A job without a time limit still gets a finite session: tokens never live forever.
UNLIMITED_SECONDS = 7 * 24 * 3600

_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def licence_name(resource: str) -> str:
    """The Slurm licence that stands for ``resource``: ``qpu_<name>``."""
    return LICENCE_PREFIX + resource


def qpus_in_licences(licences: str | None) -> list[str]:
    """QPU names among licences as Slurm spells them (``qpu_sim:1,matlab:2`` → ``['sim']``).

    Slurm writes requested licences as ``name:count`` or ``name*count``, joined by
    commas; non-QPU licences are ignored.
    """
    found: list[str] = []
    for item in (licences or "").split(","):
        name = re.split(r"[:*]", item.strip(), maxsplit=1)[0]
        if name.startswith(LICENCE_PREFIX) and len(name) > len(LICENCE_PREFIX):
            qpu = name[len(LICENCE_PREFIX) :]
            if qpu not in found:
                found.append(qpu)
    return found


def parse_time_limit(text: str) -> float | None:
    """Seconds of a Slurm time limit (``[D-]HH:MM:SS``, ``MM:SS``, ``MM``); None if unlimited."""
    value = text.strip()
    if value.upper() in {"UNLIMITED", "INFINITE", "PARTITION_LIMIT", "NONE", ""}:
        return None
    days = 0
    if "-" in value:
        head, value = value.split("-", 1)
        days = int(head)
    parts = [int(p) for p in value.split(":")]
    if len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    else:
        raise ValueError(f"not a Slurm time limit: {text!r}")
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def parse_show_job(line: str) -> dict[str, str]:
    """``scontrol show job -o`` output as a dict; values may contain spaces."""
    text = line.strip()
    matches = list(_KEY.finditer(text))
    fields: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        fields[match.group(1)] = text[match.end() : end].strip()
    return fields


def show_job(job_id: str, scontrol: str = "scontrol", timeout: float = 10.0) -> dict[str, str]:
    """The controller's record of one job (``scontrol show job -o``)."""
    try:
        done = subprocess.run(
            [scontrol, "show", "job", "-o", job_id],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmCommandError(f"cannot run {scontrol}: {exc}") from None
    if done.returncode != 0:
        raise SlurmCommandError(
            f"scontrol show job {job_id} failed: {done.stderr.strip() or done.stdout.strip()}"
        )
    first = done.stdout.strip().splitlines()[:1]
    if not first:
        raise SlurmCommandError(f"scontrol show job {job_id} printed nothing")
    return parse_show_job(first[0])


@dataclass(frozen=True)
class JobView:
    """The facts about one job that the hooks act on."""

    job_id: str
    user: str
    uid: int | None
    account: str | None
    spank_qpu: str | None  # from --qpu (the SPANK plugin), if given
    licensed_qpus: tuple[str, ...]  # qpu_* licences the job holds
    time_limit_s: float | None = None  # None: unknown or unlimited

    @property
    def wants_qpu(self) -> bool:
        return self.spank_qpu is not None or bool(self.licensed_qpus)

    def qpu(self) -> str:
        """The QPU of a job with one (the first of several); ValueError naming a conflict."""
        return self.qpus()[0]

    def qpus(self) -> list[str]:
        """The QPUs this job holds sessions on, in the order asked; ValueError naming the
        conflict (a name twice, a QPU without its licence, several licences unnamed)."""
        if self.spank_qpu is not None and "," in self.spank_qpu:
            names = [n.strip() for n in self.spank_qpu.split(",")]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice or "" in names:
                raise ValueError(
                    f"--qpu={self.spank_qpu}: "
                    + (f"{', '.join(twice)} named twice" if twice else "an empty name")
                )
            missing = [n for n in names if n not in self.licensed_qpus]
            if missing:
                wanted = ",".join(f"{licence_name(n)}:1" for n in missing)
                raise ValueError(
                    f"--qpu={self.spank_qpu} needs a licence of each QPU: add -L {wanted}"
                )
            return names
        return [self._one()]

    def _one(self) -> str:
        if self.spank_qpu is not None:
            if not self.licensed_qpus:
                # The licence count is how Slurm limits the sessions on a QPU: without it
                # the job would hold a session Slurm never counted.
                raise ValueError(
                    f"--qpu={self.spank_qpu} needs the licence too: submit with "
                    f"-L {licence_name(self.spank_qpu)} (or #SBATCH "
                    f"--licenses={licence_name(self.spank_qpu)})"
                )
            if self.spank_qpu not in self.licensed_qpus:
                held = ", ".join(licence_name(q) for q in self.licensed_qpus)
                raise ValueError(
                    f"--qpu={self.spank_qpu} but the job holds licence(s) {held}; "
                    f"request -L {licence_name(self.spank_qpu)} instead"
                )
            return self.spank_qpu
        if len(self.licensed_qpus) > 1:
            raise ValueError(
                "the job holds licences of several QPUs "
                f"({', '.join(licence_name(q) for q in self.licensed_qpus)}); "
                "choose the session's QPU with --qpu=NAME"
            )
        if not self.licensed_qpus:
            raise ValueError("the job requested no QPU (--qpu=NAME or -L qpu_NAME)")
        return self.licensed_qpus[0]


def job_from_env(env: Mapping[str, str], record: Mapping[str, str] | None = None) -> JobView:
    """A :class:`JobView` from a hook's environment, completed by ``record`` (show job)."""
    record = record or {}
    job_id = env.get("SLURM_JOB_ID") or record.get("JobId", "")
    user = env.get("SLURM_JOB_USER") or record.get("UserId", "").split("(")[0]
    uid_text = env.get("SLURM_JOB_UID")
    if uid_text is None and "(" in record.get("UserId", ""):
        uid_text = record["UserId"].split("(", 1)[1].rstrip(")")
    account = env.get("SLURM_JOB_ACCOUNT") or record.get("Account") or None
    if account in {"(null)", ""}:
        account = None
    licences = env.get("SLURM_JOB_LICENSES")
    if licences is None:
        licences = record.get("Licenses")
    if licences in {"(null)", None}:
        licences = ""
    spank = (env.get(SPANK_QPU_ENV) or "").strip() or None
    limit_text = record.get("TimeLimit")
    return JobView(
        job_id=job_id,
        user=user,
        uid=int(uid_text) if uid_text and uid_text.isdigit() else None,
        account=account,
        spank_qpu=spank,
        licensed_qpus=tuple(qpus_in_licences(licences)),
        time_limit_s=parse_time_limit(limit_text) if limit_text else None,
    )
