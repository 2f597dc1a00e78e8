"""The loop back to Slurm: a QPU out of service holds its jobs PENDING, with why and until when.

Without this, Slurm starts a job that asked for a QPU while the broker knows the QPU
is offline, drained or calibrating: the job holds its licence and its nodes and waits
at its first task. :class:`Feedback` is a small agent that runs beside slurmctld
(``qhpc slurm feedback``, as root or a Slurm operator): each ``interval`` it reads the
QPUs' states from the broker (REST, an admin token) and, for a QPU that will not take
work for longer than ``threshold``, holds all of its licences in a *licence-only
reservation*; when the QPU takes work again the reservation goes.

Why a reservation (Slurm 22.05 offers four levers): a licence count in slurm.conf is
static (a reconfigure per change, and running jobs would exceed it); dynamic licences
need slurmdbd and change the count for every cluster sharing it; holding jobs one by
one (``scontrol hold``) loses them for users who do not know to release them and
misses jobs submitted a second later. A reservation ``qhpc_hold_<qpu>`` with
``Licenses=qpu_<qpu>:<all>`` and ``Flags=ANY_NODES`` keeps every job that asks for
the licence pending (``Reason=Licenses``), leaves running jobs alone (they hold their
licences already), starts the waiting jobs within a second of its deletion, and ends
by itself at the QPU's expected end. A hold whose end is unknown is made
``RENEW_SECONDS`` long and renewed while the agent runs: if the agent (or the
broker) dies, the hold lapses and Slurm falls back to starting jobs — it fails open.

The same reservation steers admission while the QPU works: when the broker's
admission controller (``GET /v1/resources/{name}/admission``) admits fewer sessions
than the QPU has licences — the open sessions' measured duty cycles would push
session latency past its target — the agent keeps the rest of the licences back,
so Slurm starts no more session jobs than that, and lets them go as the duty
cycles allow. Only measured sessions count: with none
open, the advice rests on the broker's prior alone and Slurm's own count stands.

Slurm's own ``Reason`` can only say ``Licenses``, so each pending job of a held QPU
also gets a ``Comment`` naming the QPU's state, reason and expected end
(``squeue -O comment``, ``scontrol show job``); a comment a user wrote is never
replaced, and qhpc's own is cleared when the hold ends. ``qhpc slurm eta JOBID``
tells a user the same for one job.
"""

from __future__ import annotations

import logging
import math
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qhpc.slurm.errors import SlurmCommandError
from qhpc.slurm.jobinfo import LICENCE_PREFIX, licence_name, parse_show_job

log = logging.getLogger(__name__)

#: QDMI states in which a QPU starts tasks
TAKES_WORK = frozenset({"idle", "busy"})
#: how long a hold with no known end is made, and renewed (fail-open if the agent stops)
RENEW_SECONDS = 600.0
#: prefix of the reservations this agent owns, and of the comments it writes
HOLD_PREFIX = "qhpc_hold_"
COMMENT_PREFIX = "qhpc: "
#: longest reason copied into a job's comment
MAX_REASON = 200


@dataclass(frozen=True)
class QpuState:
    """What the broker says of one QPU (``GET /v1/resources``)."""

    name: str
    state: str
    reason: str = ""
    until: float | None = None
    #: sessions the broker's admission controller lets hold the QPU now (None: no advice)
    admitted: int | None = None

    @property
    def takes_work(self) -> bool:
        return self.state in TAKES_WORK

    @classmethod
    def of(cls, row: Mapping[str, Any], admitted: int | None = None) -> QpuState:
        until = row.get("until")
        return cls(
            str(row["name"]), str(row["state"]), str(row.get("reason") or ""),
            float(until) if isinstance(until, int | float) else None, admitted,
        )  # fmt: skip


@dataclass(frozen=True)
class HoldPolicy:
    """When a QPU out of service should hold its Slurm jobs.

    Held when its state is expected to last longer than ``threshold`` seconds from
    now, or, with no known end, once it has lasted ``threshold`` (a calibration of a
    few seconds should not bounce jobs through PENDING).
    """

    threshold: float = 60.0

    def holds(self, qpu: QpuState, since: float, now: float) -> bool:
        if qpu.takes_work:
            return False
        if qpu.until is not None:
            return qpu.until - now > self.threshold
        return now - since >= self.threshold


def hold_comment(qpu: QpuState) -> str:
    """The comment a held job carries: the QPU, its state, its expected end and why."""
    end = "until resumed" if qpu.until is None else f"until {slurm_time(qpu.until)}"
    reason = "".join(c for c in qpu.reason if c.isprintable())[:MAX_REASON]
    return f"{COMMENT_PREFIX}QPU {qpu.name} {qpu.state} {end}" + (f" ({reason})" if reason else "")


def slurm_time(at: float) -> str:
    """UNIX seconds as Slurm's commands read a time (local, whole seconds, rounded up)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(math.ceil(at)))


Runner = Callable[[list[str]], str]


def run_command(argv: list[str], timeout: float = 15.0) -> str:
    """Run a Slurm command; its standard output, or SlurmCommandError naming it."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmCommandError(f"cannot run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise SlurmCommandError(
            f"{' '.join(argv[:3])} failed: {(done.stderr or done.stdout).strip()[:300]}"
        )
    return done.stdout


class SlurmHolds:
    """The Slurm side: licence totals, qhpc's hold reservations, pending jobs' comments."""

    def __init__(self, run: Runner = run_command, user: str = "root") -> None:
        self._run = run
        self._user = user

    def licence_totals(self) -> dict[str, int]:
        """QPU name → its licence count (``qpu_<name>`` licences only)."""
        totals = {}
        for line in self._run(["scontrol", "show", "licenses", "-o"]).splitlines():
            fields = parse_show_job(line)  # any `scontrol show … -o` line
            name = fields.get("LicenseName", "")
            if name.startswith(LICENCE_PREFIX) and fields.get("Total", "").isdigit():
                totals[name[len(LICENCE_PREFIX) :]] = int(fields["Total"])
        return totals

    def holds(self) -> dict[str, float]:
        """QPU name → end (UNIX s) of each hold reservation of ours that exists now."""
        found = {}
        out = self._run(["scontrol", "show", "reservation", "-o"])
        for line in out.splitlines():
            fields = parse_show_job(line)  # any `scontrol show … -o` line
            name = fields.get("ReservationName", "")
            if name.startswith(HOLD_PREFIX):
                end = fields.get("EndTime", "")
                try:
                    found[name[len(HOLD_PREFIX) :]] = time.mktime(
                        time.strptime(end, "%Y-%m-%dT%H:%M:%S")
                    )
                except ValueError:
                    found[name[len(HOLD_PREFIX) :]] = math.inf
        return found

    def hold(self, qpu: str, count: int, end: float, exists: bool) -> None:
        spec = [f"ReservationName={HOLD_PREFIX}{qpu}", f"EndTime={slurm_time(end)}"]
        if exists:
            self._run(["scontrol", "update", *spec, f"Licenses={licence_name(qpu)}:{count}"])
            return
        self._run([
            "scontrol", "create", "reservation", *spec, "StartTime=now",
            f"Users={self._user}", f"Licenses={licence_name(qpu)}:{count}", "Flags=ANY_NODES",
        ])  # fmt: skip

    def release(self, qpu: str) -> None:
        self._run(["scontrol", "delete", f"ReservationName={HOLD_PREFIX}{qpu}"])

    def pending(self, qpu: str) -> dict[str, str]:
        """Pending jobs that asked for the QPU's licence: job id → comment."""
        out = self._run(["squeue", "-h", "-t", "PD", "-L", licence_name(qpu), "-o", "%i|%k"])
        jobs = {}
        for line in out.splitlines():
            job, _, comment = line.partition("|")
            if job.strip():
                jobs[job.strip()] = "" if comment.strip() == "(null)" else comment.strip()
        return jobs

    def comment(self, job_id: str, text: str) -> None:
        self._run(["scontrol", "update", f"JobId={job_id}", f"Comment={text}"])


class Feedback:
    """Holds and releases QPUs' Slurm jobs from the broker's view, one step at a time."""

    def __init__(
        self,
        #: the QPUs' states from the broker, given each QPU's licence total in Slurm
        read_states: Callable[[Mapping[str, int]], Iterable[QpuState]],
        slurm: SlurmHolds,
        policy: HoldPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._read_states = read_states
        self._slurm = slurm
        self.policy = policy or HoldPolicy()
        self._clock = clock
        #: QPU name → (state, since when the agent has seen it)
        self._seen: dict[str, tuple[str, float]] = {}
        #: QPU name → licences kept back for admission (not for an outage)
        self._kept: dict[str, int] = {}

    def step(self) -> list[str]:
        """One look at the broker and Slurm; what it did, one line an action."""
        now = self._clock()
        totals = self._slurm.licence_totals()
        states = {q.name: q for q in self._read_states(totals)}
        held = self._slurm.holds()
        actions = []
        for name, count in sorted(totals.items()):
            qpu = states.get(name)
            if qpu is None:
                continue  # a licence with no QPU behind it at this broker: not ours to judge
            state, since = self._seen.get(name, (qpu.state, now))
            if state != qpu.state:
                since = now
            self._seen[name] = (qpu.state, since)
            if self.policy.holds(qpu, since, now):
                actions += self._hold(qpu, count, held.get(name), now)
            elif qpu.admitted is not None and qpu.admitted < count:
                actions += self._steer(qpu, count, held.get(name), now)
            elif name in held:
                self._kept.pop(name, None)
                self._slurm.release(name)
                actions.append(f"released {name}")
                actions += self._clear_comments(name)
        for name in sorted(set(held) - set(totals)):  # its licence is gone: so is the hold
            self._slurm.release(name)
            actions.append(f"released {name} (no such licence)")
        for action in actions:
            log.info("slurm feedback: %s", action)
        return actions

    def _hold(self, qpu: QpuState, count: int, end: float | None, now: float) -> list[str]:
        actions = []
        if qpu.until is not None:
            wanted = qpu.until
            stale = end is None or abs(end - wanted) > 1.0
        else:  # no known end: hold for a while, renew before it lapses
            wanted = now + RENEW_SECONDS
            stale = end is None or end - now < RENEW_SECONDS / 2
        if self._kept.pop(qpu.name, None) is not None:
            stale = True  # an admission hold becomes an outage hold of every licence
        if stale:
            self._slurm.hold(qpu.name, count, wanted, exists=end is not None)
            actions.append(f"held {qpu.name} until {slurm_time(wanted)} ({qpu.state})")
        text = hold_comment(qpu)
        for job, comment in self._slurm.pending(qpu.name).items():
            if comment != text and (not comment or comment.startswith(COMMENT_PREFIX)):
                self._slurm.comment(job, text)
                actions.append(f"commented job {job}")
        return actions

    def _steer(self, qpu: QpuState, count: int, end: float | None, now: float) -> list[str]:
        """Admission: keep back the licences beyond what the broker admits, so Slurm starts
        no more session jobs than the sessions' duty cycles allow (renewed like a hold
        with no end, so it fails open)."""
        keep = count - max(1, qpu.admitted or 1)
        if self._kept.get(qpu.name) == keep and end is not None and end - now >= RENEW_SECONDS / 2:
            return []
        self._slurm.hold(qpu.name, keep, now + RENEW_SECONDS, exists=end is not None)
        self._kept[qpu.name] = keep
        return [f"admission {qpu.name}: {count - keep} of {count} licences open"]

    def _clear_comments(self, qpu: str) -> list[str]:
        actions = []
        for job, comment in self._slurm.pending(qpu).items():
            if comment.startswith(COMMENT_PREFIX):
                self._slurm.comment(job, "")
                actions.append(f"cleared comment of job {job}")
        return actions

    def run(
        self, stop: threading.Event, interval: float = 5.0,
        report: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        """Step every ``interval`` seconds until ``stop`` is set, handing each action to
        ``report``; a failed step is reported and tried again (the holds made so far
        stay, and lapse by their ends)."""
        while not stop.is_set():
            try:
                actions = self.step()
            except Exception as exc:
                actions = [f"step failed: {exc}"]
                log.warning("slurm feedback: step failed: %s", exc)
            if report is not None:
                for action in actions:
                    report(action)
            stop.wait(interval)
