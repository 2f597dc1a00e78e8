"""Helpers shared by several test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from qhpc.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: VQE tolerances for H2 (test_program.py's docstring gives the reasoning): chemical
#: accuracy with exact expectation values, and the bound for 20 000 shots per group
CHEMICAL_ACCURACY_MHA = 1.6
SHOTS_TOLERANCE_MHA = 10.0


def example(name: str, prefix: str = "example") -> ModuleType:
    """examples/NAME.py, imported and registered in sys.modules as ``PREFIX_NAME``."""
    spec = importlib.util.spec_from_file_location(f"{prefix}_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``qhpc ARGS`` in-process: exit code, stdout, stderr."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def start_serve(
    tmp_path: Path,
    port: int,
    *extra: str,
    db: Path | str,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    stderr: int | IO[bytes] | None = subprocess.STDOUT,
) -> subprocess.Popen[bytes]:
    """``qhpc serve`` as a real process on 127.0.0.1 (fifo policy, admin token in a file);
    its log (stderr) goes with ``stdout`` unless ``stderr`` says otherwise."""
    env = {k: v for k, v in os.environ.items() if k != "QHPC_CONFIG"}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    return subprocess.Popen(
        [
            sys.executable, "-m", "qhpc.cli", "serve", "--db", str(db),
            "--port", str(port), "--fastpath", f"tcp://127.0.0.1:{free_port()}",
            "--admin-token-file", str(tmp_path / "admin.token"), "--policy", "fifo", *extra,
        ],
        stdout=stdout, stderr=stderr, env=env,
    )  # fmt: skip


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until ``url`` answers /v1/health; fails with the process's output if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"broker did not come up:\n{output}")
        time.sleep(0.1)


def postgres_schema_url(prefix: str = "qhpc_helper") -> Iterator[str]:
    """A URL whose connections see only a fresh, uniquely named schema; dropped after.

    Skips without QHPC_TEST_POSTGRES_URL, except under CI=true, where it fails.
    """
    pg_url = os.environ.get("QHPC_TEST_POSTGRES_URL", "")
    if not pg_url:
        message = (
            "QHPC_TEST_POSTGRES_URL is unset: run `make unit` or "
            "`QHPC_TEST_POSTGRES_URL=$(scripts/postgres.sh start) pytest`"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    url = make_url(pg_url).update_query_dict({"options": f"-c search_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Stop a process this test started: SIGTERM, then SIGKILL if it has not ended in
    ``timeout`` seconds; always reaped."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LogCapture:
    """qhpc's records as the JSON format writes them (a handler on the ``qhpc`` logger)."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [r for r in parsed if event is None or r.get("event") == event]
