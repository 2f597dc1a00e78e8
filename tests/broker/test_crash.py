"""kill -9 the broker: acknowledged tasks are neither lost nor doubled, and a running
hybrid program's output so far is kept while the program ends as interrupted."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qiskit.circuit import QuantumCircuit

from helpers import free_port, postgres_schema_url, start_serve, stop_process, wait_healthy
from qhpc import connect
from qhpc.store import Store

JOBS, TASKS_PER_JOB = 5, 100


def start_broker(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    config = tmp_path / "resources.toml"
    # Emulated device time of 10 ms per task at scale 1: 500 tasks take ≥ 5 s, so the
    # kill lands mid-run whatever the machine's speed.
    config.write_text(
        '[resources.qpu]\ntype = "emulator"\nnoise = false\n'
        "timing = { task_overhead = 0.01, circuit_overhead = 0.0, shot_time = 0.0 }\n"
    )
    return start_serve(tmp_path, port, "--config", str(config), db=tmp_path / "crash.db")


@pytest.mark.slow
def test_kill_9_mid_run_then_restart_completes_everything_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = start_broker(tmp_path, port)
    try:
        wait_healthy(url, first)
        admin = (tmp_path / "admin.token").read_text().strip()
        circuit = QuantumCircuit(2, 2)
        circuit.h(0)
        circuit.cx(0, 1)
        circuit.measure([0, 1], [0, 1])
        acknowledged = []
        with connect(url, admin) as client:
            for _ in range(JOBS):
                job = client.submit(
                    "qpu", [circuit] * TASKS_PER_JOB, 10, account="crash", split_circuits=True
                )
                acknowledged.append(job["job_id"])
            deadline = time.monotonic() + 60
            while sum(1 for j in client.jobs(state="completed")) == 0:
                done = client.job(acknowledged[0])
                if any(t["state"] == "completed" for t in done["tasks"]):
                    break
                assert time.monotonic() < deadline, "no task finished before the kill"
                time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

    with Store.open(tmp_path / "crash.db") as store:
        states = [t.state for j in acknowledged for t in store.tasks_of_job(j)]
        assert len(states) == JOBS * TASKS_PER_JOB
        assert states.count("completed") < len(states), "the kill came too late to test anything"

    second = start_broker(tmp_path, port)
    try:
        wait_healthy(url, second)
        with Store.open(tmp_path / "crash.db") as store:
            deadline = time.monotonic() + 240
            while True:
                jobs = [store.get_job(j) for j in acknowledged]
                if all(j.state == "completed" for j in jobs):
                    break
                assert time.monotonic() < deadline, [j.state for j in jobs]
                time.sleep(0.2)
            usage = store.usage()
            booked = [u.task_id for u in usage]
            assert len(booked) == len(set(booked)) == JOBS * TASKS_PER_JOB
            for job_id in acknowledged:
                for task in store.tasks_of_job(job_id):
                    assert task.state == "completed"
                    assert store.task_result(task.task_id) is not None
    finally:
        stop_process(second, timeout=30)


SESSION_TASKS = 200


@pytest.mark.slow
def test_kill_9_after_session_results_were_released_loses_no_task_and_no_usage(
    tmp_path: Path,
) -> None:
    """The durability contract of session tasks, end to end: results are released
    before the journal's group commit; a kill -9 right after the last one must still
    leave every released task stored and booked exactly once after the restart."""
    from qhpc.resources import SamplerTask
    from qhpc.session import FastPathClient

    port, fastpath = free_port(), f"tcp://127.0.0.1:{free_port()}"
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "resources.toml"
    config.write_text('[resources.instant]\ntype = "null"\n')
    extra = ("--config", str(config), "--fastpath", fastpath)
    first = start_serve(tmp_path, port, *extra, db=tmp_path / "s.db")
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    try:
        wait_healthy(url, first)
        admin = (tmp_path / "admin.token").read_text().strip()
        with connect(url, admin) as client:
            session = client.open_session(
                "instant", duration_seconds=3600, user="ada", account="physics"
            )
        released = []
        with FastPathClient(fastpath, session["token"], timeout=30) as fast:
            for _ in range(SESSION_TASKS):
                result = fast.run(SamplerTask((circuit,), shots=3))
                assert result.kind == "sampler"
                released.append(result)
    finally:
        first.send_signal(signal.SIGKILL)  # at once: the last commit is most likely not done
        first.wait(timeout=30)
    assert len(released) == SESSION_TASKS
    with Store.open(tmp_path / "s.db") as store:
        committed = len(store.tasks_of_job(session["session_id"]))
    print(f"committed before the restart: {committed} of {SESSION_TASKS}")

    second = start_serve(tmp_path, port, *extra, db=tmp_path / "s.db")
    try:
        wait_healthy(url, second)  # started: the journal's log has been replayed
        with Store.open(tmp_path / "s.db") as store:
            tasks = store.tasks_of_job(session["session_id"])
            assert len(tasks) == SESSION_TASKS
            assert {t.state for t in tasks} == {"completed"}
            assert sorted(t.index for t in tasks) == list(range(SESSION_TASKS))
            booked = [u.task_id for u in store.usage() if u.session_id == session["session_id"]]
            assert sorted(booked) == sorted(t.task_id for t in tasks)
            assert sum(u.shots for u in store.usage()) == 3 * SESSION_TASKS
    finally:
        stop_process(second, timeout=30)


PRINTS_THEN_SLEEPS = """
import time
def main():
    for i in range(3):
        print("line", i, flush=True)
    time.sleep(600)
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where both brokers keep their state: an SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "programs.db")
    else:
        yield from postgres_schema_url("qhpc_crash")


def stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, timeout=60)


@pytest.mark.slow
def test_kill_9_keeps_a_running_programs_output_and_ends_it_interrupted(
    tmp_path: Path, store_url: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = ("--runtime-pool-size", "1")
    first = start_serve(tmp_path, port, *extra, db=store_url, stdout=subprocess.PIPE)
    printed = "".join(f"line {i}\n" for i in range(3))
    try:
        wait_healthy(url, first)
        admin = (tmp_path / "admin.token").read_text().strip()
        with connect(url, admin) as client:
            body = {
                "resource": "aer",
                "source": PRINTS_THEN_SLEEPS,
                "timeout": 600,
                "account": "ops",
            }
            job_id = client._request("POST", "/programs", json=body)["job_id"]
            deadline = time.monotonic() + 90
            while True:  # the live form, served from the broker's memory
                logs = client._request("GET", f"/jobs/{job_id}/logs")
                if logs["stdout"] == printed:
                    break
                assert not logs["final"], logs
                assert time.monotonic() < deadline, f"no output before the kill: {logs}"
                time.sleep(0.1)
            assert logs["stdout_offset"] == len(printed.encode())
        # The kill must come after the writer's round (every 0.5 s), not race it: wait
        # until the store has the lines, reading it as any other process would.
        with Store.open(store_url) as store:
            while store.read_output(job_id, "stdout")[0] != printed.encode():
                assert time.monotonic() < deadline, "the output never reached the store"
                time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

    with Store.open(store_url) as store:  # before the restart: what the crash left
        assert store.get_program(job_id).status == "running"
        assert store.read_output(job_id, "stdout") == (printed.encode(), len(printed.encode()))

    second = start_serve(tmp_path, port, *extra, db=store_url, stdout=subprocess.PIPE)
    try:
        wait_healthy(url, second)  # started: programs open at the crash have been ended
        with connect(url, admin) as client:
            logs = client._request("GET", f"/jobs/{job_id}/logs")
            assert (logs["stdout"], logs["stderr"], logs["final"]) == (printed, "", True)
            assert logs["stdout_offset"] == len(printed.encode())
            tail = client._request("GET", f"/jobs/{job_id}/logs", params={"stdout_offset": 7})
            assert tail["stdout"] == printed[7:]
            job = client.job(job_id)
            assert job["state"] == "failed" and job["finished_at"] is not None
            program = job["program"]
            assert program["status"] == "failed"
            assert program["message"].startswith(
                "interrupted: the broker restarted while the program ran"
            )
    finally:
        stop(second)
