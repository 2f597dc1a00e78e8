"""The warm runtime pool with real processes: template, forks, isolation, stop conditions.

One pool with the real preload (numpy, scipy, qiskit, Aer) serves most tests; a few
build small pools of their own (recycling, a QPU factory, a fork limit). Every wait
is bounded; whatever a test starts is stopped by pid.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qhpc.runtime import (
    Limits,
    ProgramContext,
    ProgramStatus,
    RuntimePool,
    WaitTimeout,
)
from qhpc.runtime.isolation import DEFAULT_ENV_ALLOW, resolve_run_as

ROOT = os.geteuid() == 0
#: whether programs really switch to an unprivileged uid here: not when that uid
#: cannot read the Python installation (e.g. pyenv under /root), see isolation.py
DROPS = resolve_run_as("auto") is not None
NO_DROP = "no unprivileged user can read this Python installation; programs run as the pool's user"
SECRET_NAME = "QHPC_TEST_BROKER_SECRET"
SECRET_VALUE = "s3cr3t-db-password"
WAIT = 30.0


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def gone(pid: int) -> bool:
    """No such process (a zombie still counts as present: it was not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return not Path(f"/proc/{pid}").exists()


def wait_until(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def pool() -> Iterator[RuntimePool]:
    # The secret is in the broker's environment before the template is spawned.
    os.environ[SECRET_NAME] = SECRET_VALUE
    try:
        with RuntimePool(size=2, recycle_after=1000, grace_s=0.3) as runtime:
            runtime.wait_ready(60)
            yield runtime
    finally:
        os.environ.pop(SECRET_NAME, None)


def test_returns_a_value_with_timings(pool: RuntimePool) -> None:
    outcome = pool.run(
        src("""
            import numpy as np
            def main(n):
                return {"sum": int(np.arange(n).sum()), "array": np.arange(3)}
        """),
        args={"n": 10},
        timeout=WAIT,
    )
    assert outcome.status is ProgramStatus.COMPLETED, outcome.error
    assert outcome.return_value == {"sum": 45, "array": [0, 1, 2]}
    assert outcome.exit_code == 0 and outcome.error is None
    assert {"start_s", "first_reply_s", "run_s", "termination_s", "total_s",
            "outcome_delivery_s"} <= set(outcome.timings)  # fmt: skip
    assert 0 < outcome.timings["start_s"] < 1.0
    # The program's return → its outcome in the pool: part of the run, before the reap.
    assert 0 <= outcome.timings["outcome_delivery_s"] <= outcome.timings["total_s"]
    assert outcome.resource_usage["cpu_s"] >= 0 and outcome.resource_usage["max_rss_mb"] > 0


def test_program_from_a_file_and_repr_of_odd_values(pool: RuntimePool, tmp_path: Path) -> None:
    path = tmp_path / "prog.py"
    path.write_text("def main():\n    return complex(1, 2)\n")
    outcome = pool.run(path, timeout=WAIT)
    assert outcome.status is ProgramStatus.COMPLETED
    assert outcome.return_is_repr and outcome.return_value == "(1+2j)"


def test_a_raise_is_failed_with_the_users_traceback_and_the_pool_keeps_serving(
    pool: RuntimePool,
) -> None:
    outcome = pool.run(
        src("""
            def helper():
                raise ValueError("bad angle")
            def main():
                helper()
        """),
        timeout=WAIT,
    )
    assert outcome.status is ProgramStatus.FAILED
    assert outcome.error is not None
    assert "ValueError: bad angle" in outcome.error
    assert 'line 2, in helper\n    raise ValueError("bad angle")' in outcome.error
    assert "qhpc/runtime" not in outcome.error  # only the user's frames
    assert pool.run("def main():\n    return 1\n", timeout=WAIT).return_value == 1


def test_missing_entry_point_and_syntax_error_are_clear(pool: RuntimePool) -> None:
    shape = pool.run("def helper():\n    pass\n", timeout=WAIT)
    assert shape.status is ProgramStatus.FAILED
    assert shape.error is not None and "neither main() nor execute(qi)" in shape.error
    syntax = pool.run("def main(:\n", timeout=WAIT)
    assert syntax.status is ProgramStatus.FAILED
    assert syntax.error is not None and "SyntaxError" in syntax.error


def test_a_loop_forever_is_stopped_at_the_timeout(pool: RuntimePool) -> None:
    started = time.monotonic()
    outcome = pool.run("def main():\n    while True:\n        pass\n", timeout=0.5)
    elapsed = time.monotonic() - started
    assert outcome.status is ProgramStatus.TIMEOUT
    assert outcome.error is not None and "wall-clock timeout of 0.5 s" in outcome.error
    assert 'File "<program>", line 2, in main' in outcome.error  # where it was stopped
    assert elapsed < 0.5 + pool.grace_s + 1.5
    assert gone(outcome.pid or 0)


def test_a_hog_does_not_stop_others_from_being_served(pool: RuntimePool) -> None:
    hog = pool.start_program("def main():\n    while True:\n        pass\n", timeout=WAIT)
    assert wait_until(lambda: hog.running, 10.0)
    assert pool.run("def main():\n    return 'served'\n", timeout=WAIT).return_value == "served"
    assert hog.cancel() and hog.wait(10.0).status is ProgramStatus.CANCELLED


def test_a_program_ignoring_sigterm_is_killed_after_the_grace_period(pool: RuntimePool) -> None:
    started = time.monotonic()
    outcome = pool.run(
        src("""
            import signal
            def main():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while True:
                    pass
        """),
        timeout=0.3,
    )
    assert outcome.status is ProgramStatus.TIMEOUT
    assert outcome.exit_code == -signal.SIGKILL
    assert time.monotonic() - started < 0.3 + pool.grace_s + 1.5


def test_unbounded_allocation_hits_the_memory_limit(pool: RuntimePool) -> None:
    outcome = pool.run(
        src("""
            import numpy as np
            def main():
                keep = []
                while True:
                    keep.append(np.ones(32 << 20, dtype=np.uint8))
        """),
        timeout=WAIT,
        limits=Limits(address_space_mb=2048),
    )
    assert outcome.status is ProgramStatus.LIMIT
    assert outcome.error is not None
    assert "memory limit" in outcome.error and "2048 MiB" in outcome.error
    assert pool.run("def main():\n    return 'still here'\n", timeout=WAIT).ok


def test_a_limit_the_program_may_not_have_fails_before_user_code(pool: RuntimePool) -> None:
    outcome = pool.run(
        "def main():\n    return 'ran'\n", timeout=WAIT, limits=Limits(open_files=1 << 30)
    )
    assert outcome.status is ProgramStatus.FAILED and outcome.return_value is None
    assert "runtime setup failed before user code ran" in (outcome.error or "")


def test_cpu_limit(pool: RuntimePool) -> None:
    outcome = pool.run(
        "def main():\n    while True:\n        pass\n",
        timeout=WAIT,
        limits=Limits(cpu_seconds=1),
    )
    assert outcome.status is ProgramStatus.LIMIT
    assert outcome.error is not None and "CPU-time limit of 1" in outcome.error


def test_a_segfault_is_killed_with_the_signal_name(pool: RuntimePool) -> None:
    outcome = pool.run("import ctypes\ndef main():\n    ctypes.string_at(0)\n", timeout=WAIT)
    assert outcome.status is ProgramStatus.KILLED
    assert outcome.error is not None and "SIGSEGV" in outcome.error
    assert outcome.exit_code == -signal.SIGSEGV


def test_malformed_frames_kill_the_program_not_the_pool(pool: RuntimePool) -> None:
    outcome = pool.run(
        src("""
            import os, time
            def main():
                os.write(3, b"\\xff" * 64)  # fd 3 is the control socket
                time.sleep(30)
        """),
        timeout=WAIT,
    )
    assert outcome.status is ProgramStatus.KILLED
    assert outcome.error is not None and "protocol violation" in outcome.error
    assert pool.run("def main():\n    return 2\n", timeout=WAIT).return_value == 2


def test_forked_grandchildren_do_not_outlive_the_program(pool: RuntimePool) -> None:
    outcome = pool.run(
        src("""
            import os, time
            def main():
                same_group = os.fork()
                if same_group == 0:
                    time.sleep(60)
                    os._exit(0)
                read, write = os.pipe()
                escaped = os.fork()
                if escaped == 0:  # a daemon: new session, then double fork
                    os.setsid()
                    if os.fork() == 0:
                        os.write(write, str(os.getpid()).encode())
                        time.sleep(60)
                    os._exit(0)
                os.waitpid(escaped, 0)
                return [same_group, int(os.read(read, 32))]
        """),
        timeout=WAIT,
    )
    assert outcome.status is ProgramStatus.COMPLETED, outcome.error
    same_group, daemon = outcome.return_value
    assert gone(same_group)  # killed with its process group before the outcome
    assert wait_until(lambda: gone(daemon), 5.0)  # swept from the template shortly after


def test_output_is_captured_and_streamed(pool: RuntimePool) -> None:
    chunks: list[tuple[str, str]] = []
    outcome = pool.run(
        src("""
            import sys
            def main():
                print("hello from the program")
                print("a warning", file=sys.stderr)
                sys.stdout.write("no newline")
        """),
        timeout=WAIT,
        on_output=lambda stream, text: chunks.append((stream, text)),
    )
    assert outcome.stdout == "hello from the program\nno newline"
    assert outcome.stderr == "a warning\n"
    assert "".join(t for s, t in chunks if s == "stdout") == outcome.stdout


def test_an_output_flood_is_capped_and_exits_are_reported(pool: RuntimePool) -> None:
    program = "import sys\ndef main():\n    for _ in range(300):\n        print('x' * 65536)\n"
    flood = pool.run(program, timeout=WAIT)
    assert flood.ok and len(flood.stdout) < pool.output_limit + 200
    assert flood.stdout.endswith("more bytes of stdout dropped]\n")
    clean_exit = pool.run("import sys\ndef main():\n    sys.exit(0)\n", timeout=WAIT)
    assert clean_exit.status is ProgramStatus.COMPLETED
    bad_exit = pool.run("import sys\ndef main():\n    sys.exit(3)\n", timeout=WAIT)
    assert bad_exit.status is ProgramStatus.FAILED and "sys.exit(3)" in (bad_exit.error or "")
    hard_exit = pool.run("import os\ndef main():\n    os._exit(4)\n", timeout=WAIT)
    assert hard_exit.status is ProgramStatus.KILLED and hard_exit.exit_code == 4
    assert "exited with code 4 without reporting an outcome" in (hard_exit.error or "")


def test_the_environment_is_scrubbed(pool: RuntimePool) -> None:
    outcome = pool.run(
        src("""
            import os
            def main(broker_pid):
                try:
                    environ = open(f"/proc/{broker_pid}/environ", "rb").read()
                except OSError as exc:
                    environ = type(exc).__name__
                return {"env": dict(os.environ), "broker_environ": str(environ)}
        """),
        args={"broker_pid": os.getpid()},
        context=ProgramContext(session_token="tok", env={"QHPC_EXTRA": "1"}),
        timeout=WAIT,
    )
    env = outcome.return_value["env"]
    assert SECRET_NAME not in env and SECRET_VALUE not in str(env)
    assert env["QHPC_SESSION"] == "tok" and env["QHPC_EXTRA"] == "1"
    allowed = {"HOME", "TMPDIR", "PWD", "QHPC_SESSION", "QHPC_EXTRA", "QHPC_PROGRAM_ID"}
    assert set(env) <= allowed | set(DEFAULT_ENV_ALLOW)
    if DROPS:  # as nobody it cannot read the broker's environment either
        assert outcome.return_value["broker_environ"] == "PermissionError"


def test_private_temp_dir_removed_afterwards(pool: RuntimePool) -> None:
    outcome = pool.run(
        src("""
            import os, tempfile
            def main():
                with open("scratch.txt", "w") as f:
                    f.write("x")
                return [os.getcwd(), os.environ["TMPDIR"], os.environ["HOME"],
                        tempfile.gettempdir(), oct(os.stat(".").st_mode & 0o777)]
        """),
        timeout=WAIT,
    )
    cwd, tmpdir, home, tempdir, mode = outcome.return_value
    assert cwd == tmpdir == home == tempdir and mode == "0o700"
    assert not Path(cwd).exists()


@pytest.mark.skipif(not DROPS, reason=NO_DROP)
def test_runs_as_an_unprivileged_user(pool: RuntimePool) -> None:
    outcome = pool.run(
        src("""
            import os
            def main():
                fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
                return [os.getuid(), os.geteuid(), os.getgroups(), fds]
        """),
        timeout=WAIT,
    )
    uid, euid, groups, fds = outcome.return_value
    assert pool.run_as is not None and uid == euid == pool.run_as.uid
    assert uid == pwd.getpwnam(pool.run_as.user).pw_uid and groups == []
    assert fds[:4] == [0, 1, 2, 3] and len(fds) == 5  # + the one listdir opened


def test_programs_do_not_share_module_state(pool: RuntimePool) -> None:
    first = pool.run(
        src("""
            import json, sys
            def main():
                json.leaked = "from user A"
                sys.modules["leaked_module"] = json
                return True
        """),
        timeout=WAIT,
    )
    second = pool.run(
        src("""
            import json, sys
            def main():
                return [hasattr(json, "leaked"), "leaked_module" in sys.modules]
        """),
        timeout=WAIT,
    )
    assert first.ok and second.return_value == [False, False]


def test_progress_reports_and_cancel(pool: RuntimePool) -> None:
    handle = pool.start_program(
        src("""
            import time
            from qhpc.runtime import current_program
            def main(report):
                for i in range(1, 18):
                    report(i, -1.137 + 0.0 * i, phase="vqe")
                current_program().report(17, -1.137)
                time.sleep(60)
        """),
        timeout=WAIT,
    )
    assert wait_until(lambda: handle.iterations == 17, 10.0)
    assert handle.progress is not None and handle.progress.value == -1.137
    assert handle.progress.describe() == "iteration 17, value -1.137"
    with pytest.raises(WaitTimeout):
        handle.wait(0.01)
    assert handle.cancel()
    outcome = handle.wait(10.0)
    assert outcome.status is ProgramStatus.CANCELLED and outcome.iterations == 17
    assert outcome.timings["termination_s"] < 1.0
    assert not handle.cancel()


def test_max_iterations(pool: RuntimePool) -> None:
    outcome = pool.run(
        "def main(report):\n    i = 0\n    while True:\n        i += 1\n        report(i)\n",
        timeout=WAIT,
        max_iterations=5,
    )
    assert outcome.status is ProgramStatus.LIMIT and outcome.iterations == 5
    assert outcome.error is not None and "maximum iterations (5)" in outcome.error


def test_the_qpu_is_unconfigured_by_default(pool: RuntimePool) -> None:
    outcome = pool.run("def execute(qi):\n    qi.execute_circuit('H q[0]', 10)\n", timeout=WAIT)
    assert outcome.status is ProgramStatus.FAILED
    assert outcome.error is not None and "QpuNotConfiguredError" in outcome.error


FAKE_QI = '''
class FakeQI:
    """A stand-in for Quantum Inspire's QuantumInterface: collects every result."""

    def __init__(self, token):
        self.token = token
        self.results = []

    def execute_circuit(self, circuit, shots):
        result = {"circuit": circuit, "counts": {"00": shots}, "token": self.token}
        self.results.append(result)
        return result


def make_qi(context):
    return FakeQI(context.session_token)
'''


def test_quantum_inspire_shape_with_an_injected_qi(tmp_path: Path) -> None:
    factory = tmp_path / "fake_qi.py"
    factory.write_text(FAKE_QI)
    program = src("""
        def execute(qi):
            for angle in range(3):
                qi.execute_circuit(f"version 3; qubit q; Rx({angle}) q", 100)

        def finalize(results):
            return {"calls": len(results), "token": results[0]["token"]}
    """)
    with RuntimePool(size=1, preload=(), qpu_factory=f"{factory}:make_qi") as small:
        outcome = small.run(program, context=ProgramContext(session_token="tok-1"), timeout=WAIT)
    assert outcome.status is ProgramStatus.COMPLETED, outcome.error
    assert outcome.return_value == {"calls": 3, "token": "tok-1"}


def test_the_template_is_recycled_after_n_programs() -> None:
    with RuntimePool(size=1, recycle_after=2, preload=()) as small:
        parents = []
        for _ in range(6):
            outcome = small.run("import os\ndef main():\n    return os.getppid()\n", timeout=WAIT)
            assert outcome.ok, outcome.error
            parents.append(outcome.return_value)
            time.sleep(0.1)
        stats = small.stats()
        templates = {p.popen.pid for p in small._templates}
    assert len(set(parents)) >= 2 and stats.templates_started >= 2
    for pid in set(parents) - templates:
        assert wait_until(lambda pid=pid: gone(pid), 5.0)  # retired templates exit


@pytest.mark.skipif(not DROPS, reason="RLIMIT_NPROC applies only under another uid; " + NO_DROP)
def test_forks_can_be_blocked_under_a_dedicated_uid() -> None:
    with RuntimePool(size=1, preload=(), limits=Limits(processes=1)) as small:
        outcome = small.run(
            src("""
                import os
                def main():
                    try:
                        pid = os.fork()
                    except OSError as exc:
                        return type(exc).__name__
                    if pid == 0:
                        os._exit(0)
                    return "forked"
            """),
            timeout=WAIT,
        )
    assert outcome.return_value == "BlockingIOError"


def test_closing_the_pool_stops_everything() -> None:
    small = RuntimePool(size=1, preload=())
    handle = small.start_program("import time\ndef main():\n    time.sleep(60)\n", timeout=WAIT)
    assert wait_until(lambda: handle.running, 10.0)
    template = small._current
    assert template is not None
    small.close()
    assert handle.wait(5.0).status is ProgramStatus.CANCELLED
    assert gone(handle.pid) and template.popen.poll() is not None


def test_warm_start_is_much_faster_than_a_cold_interpreter(pool: RuntimePool) -> None:
    code = "import numpy, scipy, qiskit, qiskit_aer, sys; sys.stdout.write('ready\\n')"
    started = time.monotonic()
    cold = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    cold_s = time.monotonic() - started
    assert cold.stdout == "ready\n"
    time.sleep(0.1)  # let the spares refill
    warm_s = min(
        pool.run("def main():\n    return 0\n", timeout=WAIT).timings["start_s"] for _ in range(3)
    )
    assert warm_s * 5 < cold_s, (warm_s, cold_s)


# -- the template's warm-up -------------------------------------------------------------------


def test_a_failing_warm_up_is_logged_and_the_template_still_starts(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken_warm_up.py"
    broken.write_text("def warm():\n    raise RuntimeError('warm-up exploded')\n")
    with RuntimePool(size=1, preload=(), warmup=f"{broken}:warm") as small:
        outcome = small.run("def main():\n    return 42\n", timeout=WAIT)
    assert outcome.ok and outcome.return_value == 42, outcome.error
    err = capfd.readouterr().err
    assert "warm-up" in err and "RuntimeError: warm-up exploded" in err


def test_warm_up_choice() -> None:
    from qhpc.runtime.pool import warm_up_spec
    from qhpc.runtime.warmup import DEFAULT_WARM_UP

    assert warm_up_spec("auto", ("numpy", "qiskit")) == DEFAULT_WARM_UP
    assert warm_up_spec("auto", ()) is None  # a bare pool is not made to import qiskit
    assert warm_up_spec(True, ()) == DEFAULT_WARM_UP
    assert warm_up_spec(False, ("qiskit",)) is None
    assert warm_up_spec("pkg.mod:fn", ()) == "pkg.mod:fn"
    with pytest.raises(ValueError, match="warmup must be"):
        warm_up_spec(lambda: None, ())


def test_the_default_warm_up_leaves_no_thread_and_no_state_in_programs(pool: RuntimePool) -> None:
    assert pool.warmup is not None  # the module's pool preloads qiskit: it is warmed
    # The template may fork only while single-threaded in the ways the preload is
    # (BLAS pools with fork handlers): the warm-up must not add a thread pool (Rayon, OpenMP).
    template = pool._current
    assert template is not None and template.pid
    threads = len(os.listdir(f"/proc/{template.pid}/task"))
    with RuntimePool(size=1, warmup=False) as cold:  # the same preload, not warmed
        cold.wait_ready(60)
        assert cold._current is not None
        reference = len(os.listdir(f"/proc/{cold._current.pid}/task"))
    assert threads == reference
    outcome = pool.run(
        src("""
            import gc, os, sys
            def main():
                gc.unfreeze()  # the template's frozen heap too
                gc.collect()
                kinds = {type(o).__name__ for o in gc.get_objects()}
                from qhpc.program.registry import registered_plugins
                return {
                    "objects": sorted(kinds & {"_StatevectorResource", "Stack", "ScipyMinimize",
                                               "Transpile", "LocalQPU", "StackRequest"}),
                    "names": sorted(n for n in globals() if not n.startswith("__")),
                    "env": os.environ.get("QISKIT_IN_PARALLEL"),
                    "plugins": sorted(registered_plugins()),
                }
        """),
        timeout=WAIT,
    )
    assert outcome.ok, outcome.error
    found = outcome.return_value
    assert found["objects"] == [] and found["names"] == ["gc", "main", "os", "sys"]
    assert found["env"] is None
    assert found["plugins"] == [
        "ObservableMeasurement", "ReadoutMitigation", "ScipyMinimize", "Transpile"
    ]  # fmt: skip


def test_a_warmed_program_runs_a_stack_and_the_transpiler_in_parallel_safely(
    pool: RuntimePool,
) -> None:
    # Qiskit's Rust passes may use their thread pool in a program: the template did not
    # start one, so the program's own starts fresh (a pool inherited without workers
    # would hang here).
    outcome = pool.run(
        src("""
            from qiskit.circuit.library import QFT
            from qiskit.transpiler import CouplingMap, generate_preset_pass_manager
            def main():
                manager = generate_preset_pass_manager(
                    optimization_level=2, coupling_map=CouplingMap.from_line(12),
                    basis_gates=["cx", "rz", "sx", "x"], seed_transpiler=3)
                return manager.run(QFT(12).decompose()).num_qubits
        """),
        timeout=WAIT,
    )
    assert outcome.ok and outcome.return_value == 12, outcome.error
