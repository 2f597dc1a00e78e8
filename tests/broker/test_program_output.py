"""Program output: bounded per stream, written to the store while the program runs.

Units first (ProgramOutput's cap and marker, the writer's batching, against a real
SQLite store), then an in-process broker running real programs in its runtime pool.
The kill -9 case is in tests/broker/test_crash.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qhpc.broker import MIN_OUTPUT_LIMIT, Broker, BrokerConfig
from qhpc.broker.output import FLUSH_BYTES, OutputWriter, ProgramOutput, read_logs
from qhpc.resources import ResourceRegistry, ResourceSpec
from qhpc.store import JobRecord, OutputPiece, ProgramRecord, Store

LIMIT = 4096


def marker(stream: str, kept: int) -> bytes:
    return f"\n[qhpc: {stream} truncated after {kept} bytes]\n".encode()


def test_a_stream_keeps_its_head_and_a_marker_within_the_limit() -> None:
    output = ProgramOutput("j", LIMIT)
    line = "ünïcode line\n"  # multi-byte characters: the cut must not split one
    for _ in range(1000):
        output.write("stdout", line)
    output.write("stderr", "small\n")
    data, end = output.read("stdout", 0)
    assert end == len(data) <= LIMIT
    kept = data.rindex(b"\n[qhpc: ")
    assert data[kept:] == marker("stdout", kept)
    text = data[:kept].decode("utf-8")  # strict: no character was cut in two
    assert line.startswith(text.split("\n")[-1])  # the head, in order
    assert text.startswith(line * 10)
    output.write("stdout", "after the marker\n")  # dropped
    assert output.read("stdout", 0) == (data, end)
    assert output.read("stderr", 0) == (b"small\n", 6)
    assert output.read("stdout", end - 5) == (data[-5:], end)


def test_output_under_the_limit_is_kept_whole() -> None:
    output = ProgramOutput("j", LIMIT)
    output.write("stdout", "x" * (LIMIT - 100))
    data, _ = output.read("stdout", 0)
    assert data == b"x" * (LIMIT - 100)
    with pytest.raises(ValueError, match="at least"):
        ProgramOutput("j", MIN_OUTPUT_LIMIT - 1)


def test_logs_decode_from_byte_offsets() -> None:
    output = ProgramOutput("j", LIMIT)
    output.write("stdout", "é1\n")
    output.write("stdout", "é2\n")
    first = read_logs(output.read, 0, 0, final=False)
    assert (first.stdout, first.stdout_offset, first.stderr_offset) == ("é1\né2\n", 8, 0)
    assert read_logs(output.read, 4, 0, final=True).stdout == "é2\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "output.db") as opened:
        yield opened


def stored_program(store: Store, job_id: str) -> None:
    job = JobRecord(
        job_id=job_id, user="u", account="a", centre=None, resource="aer", kind="hybrid",
        priority=0, state="running", created_at=1.0, finished_at=None, session_id=None,
        name="p", task_count=0,
    )  # fmt: skip
    program = ProgramRecord(
        job_id=job_id, source="", entry_point=None, entry="main", args="{}", timeout=60.0,
        max_iterations=None, status="running",
    )  # fmt: skip
    store.create_program(job, program)


class CountingStore:
    """A store whose append_output calls are counted (everything else passes through)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[list[OutputPiece]] = []

    def append_output(self, pieces: list[OutputPiece]) -> None:
        self.calls.append(list(pieces))
        self.store.append_output(pieces)


def test_the_writer_batches_prints_and_writes_them_within_its_interval(store: Store) -> None:
    stored_program(store, "a")
    stored_program(store, "b")
    counting = CountingStore(store)
    writer = OutputWriter(counting, interval=0.2)  # type: ignore[arg-type]
    outputs = [ProgramOutput("a", LIMIT), ProgramOutput("b", LIMIT)]
    for output in outputs:
        writer.add(output)
    try:
        for i in range(200):
            for output in outputs:
                output.write("stdout", f"line {i}\n")
        expected = "".join(f"line {i}\n" for i in range(200)).encode()
        deadline = time.monotonic() + 5
        while store.read_output("b", "stdout")[1] < len(expected):
            assert time.monotonic() < deadline, "not written within the interval"
            time.sleep(0.05)
        assert store.read_output("a", "stdout") == (expected, len(expected))
        # 400 prints, a handful of transactions, both programs in the same ones
        assert 1 <= len(counting.calls) <= 3
        assert {p.job_id for p in counting.calls[0]} == {"a", "b"}
        outputs[0].write("stderr", "last words\n")
        assert writer.finish(outputs[0])
        assert store.read_output("a", "stderr") == (b"last words\n", 11)
    finally:
        writer.close()


def test_the_writer_is_nudged_past_flush_bytes(store: Store) -> None:
    stored_program(store, "big")
    writer = OutputWriter(store, interval=60.0)  # only a nudge writes before a minute
    output = ProgramOutput("big", 1 << 20)
    writer.add(output)
    try:
        pending = output.write("stdout", "y" * FLUSH_BYTES)
        assert pending >= FLUSH_BYTES
        writer.nudge()
        deadline = time.monotonic() + 5
        while store.read_output("big", "stdout")[1] < FLUSH_BYTES:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        writer.close()


def test_a_failing_store_keeps_the_output_for_the_next_round(store: Store) -> None:
    stored_program(store, "f")
    failures = threading.Event()

    class Flaky(CountingStore):
        def append_output(self, pieces: list[OutputPiece]) -> None:
            if not failures.is_set():
                failures.set()
                raise OSError("disk full (test)")
            super().append_output(pieces)

    writer = OutputWriter(Flaky(store), interval=3600.0)  # type: ignore[arg-type]
    output = ProgramOutput("f", LIMIT)
    writer.add(output)
    output.write("stdout", "kept\n")
    assert not writer.finish(output)
    assert failures.is_set() and store.read_output("f", "stdout") == (b"", 0)
    assert writer.finish(output)  # nothing was lost in memory
    assert store.read_output("f", "stdout") == (b"kept\n", 5)
    writer.close()


# -- a broker running real programs --------------------------------------------------------

FLOOD = """
def main():
    for i in range(2000):
        print("ünïcode line", i)
    return "done"
"""
PRINTS_THEN_SLEEPS = """
import time
def main():
    print("first line", flush=True)
    time.sleep(30)
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 5})])
    config = BrokerConfig(policy="fifo", runtime_pool_size=1, program_output_limit=LIMIT)
    with Store.open(tmp_path_factory.mktemp("programs") / "broker.db") as opened:
        served = Broker(opened, registry, config)
        served.start()
        try:
            yield served
        finally:
            served.stop()
    registry.close()


def wait_final(broker: Broker, job_id: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while broker.get_job(job_id).state not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, broker.programs.info(job_id).record
        time.sleep(0.05)


def test_a_program_printing_past_the_cap_gets_the_marker_and_the_store_at_most_the_cap(
    broker: Broker,
) -> None:
    job = broker.programs.submit(user="u", account="a", resource="aer", source=FLOOD)
    wait_final(broker, job.job_id)
    assert broker.programs.info(job.job_id).record.status == "completed"
    data, end = broker.store.read_output(job.job_id, "stdout")
    printed = "".join(f"ünïcode line {i}\n" for i in range(2000)).encode()
    assert end == len(data) <= LIMIT < len(printed)
    kept = data.rindex(b"\n[qhpc: ")
    assert data[:kept] == printed[:kept]
    assert data[kept:] == marker("stdout", kept)
    logs = broker.programs.logs(job.job_id)
    assert logs.final and logs.stdout.encode() == data and logs.stdout_offset == end
    tail = broker.programs.logs(job.job_id, stdout_offset=kept)
    assert tail.stdout.encode() == marker("stdout", kept)


def test_output_is_in_the_store_while_the_program_runs(broker: Broker) -> None:
    job = broker.programs.submit(
        user="u", account="a", resource="aer", source=PRINTS_THEN_SLEEPS, timeout=60
    )
    try:
        deadline = time.monotonic() + 60
        while broker.store.read_output(job.job_id, "stdout")[0] != b"first line\n":
            assert time.monotonic() < deadline, "the printed line never reached the store"
            assert broker.get_job(job.job_id).state in ("queued", "running")
            time.sleep(0.05)
        live = broker.programs.logs(job.job_id)
        assert (live.stdout, live.stdout_offset, live.final) == ("first line\n", 11, False)
    finally:
        broker.programs.cancel(job.job_id)
    wait_final(broker, job.job_id)
    after = broker.programs.logs(job.job_id, stdout_offset=6)
    assert (after.stdout, after.stdout_offset, after.final) == ("line\n", 11, True)
