"""Hybrid jobs run co-located by a real `qhpc serve` (loopback, `aer`), driven by the CLI.

One broker serves the module (its runtime pool warms up once); the restart test
starts its own. Programs run under the pool's isolation (an unprivileged uid when
the tests run as root).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port, run_cli, start_serve, stop_process, wait_healthy
from qhpc.client import Client, ClientError, connect

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

RAISES = """
def main(qpu):
    from qiskit import QuantumCircuit
    bell = QuantumCircuit(1, 1)
    bell.measure(0, 0)
    qpu.run(bell, shots=10)
    raise ValueError("the optimiser diverged")
"""
NO_QPU = "def main():\n    print('no quantum today')\n    return {'answer': 42}\n"
LOOPS = """
import time
from qiskit import QuantumCircuit
def main(qpu, report):
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    i = 0
    while True:
        i += 1
        qpu.run(circuit, shots=1)
        report(i, float(i))
        print("iteration", i, flush=True)
        time.sleep(0.05)
"""
ALLOCATES = (
    "def main():\n    hoard = []\n    while True:\n        hoard.append(bytearray(64 << 20))\n"
)
FORKS = """
import os, time
def main():
    for _ in range(20):
        if os.fork() == 0:
            while True:
                time.sleep(1)
    return "parent done"
"""
GARBLES_CONTROL = """
import os, time
def main():
    os.write(3, b"\\xff" * 64)
    time.sleep(30)
"""
GARBLES_DISPATCH = """
import socket
def main(context):
    path = context.endpoint.removeprefix("unix://")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(b"\\x00\\x00\\x00\\x05Xhello")
    return sock.recv(4096)[5:].decode("utf-8", "replace")
"""

CONNECTS = """
import os


def main():
    import qhpc
    from qiskit import QuantumCircuit
    from qhpc.resources import SamplerResult, SamplerTask
    from qhpc.session import QPU

    one = QuantumCircuit(1, 1)
    one.x(0)
    one.measure(0, 0)
    names = sorted(k for k in os.environ if k.startswith("QHPC_"))
    qpu = QPU.from_env()  # the names a Slurm job gets, here from the broker
    from_env = qpu.run(one, shots=10)
    qpu.close()
    with qhpc.connect() as client:  # QHPC_URL is the REST API, QHPC_SESSION the token
        health = client.health()
        session_qpu = client.qpu()  # the session's resource over QHPC_FASTPATH
        result = session_qpu.run(SamplerTask((one,), shots=12))
        session_qpu.close()
    assert isinstance(result, SamplerResult)
    return {
        "names": names, "url": os.environ.get("QHPC_URL"),
        "fastpath": os.environ["QHPC_FASTPATH"], "health": health,
        "from_env": from_env, "connect": result.circuits[0].counts,
        "session_qpu": type(session_qpu).__name__,
    }
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """A served broker: (url, admin token, a user token of alice/chem)."""
    tmp = tmp_path_factory.mktemp("hybrid-broker")
    port = free_port()
    process = start_serve(
        tmp, port, "--runtime-pool-size", "1", db=tmp / "b.db", stdout=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        admin = (tmp / "admin.token").read_text().strip()
        with connect(url, admin) as client:
            alice = client.create_token("user", "alice", account="chem")["token"]
        yield url, admin, alice
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def submit(client: Client, source: str, **extra: Any) -> str:
    body = {"resource": "aer", "source": source, "timeout": 60, **extra}
    return str(client._request("POST", "/programs", json=body)["job_id"])


def finished(client: Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    job = client.wait(job_id, timeout=timeout)
    program: dict[str, Any] = job["program"]
    assert program["status"] not in ("queued", "running")
    return program


def wait_running(client: Client, job_id: str, calls: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        program: dict[str, Any] = client.job(job_id)["program"]
        if program["status"] == "running" and program["qpu_calls"] >= calls:
            return program
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not start calling its QPU")


def session_closed(client: Client, session_id: str) -> bool:
    return any(
        s["session_id"] == session_id and s["closed_at"] is not None
        for s in client.sessions(include_closed=True)
    )


@pytest.mark.parametrize("example", ["hybrid_vqe.py", "hybrid_qaoa.py"])
def test_examples_reach_the_optimum_co_located(
    broker: tuple[str, str, str], example: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url, admin, alice = broker
    monkeypatch.setenv("QHPC_TOKEN", alice)  # never a token as an argument
    auth = ["--url", url]
    code, out, err = run_cli(
        ["submit", "--hybrid", str(EXAMPLES / example), "--resource", "aer", "--wait",
         "--timeout", "300", "--json", *auth],
        capsys,
    )  # fmt: skip
    assert code == 0, out + err
    program = json.loads(out)
    assert program["status"] == "completed", program["message"]
    value = program["return_value"]
    if example == "hybrid_vqe.py":
        assert value["error_mha"] < 1.6  # chemical accuracy
    else:
        assert value["best_cut"] == value["max_cut"] == 5
    assert program["qpu_calls"] == value["evaluations"] + (example == "hybrid_qaoa.py")
    assert program["iterations"] == value["evaluations"]  # from report()
    timings = program["timings"]
    for key in ("initialisation_s", "classical_s", "qpu_s", "dispatch_overhead_s",
                "dispatch_overhead_per_call_s", "termination_s", "outcome_delivery_s",
                "total_s"):  # fmt: skip
        assert timings[key] >= 0, key
    assert timings["total_s"] >= timings["run_s"] > 0
    with connect(url, admin) as client:
        assert session_closed(client, program["session_id"])
        usage = client.accounting("job")
    # Accounting books the program's QPU tasks under its session, charged to alice's account.
    row = next(r for r in usage if r["group"] == program["session_id"])
    assert row["tasks"] == program["qpu_calls"]


def test_a_co_located_program_connects_like_a_slurm_job(broker: tuple[str, str, str]) -> None:
    url, _, alice = broker
    with connect(url, alice) as client:
        program = finished(client, submit(client, CONNECTS))
    assert program["status"] == "completed", program["message"]
    value = program["return_value"]
    # QHPC_URL is the REST API, as in a Slurm job; the direct channel is QHPC_FASTPATH.
    assert value["url"] == url
    assert value["fastpath"].startswith("unix://")
    assert {"QHPC_URL", "QHPC_FASTPATH", "QHPC_SESSION", "QHPC_RESOURCE"} <= set(value["names"])
    assert value["from_env"] == {"1": 10}
    assert value["connect"] == {"1": 12}
    assert value["session_qpu"] == "SessionQPU"
    assert program["qpu_calls"] == 2


def test_status_logs_and_cancel(
    broker: tuple[str, str, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url, _, alice = broker
    monkeypatch.setenv("QHPC_TOKEN", alice)
    auth = ["--url", url]
    with connect(url, alice) as client:
        job_id = submit(client, LOOPS, max_iterations=100_000)
        running = wait_running(client, job_id, calls=3)
        assert running["progress"]["iteration"] >= 1
        code, out, _ = run_cli(["status", job_id, *auth], capsys)
        assert code == 0 and "running" in out and "QPU calls" in out and "iteration" in out
        code, out, _ = run_cli(["logs", job_id, *auth], capsys)
        assert code == 0 and "iteration 1" in out
        code, _, err = run_cli(["cancel", job_id, *auth], capsys)
        assert code == 0, err
        program = finished(client, job_id)
        assert program["status"] == "cancelled" and "cancelled" in program["message"]
        assert client.job(job_id)["state"] == "cancelled"
        code, out, _ = run_cli(["logs", job_id, "--follow", *auth], capsys)
        assert code == 0 and "iteration 2" in out
        code, out, _ = run_cli(["result", job_id, *auth], capsys)
        assert code == 0 and "cancelled" in out and "termination" in out
        assert session_closed(client, program["session_id"])


def test_closing_the_session_stops_the_program(broker: tuple[str, str, str]) -> None:
    url, admin, alice = broker
    with connect(url, alice) as client:
        job_id = submit(client, LOOPS)
        running = wait_running(client, job_id)
    with connect(url, admin) as client:  # what Slurm's epilog does
        client.close_session(running["session_id"])
        program = finished(client, job_id)
    assert program["status"] == "cancelled"
    assert f"session {running['session_id']} was closed" in program["message"]


@pytest.mark.parametrize(
    ("source", "status", "message"),
    [
        (RAISES, "failed", "ValueError: the optimiser diverged"),
        ("import time\ndef main():\n    while True:\n        time.sleep(0.01)\n", "timeout",
         "wall-clock timeout of 3 s"),
        (ALLOCATES, "limit", "memory limit"),
        (GARBLES_CONTROL, "killed", "protocol violation"),
    ],
)  # fmt: skip
def test_bad_programs_stop_with_a_clear_status(
    broker: tuple[str, str, str], source: str, status: str, message: str
) -> None:
    url, admin, alice = broker
    with connect(url, alice) as client:
        job_id = submit(client, source, timeout=3 if status == "timeout" else 60)
        program = finished(client, job_id)
        assert program["status"] == status
        assert message in program["message"]
        assert client.job(job_id)["state"] == "failed"
        assert session_closed(client, program["session_id"])
        # The pool and the broker keep serving: the next program runs normally.
        after = finished(client, submit(client, NO_QPU))
        assert after["status"] == "completed" and after["return_value"] == {"answer": 42}
    if source is RAISES:  # the task it ran before raising is booked
        with connect(url, admin) as client:
            rows = client.accounting("job")
        assert any(r["group"] == program["session_id"] and r["tasks"] == 1 for r in rows)


def test_forks_and_malformed_dispatch_frames_are_contained(broker: tuple[str, str, str]) -> None:
    url, _, alice = broker
    with connect(url, alice) as client:
        forked = finished(client, submit(client, FORKS))
        assert forked["status"] == "completed" and forked["return_value"] == "parent done"
        garbled = finished(client, submit(client, GARBLES_DISPATCH))
        assert garbled["status"] == "completed"
        assert "HELLO" in garbled["return_value"]  # the broker answered with an error frame
        quiet_id = submit(client, NO_QPU)
        assert finished(client, quiet_id)["qpu_calls"] == 0
        logs = client._request("GET", f"/jobs/{quiet_id}/logs")
        assert logs["stdout"] == "no quantum today\n" and logs["final"]


def test_rejected_at_submit(broker: tuple[str, str, str], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    url, _, alice = broker
    (tmp_path / "alice.token").write_text(alice)
    auth = ["--url", url, "--token-file", str(tmp_path / "alice.token")]
    broken = tmp_path / "broken.py"
    broken.write_text("def main(qpu):\n    return (1,\n\nx = = 2\n")
    code, _, err = run_cli(["submit", "--hybrid", str(broken), *auth], capsys)
    assert code == 1 and "syntax error in broken.py at line" in err
    good = tmp_path / "good.py"
    good.write_text(NO_QPU)
    code, _, err = run_cli(["submit", "--hybrid", str(good), "-r", "nope", *auth], capsys)
    assert code == 1 and "unknown resource 'nope'" in err
    code, _, err = run_cli(["submit", "--hybrid", str(good), "--args", "[1]", *auth], capsys)
    assert code == 1 and "JSON object" in err
    with connect(url, alice) as client:
        with pytest.raises(ClientError) as refused:
            client._request("POST", "/programs", json={"resource": "aer", "entry_point": "nope"})
        assert refused.value.status == 422 and "no server-side program 'nope'" in str(refused.value)
        batch = client.submit("aer", ["OPENQASM 2.0;\nqreg q[1];\ncreg c[1];\n"], 10)
        with pytest.raises(ClientError, match="only hybrid jobs have logs"):
            client._request("GET", f"/jobs/{batch['job_id']}/logs")


def test_a_restart_fails_the_running_program(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "restart.db"
    process = start_serve(tmp_path, port, "--runtime-pool-size", "1", db=db, stdout=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        admin = (tmp_path / "admin.token").read_text().strip()
        with connect(url, admin) as client:
            job_id = submit(client, LOOPS, account="ops")
            wait_running(client, job_id)
        process.kill()  # a crash: no clean stop
        process.wait(30)
        process = start_serve(
            tmp_path, port, "--runtime-pool-size", "1", db=db, stdout=subprocess.PIPE
        )
        wait_healthy(url, process)
        with connect(url, admin) as client:
            job = client.job(job_id)
            assert job["state"] == "failed"
            assert job["program"]["status"] == "failed"
            assert "broker restarted" in job["program"]["message"]
            assert "not resumable" in job["program"]["message"]
            assert session_closed(client, job["program"]["session_id"])
            after = finished(client, submit(client, NO_QPU, account="ops"))
            assert after["status"] == "completed"
    finally:
        stop_process(process, timeout=60)
