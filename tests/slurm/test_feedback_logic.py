"""The feedback agent's decisions, with Slurm's commands answered by a small model of
their output (the real commands are exercised in test_qpu_state.py on the cluster)."""

from __future__ import annotations

import time

import pytest

from qhpc.slurm import Feedback, HoldPolicy, QpuState, SlurmHolds, hold_comment
from qhpc.slurm.errors import SlurmCommandError
from qhpc.slurm.feedback import run_command


class FakeSlurm:
    """Licences, reservations and pending jobs, answering the argv the agent sends."""

    def __init__(self, licences: dict[str, int]) -> None:
        self.licences = licences
        self.reservations: dict[str, str] = {}  # name → EndTime
        self.comments: dict[str, str] = {}  # pending job → comment
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        fields = dict(a.split("=", 1) for a in argv if "=" in a)
        match argv[:3]:
            case ["scontrol", "show", "licenses"]:
                return "".join(
                    f"LicenseName={n} Total={k} Used=0\n" for n, k in self.licences.items()
                )
            case ["scontrol", "show", "reservation"]:
                return "".join(
                    f"ReservationName={n} StartTime=x EndTime={e} Flags=ANY_NODES\n"
                    for n, e in self.reservations.items()
                )
            case ["scontrol", "create", "reservation"] | ["scontrol", "update", _] if (
                "ReservationName" in fields
            ):
                self.reservations[fields["ReservationName"]] = fields["EndTime"]
                return ""
            case ["scontrol", "delete", _]:
                del self.reservations[fields["ReservationName"]]
                return ""
            case ["squeue", *_]:
                return "".join(f"{j}|{c or '(null)'}\n" for j, c in self.comments.items())
            case ["scontrol", "update", _]:
                self.comments[fields["JobId"]] = fields["Comment"]
                return ""
        raise AssertionError(f"unexpected command {argv}")


def agent(
    slurm: FakeSlurm,
    states: list[QpuState],
    threshold: float = 60.0,
    now: list[float] | None = None,
) -> Feedback:
    clock = now or [time.time()]
    return Feedback(lambda _: states, SlurmHolds(slurm), HoldPolicy(threshold), lambda: clock[0])


def test_the_policy_holds_long_outages_and_leaves_short_ones_alone() -> None:
    policy, now = HoldPolicy(60), 1000.0
    assert not policy.holds(QpuState("q", "idle"), 0, now)
    assert not policy.holds(QpuState("q", "busy"), 0, now)
    assert policy.holds(QpuState("q", "maintenance", until=now + 61), now, now)
    assert not policy.holds(QpuState("q", "maintenance", until=now + 59), now, now)
    assert not policy.holds(QpuState("q", "calibration"), now - 59, now)  # not yet long
    assert policy.holds(QpuState("q", "calibration"), now - 60, now)
    assert policy.holds(QpuState("q", "offline"), now - 61, now)


def test_a_held_qpu_comments_its_pending_jobs_but_never_over_a_users_comment() -> None:
    slurm = FakeSlurm({"qpu_emu": 2})
    slurm.comments = {"10": "", "11": "my own note", "12": "qhpc: stale"}
    down = QpuState("emu", "maintenance", "drained: warm-up", until=time.time() + 3600)
    actions = agent(slurm, [down]).step()
    assert actions[0].startswith("held emu until ")
    assert list(slurm.reservations) == ["qhpc_hold_emu"]
    assert slurm.comments["10"] == slurm.comments["12"] == hold_comment(down)
    assert slurm.comments["11"] == "my own note"
    create = next(c for c in slurm.calls if c[:3] == ["scontrol", "create", "reservation"])
    assert "Licenses=qpu_emu:2" in create and "Flags=ANY_NODES" in create


def test_release_clears_only_qhpc_comments_and_holds_of_vanished_licences_go() -> None:
    slurm = FakeSlurm({"qpu_emu": 1})
    slurm.reservations = {
        "qhpc_hold_emu": "2099-01-01T00:00:00",
        "qhpc_hold_old": "2099-01-01T00:00:00",
    }
    slurm.comments = {"10": "qhpc: QPU emu maintenance", "11": "mine"}
    actions = agent(slurm, [QpuState("emu", "idle")]).step()
    assert "released emu" in actions and "released old (no such licence)" in actions
    assert slurm.reservations == {}
    assert slurm.comments == {"10": "", "11": "mine"}


def test_unknown_end_holds_are_renewed_before_they_lapse_not_every_step() -> None:
    slurm = FakeSlurm({"qpu_emu": 1})
    clock = [1_000_000.0]
    feedback = agent(slurm, [QpuState("emu", "offline")], threshold=0, now=clock)
    assert feedback.step()[0].startswith("held emu")
    clock[0] += 60
    assert not any(a.startswith("held") for a in feedback.step())
    clock[0] += 300  # past half of the ten-minute hold
    assert feedback.step()[0].startswith("held emu")


def test_resources_unknown_to_the_broker_are_left_alone_and_comments_are_sanitised() -> None:
    slurm = FakeSlurm({"qpu_other": 1})
    assert agent(slurm, [QpuState("emu", "offline")], threshold=0).step() == []
    text = hold_comment(QpuState("emu", "offline", "a\nb\x1b[31m" + "x" * 500))
    assert "\n" not in text and "\x1b" not in text and len(text) < 300


def test_a_failing_slurm_command_names_itself() -> None:
    with pytest.raises(SlurmCommandError, match="cannot run /nonexistent/scontrol"):
        run_command(["/nonexistent/scontrol", "show", "licenses"])
    with pytest.raises(SlurmCommandError, match="false show licenses failed"):
        run_command(["false", "show", "licenses"])


def test_admission_keeps_back_the_licences_beyond_what_the_broker_admits() -> None:
    slurm = FakeSlurm({"qpu_emu": 4})
    clock = [1_000_000.0]
    states = [QpuState("emu", "busy", admitted=2)]
    feedback = agent(slurm, states, now=clock)
    assert feedback.step() == ["admission emu: 2 of 4 licences open"]
    create = next(c for c in slurm.calls if c[:3] == ["scontrol", "create", "reservation"])
    assert "Licenses=qpu_emu:2" in create  # 4 - 2 kept back
    clock[0] += 30
    assert feedback.step() == []  # unchanged advice, fresh hold: nothing rewritten
    states[0] = QpuState("emu", "busy", admitted=3)
    assert feedback.step() == ["admission emu: 3 of 4 licences open"]
    states[0] = QpuState("emu", "busy", admitted=4)  # everything admitted: the hold goes
    assert feedback.step() == ["released emu"] and slurm.reservations == {}


def test_an_outage_takes_over_an_admission_hold_and_no_advice_means_no_hold() -> None:
    slurm = FakeSlurm({"qpu_emu": 4})
    states = [QpuState("emu", "idle", admitted=1)]
    feedback = agent(slurm, states, threshold=0)
    feedback.step()
    states[0] = QpuState("emu", "offline", admitted=1)
    assert feedback.step()[0].startswith("held emu")
    update = [c for c in slurm.calls if c[:2] == ["scontrol", "update"]][-1]
    assert "Licenses=qpu_emu:4" in update  # every licence while it is out
    states[0] = QpuState("emu", "idle")  # back, and no advice (older broker): released
    assert "released emu" in feedback.step()
