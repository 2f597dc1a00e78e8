"""Pools at admission: the member with the lowest ETA that fits, on a real store.

Most tests use a broker that is not started: no executor takes work, so each queue
holds exactly what a test put there and every ETA is the sum of the emulators'
own estimates (1 s a task here). One test runs a job to its end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qiskit.circuit import QuantumCircuit

from qhpc.broker import (
    POOL_POLICY_CLASSES,
    Broker,
    BrokerConfig,
    DrainRequest,
    LowestEtaPolicy,
    MemberView,
    NoMemberFits,
    ProgramError,
    SessionMode,
)
from qhpc.resources import (
    POOL_POLICIES,
    PayloadError,
    PoolSpec,
    ResourceRegistry,
    ResourceSpec,
    SamplerTask,
    UnknownResourceError,
)
from qhpc.store import Store

TIMING = {"task_overhead": 1.0, "circuit_overhead": 0.0, "shot_time": 0.0}


def _emulator(name: str, qubits: int) -> ResourceSpec:
    options = {"device": f"line-{qubits}", "noise": False, "timing": TIMING, "seed": 1}
    return ResourceSpec(name, "emulator", options)


def _registry() -> ResourceRegistry:
    # a: 5 qubits, b: 7 qubits, solo: outside the pool
    specs = [_emulator("a", 5), _emulator("b", 7), _emulator("solo", 5)]
    return ResourceRegistry(specs, [PoolSpec("p", ("b", "a"))])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "pools.db") as opened:
        yield opened


@pytest.fixture
def idle(store: Store) -> Iterator[Broker]:
    """A broker whose executors never run: queues hold what the test puts there."""
    registry = _registry()
    yield Broker(store, registry, BrokerConfig(policy="fifo"))
    registry.close()


def _wide(qubits: int) -> QuantumCircuit:
    circuit = QuantumCircuit(qubits)
    circuit.h(0)
    for q in range(1, qubits):
        circuit.cx(0, q)
    circuit.measure_all()
    return circuit


def _submit(broker: Broker, resource: str, circuit: QuantumCircuit, tasks: int = 1) -> str:
    job = broker.submit(
        user="alice", account="chem", resource=resource,
        payloads=[SamplerTask((circuit,), shots=10) for _ in range(tasks)],
    )  # fmt: skip
    return job.job_id


# -- the policy, alone -------------------------------------------------------------------


def test_lowest_eta_then_shorter_queue_then_name() -> None:
    policy = LowestEtaPolicy()
    members = [MemberView("c", 2.0, 0), MemberView("b", 1.0, 5), MemberView("a", 1.0, 5)]
    assert policy.choose(members, 0.0) == members[2]  # ETA tie, queue tie: the name
    members = [MemberView("a", 1.0, 5), MemberView("b", 1.0, 4), MemberView("c", 0.5, 9)]
    assert policy.choose(members, 0.0) == members[2]  # the lowest ETA, whatever its queue
    members = [MemberView("a", 1.0, 5), MemberView("b", 1.0, 4)]
    assert policy.choose(members, 0.0) == members[1]  # ETA tie: the shorter queue


def test_then_fewer_open_sessions() -> None:
    policy = LowestEtaPolicy()
    members = [MemberView("a", 0.0, 0, sessions=2), MemberView("b", 0.0, 0, sessions=1)]
    assert policy.choose(members, 0.0) == members[1]
    members = [MemberView("a", 0.0, 0, sessions=2), MemberView("b", 0.0, 1, sessions=0)]
    assert policy.choose(members, 0.0) == members[0]  # the queue first


def test_members_that_do_not_fit_are_never_chosen() -> None:
    policy = LowestEtaPolicy()
    members = [MemberView("a", 0.0, 0, "too narrow"), MemberView("b", math.inf, 7)]
    assert policy.choose(members, 0.0) == members[1]  # unknown ETA, but it fits
    assert policy.choose([MemberView("a", 0.0, 0, "too narrow")], 0.0) is None
    assert policy.choose([], 0.0) is None


def test_an_unknown_or_broken_eta_goes_last() -> None:
    policy = LowestEtaPolicy()
    members = [MemberView("a", math.nan, 0), MemberView("b", math.inf, 1), MemberView("c", 9, 9)]
    assert policy.choose(members, 0.0) == members[2]
    # nan and inf rank alike, so the queue decides between them
    assert policy.choose(members[:2], 0.0) == members[0]


def test_every_configurable_policy_has_a_class() -> None:
    assert set(POOL_POLICY_CLASSES) == set(POOL_POLICIES)


# -- admission of batch jobs ----------------------------------------------------------------


def test_a_job_naming_a_pool_goes_to_the_member_with_the_lowest_eta(
    idle: Broker, store: Store, bell: QuantumCircuit
) -> None:
    first = _submit(idle, "p", bell)
    # Both empty (ETA 0, no queue): name order.
    assert (store.get_job(first).resource, store.get_job(first).pool) == ("a", "p")
    assert [t.resource for t in store.tasks_of_job(first)] == ["a"]
    assert idle.queue_length("a") == 1
    # a now has 1 s of work: b.
    assert store.get_job(_submit(idle, "p", bell)).resource == "b"
    # Two tasks make b's queue longer: a, although it is listed after b.
    _submit(idle, "b", bell, tasks=2)
    assert (idle.pools.eta("a"), idle.pools.eta("b")) == (1.0, 3.0)
    assert store.get_job(_submit(idle, "p", bell)).resource == "a"
    # A job naming a member itself records no pool.
    assert store.get_job(_submit(idle, "a", bell)).pool is None


def test_the_member_must_fit_the_circuit(idle: Broker, store: Store, bell: QuantumCircuit) -> None:
    _submit(idle, "b", bell, tasks=3)  # b: the longer ETA by far
    job = store.get_job(_submit(idle, "p", _wide(6)))
    assert (job.resource, job.pool) == ("b", "p")  # a has 5 qubits
    assert store.get_job(_submit(idle, "p", bell)).resource == "a"


def test_no_member_fits_names_each_member_and_stores_nothing(
    idle: Broker, store: Store, bell: QuantumCircuit
) -> None:
    _submit(idle, "a", bell)
    before = ([j.job_id for j in store.list_jobs()], idle.queue_length("a"))
    with pytest.raises(NoMemberFits) as caught:
        _submit(idle, "p", _wide(8))
    error = caught.value
    assert isinstance(error, PayloadError)  # a 422 over REST, as any payload refusal
    assert error.pool == "p"
    assert list(error.reasons) == ["b", "a"]  # the pool's order
    assert "needs 8 qubits" in error.reasons["a"] and "has 5" in error.reasons["a"]
    assert "needs 8 qubits" in error.reasons["b"] and "has 7" in error.reasons["b"]
    assert str(error).startswith("no member of pool 'p' fits: b: ")
    assert ([j.job_id for j in store.list_jobs()], idle.queue_length("a")) == before
    assert idle.queue_length("b") == 0
    # a job of several tasks says which task does not fit
    with pytest.raises(NoMemberFits, match=r"b: task 1: circuit needs 8 .*; a: task 1: "):
        idle.submit(
            user="alice", account="chem", resource="p",
            payloads=[SamplerTask((bell,), 10), SamplerTask((_wide(8),), 10)],
        )  # fmt: skip
    # one that only b fits goes there
    job = idle.submit(
        user="alice", account="chem", resource="p",
        payloads=[SamplerTask((bell,), 10), SamplerTask((_wide(6),), 10)],
    )  # fmt: skip
    assert job.resource == "b"


def test_an_unknown_name_is_refused_naming_resources_and_pools(
    idle: Broker, store: Store, bell: QuantumCircuit
) -> None:
    for name in ("q", "p/../a", "p a", ""):
        with pytest.raises(UnknownResourceError, match=r"; pools: p$"):
            _submit(idle, name, bell)
        with pytest.raises(UnknownResourceError):
            idle.open_session(user="u", account="chem", resource=name, deadline=time.time() + 60)
    assert store.list_jobs() == [] and store.list_sessions(open_only=False) == []


def test_a_drained_member_is_passed_over_while_another_takes_work(
    idle: Broker, store: Store, bell: QuantumCircuit
) -> None:
    _submit(idle, "b", bell, tasks=4)
    idle.drain("a", DrainRequest("cryostat"), by="ops")
    assert math.isinf(idle.pools.eta("a"))
    assert store.get_job(_submit(idle, "p", bell)).resource == "b"
    # A drain with an end counts as the wait until then.
    idle.drain("a", DrainRequest("firmware", until=time.time() + 1000.0), by="ops")
    assert 990 < idle.pools.eta("a") <= 1000
    assert store.get_job(_submit(idle, "p", bell)).resource == "b"
    idle.drain("a", DrainRequest("firmware", until=time.time() + 2.0), by="ops")
    assert store.get_job(_submit(idle, "p", bell)).resource == "a"


def test_every_member_drained_the_work_waits_on_the_shortest_queue(
    idle: Broker, store: Store, bell: QuantumCircuit
) -> None:
    _submit(idle, "a", bell)
    for member in ("a", "b"):
        idle.drain(member, DrainRequest("maintenance day"), by="ops")
    job = store.get_job(_submit(idle, "p", bell))
    assert (job.resource, job.pool) == ("b", "p")  # both inf; b's queue is shorter
    (entry,) = idle.queue("b")
    assert math.isinf(entry[1])  # its ETA says: not known


# -- sessions --------------------------------------------------------------------------------


def test_a_session_on_a_pool_opens_on_the_lowest_eta_member(
    idle: Broker, store: Store, bell: QuantumCircuit
) -> None:
    _submit(idle, "a", bell)
    session, token = idle.open_session(
        user="alice", account="chem", resource="p", deadline=time.time() + 60
    )
    assert (session.resource, session.pool) == ("b", "p")
    assert store.get_session(session.session_id) == session
    assert store.get_job(session.session_id).pool == "p"
    assert store.get_job(session.session_id).resource == "b"
    assert idle.access.authenticate(token).resource == "b"  # its token is the member's


def test_a_session_on_a_fully_drained_pool_opens_and_its_eta_says_so(
    idle: Broker, store: Store
) -> None:
    for member in ("a", "b"):
        idle.drain(member, DrainRequest("maintenance day"), by="ops")
    session, _ = idle.open_session(
        user="alice", account="chem", resource="p", deadline=time.time() + 60
    )
    assert (session.resource, session.pool) == ("a", "p")  # all inf, queues empty: name
    assert math.isinf(idle.pools.eta(session.resource))
    second, _ = idle.open_session(
        user="bob", account="chem", resource="p", deadline=time.time() + 60
    )
    assert second.resource == "b"  # all inf, queues empty: fewer sessions


def test_exclusive_sessions_take_the_members_in_turn_then_are_refused(
    idle: Broker, store: Store
) -> None:
    def exclusive() -> str:
        session, _ = idle.open_session(
            user="alice", account="chem", resource="p", deadline=time.time() + 60,
            mode=SessionMode.EXCLUSIVE,
        )  # fmt: skip
        return session.resource

    assert [exclusive(), exclusive()] == ["a", "b"]
    with pytest.raises(NoMemberFits) as caught:
        exclusive()
    assert caught.value.reasons == {
        "b": "already held by an exclusive session",
        "a": "already held by an exclusive session",
    }
    assert len(store.list_sessions()) == 2
    # a multiplexed session still opens (it shares its member)
    session, _ = idle.open_session(
        user="alice", account="chem", resource="p", deadline=time.time() + 60
    )
    assert session.pool == "p"


def test_one_slurm_job_holds_sessions_on_several_resources(idle: Broker, store: Store) -> None:
    # Preparation for Slurm's --qpu=a,b: one session per QPU, all tied to one job.
    deadline = time.time() + 60
    opened = [
        idle.open_session(
            user="alice", account="chem", resource=name, deadline=deadline, slurm_job_id="4242"
        )[0]
        for name in ("a", "solo", "p")
    ]
    assert [s.resource for s in opened] == ["a", "solo", "b"]
    mine = [s for s in store.list_sessions() if s.slurm_job_id == "4242"]
    assert sorted(s.session_id for s in mine) == sorted(s.session_id for s in opened)
    idle.close_session(opened[0].session_id)  # closing one leaves the others open
    assert {s.session_id for s in store.list_sessions()} == {s.session_id for s in opened[1:]}


# -- a running broker --------------------------------------------------------------------------


def test_a_pooled_job_runs_to_its_end_on_its_member(store: Store, bell: QuantumCircuit) -> None:
    registry = _registry()
    broker = Broker(store, registry, BrokerConfig(policy="fifo"))
    broker.start()
    try:
        job_id = _submit(broker, "p", _wide(6))
        (task,) = broker.tasks_of_job(job_id)
        done = broker.wait_task(task.task_id, timeout=60)
        assert (done.state, done.resource) == ("completed", "b")
        result = broker.task_result(task.task_id)
        assert result is not None
        assert sum(result.to_dict()["circuits"][0]["counts"].values()) == 10
        assert broker.get_job(job_id).pool == "p"
    finally:
        broker.stop()
        registry.close()


def test_a_hybrid_job_may_name_a_pool(idle: Broker) -> None:
    # The program's own run needs the runtime pool; what admission decides shows without
    # it: a stopping broker refuses the program only after its name was accepted.
    idle.programs.close()
    with pytest.raises(ProgramError, match="stopping"):
        idle.programs.submit(user="alice", account="chem", resource="p", source="def main(): 0")
    with pytest.raises(UnknownResourceError, match="pools: p"):
        idle.programs.submit(user="alice", account="chem", resource="q", source="def main(): 0")
