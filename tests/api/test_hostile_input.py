"""Hostile circuit input: nothing opens a file, every decoder stays within its budget.

Three layers, each tested on its own: the in-process loaders (include scan, the
operation/depth/parameter budget), the decoding workers (time and memory bounds,
a worker killed or crashed is replaced), and a real ``qhpc serve`` process on SQLite
and PostgreSQL, which answers every case of the corpus with a clear 4xx, keeps
answering /v1/health, stays within a memory bound and still runs another tenant's
job. Grammar-aware fuzzing (hypothesis) drives the three text formats through the
workers: every example ends as circuits or a typed error, within the time budget.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit.circuit import QuantumCircuit

from helpers import free_port, postgres_schema_url, stop_process, wait_healthy
from qhpc.api.fastpath import FastPathServer
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import (
    CircuitParseError,
    DecodeLimits,
    DecodePool,
    LimitExceeded,
    PayloadError,
    ResourceRegistry,
    ResourceSpec,
    SamplerTask,
    encode_payload,
    load_circuits,
)
from qhpc.session import FastPathClient, FastPathError
from qhpc.store import Store

SECRET = "qhpc_secretvaluethatmustneverleak"
QASM2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
QASM3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def gate_bomb(levels: int) -> str:
    """1 qubit, ``levels`` gate definitions each calling the previous one twice."""
    lines = [QASM2, "qreg q[1];\n", "gate g0 a { h a; }\n"]
    lines += [f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}\n" for i in range(1, levels + 1)]
    lines.append(f"g{levels} q[0];\n")
    return "".join(lines)


def gate_chain(levels: int) -> str:
    """``levels`` gate definitions each calling the previous one once (deep, not wide)."""
    lines = [QASM2, "qreg q[1];\n", "gate g0 a { h a; }\n"]
    lines += [f"gate g{i} a {{ g{i - 1} a; }}\n" for i in range(1, levels + 1)]
    lines.append(f"g{levels} q[0];\n")
    return "".join(lines)


# -- the in-process loaders -------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(SECRET + "\n")
    return path


@pytest.mark.parametrize(
    "template",
    [
        QASM2 + 'include "{path}";\nqreg q[1];\n',
        'OPENQASM 2.0;\ninclude "{path}";\nqreg q[1];\n',
        QASM3 + 'include "{path}";\nqubit[1] q;\n',
        QASM3 + "include '{path}';\nqubit[1] q;\n",
        'OPENQASM 2.0;\ninclude /* gap */ "{path}";\nqreg q[1];\n',
        'OPENQASM 2.0;\ninclude // gap\n "{path}";\nqreg q[1];\n',
        'OPENQASM 2.0;\n// "//" \ninclude "qelib1.inc"; include "{path}";\nqreg q[1];\n',
        'version 3.0\ninclude "{path}"\nqubit[1] q\n',
    ],
)
def test_only_the_builtin_gate_library_may_be_included(template: str, secret_file: Path) -> None:
    for path in (str(secret_file), "../" * 12 + str(secret_file)[1:], "qelib2.inc"):
        source = template.format(path=path)
        with pytest.raises(CircuitParseError, match="is refused: ") as caught:
            load_circuits(source)
        assert SECRET not in str(caught.value)
        assert caught.value.line is not None and caught.value.column is not None


def test_allowed_includes_still_parse() -> None:
    assert load_circuits(QASM2 + "qreg q[1];\nh q[0];\n")[0].count_ops() == {"h": 1}
    assert load_circuits(QASM3 + "qubit[1] q;\nh q[0];\n")[0].count_ops() == {"h": 1}


def test_a_nested_gate_bomb_is_refused_in_milliseconds() -> None:
    began = time.monotonic()
    with pytest.raises(LimitExceeded, match="max_operations = 1000000") as caught:
        load_circuits(gate_bomb(40))
    assert caught.value.limit == "max_operations"
    assert time.monotonic() - began < 1.0
    assert len(load_circuits(gate_bomb(12))[0].data) == 1  # 4096 operations: fine


def test_deep_definitions_and_loops_are_measured() -> None:
    with pytest.raises(LimitExceeded, match="max_depth"):
        load_circuits(gate_chain(100))
    load_circuits(gate_chain(20))
    loop = QASM3 + "qubit[1] q;\nfor int i in [0:100000000] { x q[0]; }\n"
    with pytest.raises(LimitExceeded, match="max_operations"):
        load_circuits(loop)
    small = DecodeLimits(max_operations=100)
    with pytest.raises(LimitExceeded, match="max_operations = 100"):
        load_circuits(QASM3 + "qubit[1] q;\nfor int i in [0:200] { x q[0]; }\n", limits=small)
    load_circuits(QASM3 + "qubit[1] q;\nfor int i in [0:50] { x q[0]; }\n", limits=small)


@pytest.mark.parametrize(
    "source",
    [
        QASM2 + "qreg q[1];\nrx(1e309) q[0];\n",
        QASM2 + "qreg q[1];\nrx(1e308*10) q[0];\n",
        QASM2 + "qreg q[1];\ngate r(t) a { rx(t*1e308) a; }\nr(10) q[0];\n",
        QASM3 + "qubit[1] q;\nrx(1e309) q[0];\n",
        QASM3 + "qubit[1] q;\nrx(1e308*10) q[0];\n",
    ],
)
def test_parameters_infinite_by_expression_are_refused(source: str) -> None:
    with pytest.raises(PayloadError, match="not a finite number"):
        load_circuits(source)


def test_register_declarations_are_bounded_before_parsing() -> None:
    with pytest.raises(LimitExceeded, match="max_register_bits = 4096"):
        load_circuits(QASM2 + "qreg q[100000000];\n")


# -- the decoding workers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    pool = DecodePool(DecodeLimits(max_seconds=4.0, max_memory_bytes=384 * 1024 * 1024))
    pool.start()
    yield pool
    pool.close()


def test_a_worker_never_opens_an_included_path(pool: DecodePool, tmp_path: Path) -> None:
    # Opening a FIFO for reading blocks until a writer comes: a decoder that opened it
    # would hit the time limit instead of refusing at once.
    fifo = tmp_path / "pipe.inc"
    os.mkfifo(fifo)
    began = time.monotonic()
    with pytest.raises(CircuitParseError, match="is refused"):
        pool.circuits([QASM2 + f'include "{fifo}";\nqreg q[1];\n'])
    assert time.monotonic() - began < 2.0


def test_slow_input_is_stopped_at_the_time_limit_and_the_pool_recovers(pool: DecodePool) -> None:
    slow = QASM3 + "qubit[2] q;\n" + "cx q[0], q[1];\n" * 250_000  # ~90 s of ANTLR
    began = time.monotonic()
    with pytest.raises(LimitExceeded) as caught:
        pool.circuits([slow])
    assert caught.value.limit in ("max_seconds", "max_memory_bytes")
    assert time.monotonic() - began < 4.0 + 2.0
    assert pool.circuits([QASM2 + "qreg q[1];\nh q[0];\n"])[0][0].count_ops() == {"h": 1}


def test_memory_hungry_input_is_stopped_at_the_memory_limit(pool: DecodePool) -> None:
    hungry = "version 3.0\nqubit[2] q\n" + "CNOT q[0], q[1]\n" * 60_000  # ~1 GB in libqasm
    with pytest.raises((LimitExceeded, CircuitParseError)) as caught:
        pool.circuits([hungry])
    if isinstance(caught.value, CircuitParseError):  # libqasm reports its own bad_alloc
        assert "bad_alloc" in caught.value.detail
    assert pool.circuits([QASM2 + "qreg q[1];\nx q[0];\n"])[0][0].count_ops() == {"x": 1}


def test_a_killed_worker_is_replaced(pool: DecodePool) -> None:
    pool.start()
    for worker in list(pool._live):
        worker.process.kill()
        worker.process.wait()
    assert pool.circuits([QASM2 + "qreg q[1];\nh q[0];\n"])[0][0].count_ops() == {"h": 1}


def test_qpy_garbage_and_payload_garbage_are_typed_errors(pool: DecodePool) -> None:
    with pytest.raises((CircuitParseError, PayloadError)):
        pool.circuits([b"QISKIT\x0c" + b"\xff" * 200])
    with pytest.raises(PayloadError):
        pool.check_payloads([b"\x81\xa1v\x01"])
    with pytest.raises(PayloadError):
        pool.check_qpy(b"QISKIT\x0c" + b"\xff" * 200)


# -- grammar-aware fuzzing through the workers ------------------------------------------

_Q = st.sampled_from(["q[0]", "q[1]", "q"])
_ANGLE = st.one_of(
    st.sampled_from(["pi", "pi/2", "-pi", "1e309", "1e308*10", "0", "nan", "inf", "(((1)))"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
_QASM2_STATEMENT = st.one_of(
    st.builds(lambda g, q: f"{g} {q};", st.sampled_from(["h", "x", "s", "t", "z", "id"]), _Q),
    st.builds(lambda a, q: f"rx({a}) {q};", _ANGLE, _Q),
    st.just("cx q[0], q[1];"),
    st.just("measure q -> c;"),
    st.just("barrier q;"),
    st.just("reset q[0];"),
    st.builds(lambda n: f"qreg r{n}[{n}];", st.integers(0, 10**7)),
    st.sampled_from(['include "qelib1.inc";', 'include "/etc/passwd";', "include ;", "gate"]),
    st.builds(lambda i: f"gate g{i} a {{ h a; }}\ng{i} q[0];", st.integers(0, 3)),
    st.text(alphabet="{}();[]\"'/*-+ \nqh0", max_size=12),
)
_QASM3_STATEMENT = st.one_of(
    st.builds(lambda g, q: f"{g} {q};", st.sampled_from(["h", "x", "s", "t", "z"]), _Q),
    st.builds(lambda a, q: f"rx({a}) {q};", _ANGLE, _Q),
    st.just("cx q[0], q[1];"),
    st.builds(lambda n: f"for int i in [0:{n}] {{ x q[0]; }}", st.integers(0, 10**10)),
    st.just("bit[2] c;\nc = measure q;"),
    st.sampled_from(['include "stdgates.inc";', "include '/etc/passwd';", "def f() {}"]),
    st.builds(lambda n: f"qubit[{n}] r;", st.integers(0, 10**7)),
    st.text(alphabet="{}();[]\"'/*-+ \nqh0", max_size=12),
)
_CQASM_STATEMENT = st.one_of(
    st.builds(lambda g, q: f"{g} {q}", st.sampled_from(["H", "X", "S", "T", "Z"]), _Q),
    st.builds(lambda a, q: f"Rx({a}) {q}", _ANGLE, _Q),
    st.just("CNOT q[0], q[1]"),
    st.just("b = measure q"),
    st.sampled_from(['include "/etc/passwd"', "bit[2] b", "qubit[100000000] r"]),
    st.text(alphabet="{}();[]\"'/*-+ \nqH0", max_size=12),
)
_PROGRAMS = st.one_of(
    st.lists(_QASM2_STATEMENT, max_size=12).map(
        lambda body: (
            'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n' + "\n".join(body)
        )
    ),
    st.lists(_QASM3_STATEMENT, max_size=12).map(
        lambda body: 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n' + "\n".join(body)
    ),
    st.lists(_CQASM_STATEMENT, max_size=12).map(
        lambda body: "version 3.0\nqubit[2] q\nbit[2] b\n" + "\n".join(body)
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PROGRAMS)
def test_fuzzed_sources_end_as_circuits_or_typed_errors_in_bounded_time(
    pool: DecodePool, source: str
) -> None:
    began = time.monotonic()
    try:
        circuits = pool.circuits([source])
    except (CircuitParseError, PayloadError, LimitExceeded) as exc:
        assert "root:" not in str(exc)  # nothing of /etc/passwd
    else:
        assert circuits and all(c.num_qubits >= 1 for c in circuits[0])
    assert time.monotonic() - began < pool.limits.max_seconds + 2.0


# -- the corpus against a real qhpc serve -----------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "qhpc.db")
    else:
        yield from postgres_schema_url()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def corpus(secret_path: Path) -> dict[str, tuple[str, int, str]]:
    """name → (circuit source, expected status, a fragment the problem's detail names)."""
    return {
        "qasm2 include of the admin token": (
            QASM2 + f'include "{secret_path}";\nqreg q[1];\n',
            422,
            "is refused",
        ),
        "qasm3 include of the admin token": (
            QASM3 + f"include '{secret_path}';\nqubit[1] q;\n",
            422,
            "is refused",
        ),
        "nested gate bomb": (gate_bomb(40), 413, "max_operations"),
        "deep gate chain": (gate_chain(200), 413, "max_depth"),
        "loop bomb": (
            QASM3 + "qubit[1] q;\nfor int i in [0:1000000000] { x q[0]; }\n",
            413,
            "max_operations",
        ),
        "infinite by expression": (QASM2 + "qreg q[1];\nrx(1e308*10) q[0];\n", 422, "finite"),
        "huge register": (QASM2 + "qreg q[100000000];\n", 413, "max_register_bits"),
        "slow OpenQASM 3": (QASM3 + "qubit[2] q;\n" + "cx q[0], q[1];\n" * 200_000, 413, "limit"),
        "hungry cQASM": ("version 3.0\nqubit[2] q\n" + "CNOT q[0], q[1]\n" * 60_000, 0, ""),
        "deeply nested expression": (
            QASM2 + "qreg q[1];\nrx(" + "(" * 50_000 + "1" + ")" * 50_000 + ") q[0];\n",
            0,
            "",
        ),
        "QPY garbage": ("UUlTS0lU" + "A" * 400, 422, "QPY"),
    }


@pytest.mark.slow
def test_the_corpus_against_a_real_broker(tmp_path: Path, db: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "QHPC_CONFIG"}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    broker = subprocess.Popen(
        [
            sys.executable, "-m", "qhpc.cli", "serve", "--db", db, "--port", str(port),
            "--fastpath", f"tcp://127.0.0.1:{free_port()}", "--policy", "fifo",
            "--admin-token-file", str(tmp_path / "admin.token"),
            "--decode-limit", "max_seconds=3", "--decode-limit", "max_memory_bytes=402653184",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        wait_healthy(url, broker)
        admin_file = tmp_path / "admin.token"
        admin = admin_file.read_text().strip()

        def token(subject: str) -> str:
            answer = httpx.post(
                url + "/v1/tokens",
                json={"role": "user", "subject": subject, "account": subject},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert answer.status_code == 201, answer.text
            return str(answer.json()["token"])

        mallory = {"Authorization": f"Bearer {token('mallory')}"}
        bob = {"Authorization": f"Bearer {token('bob')}"}
        start_rss = _rss_mb(broker.pid)
        peak_rss = start_rss
        with httpx.Client(base_url=url, timeout=60) as http:
            for name, (source, status, fragment) in corpus(admin_file).items():
                began = time.monotonic()
                answer = http.post(
                    "/v1/jobs",
                    json={"resource": "aer", "circuits": [source], "shots": 10},
                    headers=mallory,
                )
                took = time.monotonic() - began
                assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text)
                if status:
                    assert answer.status_code == status, (name, answer.text)
                detail = answer.json()["detail"]
                assert fragment in detail, (name, detail)
                assert admin not in answer.text and SECRET not in answer.text, name
                assert took < 3 + 5, (name, took)
                print(f"{name}: {answer.status_code} in {took * 1000:.0f} ms")
                assert http.get("/v1/health").status_code == 200, name
                peak_rss = max(peak_rss, _rss_mb(broker.pid))
            bell = QASM2 + "qreg q[2];\ncreg c[2];\nh q[0];\ncx q[0], q[1];\nmeasure q -> c;\n"
            job = http.post(
                "/v1/jobs", json={"resource": "aer", "circuits": [bell], "shots": 100}, headers=bob
            )
            assert job.status_code == 201, job.text
            (task,) = job.json()["tasks"]
            done = http.get(f"/v1/tasks/{task['task_id']}", params={"wait": 30}, headers=bob)
            assert done.json()["state"] == "completed"
        # The broker's own memory: decoding happens in the workers, not here.
        assert peak_rss - start_rss < 150, (start_rss, peak_rss)
        print(f"broker RSS {start_rss:.0f} MB → peak {peak_rss:.0f} MB over the corpus")
    finally:
        stop_process(broker, timeout=30)


# -- the fast path and the run-time limit -----------------------------------------------


def _loop_bomb() -> QuantumCircuit:
    circuit = QuantumCircuit(1, 1)
    with circuit.for_loop(range(10**9)):
        circuit.x(0)
    circuit.measure(0, 0)
    return circuit


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    registry = ResourceRegistry(
        [
            ResourceSpec("aer", "aer", {"seed": 1}),
            ResourceSpec("slow", "emulator", {"max_task_seconds": 0.5, "seed": 1}),
        ]
    )
    with Store.open(tmp_path / "hostile.db") as store:
        service = Broker(store, registry, BrokerConfig(policy="fifo"))
        service.start()
        yield service
        service.stop()
    registry.close()


def test_the_fast_path_refuses_bombs_and_keeps_serving(
    broker: Broker, bell: QuantumCircuit
) -> None:
    server = FastPathServer(broker).start()
    try:
        _, token = broker.open_session(
            user="u", account="a", resource="aer", deadline=time.time() + 60
        )
        with FastPathClient(server.endpoint, token, timeout=30) as client:
            with pytest.raises(FastPathError) as bomb:
                client.run_encoded(encode_payload(SamplerTask((_loop_bomb(),), shots=1)))
            assert bomb.value.status == 413
            assert "max_operations" in str(bomb.value)
            infinite = QuantumCircuit(1, 1)
            infinite.rx(float("inf"), 0)
            infinite.measure(0, 0)
            with pytest.raises(FastPathError) as bad:
                client.run_encoded(encode_payload(SamplerTask((infinite,), shots=1)))
            assert bad.value.status == 422
            assert client.run(SamplerTask((bell,), shots=8)).kind == "sampler"
    finally:
        server.stop()


def test_a_task_past_the_resources_run_time_limit_fails_and_the_next_one_runs(
    broker: Broker, bell: QuantumCircuit
) -> None:
    # The emulator spends modelled device time: 100,000 shots take 20 s, far past 0.5 s.
    long = broker.submit(
        user="u", account="a", resource="slow",
        payloads=[SamplerTask((bell,), shots=100_000)],
    )  # fmt: skip
    short = broker.submit(
        user="v", account="b", resource="slow", payloads=[SamplerTask((bell,), shots=10)]
    )
    (long_task,) = broker.tasks_of_job(long.job_id)
    (short_task,) = broker.tasks_of_job(short.job_id)
    began = time.monotonic()
    ended = broker.wait_task(long_task.task_id, timeout=30)
    assert ended.state == "failed"
    assert "max_task_seconds = 0.5" in (ended.error or "")
    assert time.monotonic() - began < 10
    assert broker.wait_task(short_task.task_id, timeout=30).state == "completed"


def test_a_stack_batch_bomb_is_refused_at_submission(tmp_path: Path) -> None:
    """The batch's QPY goes through the broker's decoding workers under the broker's own
    limits (50 operations here: the in-process default of 10**6 would let it pass)."""
    from qhpc.program import Batch, Job, LocalQPU, Transpile
    from qhpc.program.server import make_request
    from qhpc.resources import AerResource

    looped = QuantumCircuit(1, 1)
    with looped.for_loop(range(100)):
        looped.x(0)
    looped.measure(0, 0)
    local = AerResource("aer", seed=1)
    try:
        request = make_request(Transpile() | LocalQPU(local), Batch([Job.sample(looped, shots=10)]))
    finally:
        local.close()
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 1})])
    config = BrokerConfig(policy="fifo", decode_limits=DecodeLimits(max_operations=50))
    with Store.open(tmp_path / "stack.db") as store:
        service = Broker(store, registry, config)
        service.start()
        try:
            with pytest.raises(LimitExceeded, match="max_operations = 50"):
                service.programs.submit(
                    user="u", account="a", resource="aer", entry_point="qhpc.stack", args=request
                )
            assert store.list_jobs(limit=100) == []
        finally:
            service.stop()
    registry.close()
