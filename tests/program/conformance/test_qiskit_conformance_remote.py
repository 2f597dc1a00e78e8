"""Qiskit's own primitives tests on qhpc's primitives over a broker's remote QPU.

The same suite as ``test_qiskit_conformance.py`` (and the same exceptions), with
every task going through a real ``qhpc serve`` on loopback (fifo policy, an
``aer`` resource) by :class:`~qhpc.program.RemoteQPU`: submission, the wire
format of circuits, observables and results, and errors coming back.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import qiskit_tests

from helpers import free_port, start_serve, wait_healthy
from qhpc.client import Client, connect
from qhpc.program import RemoteQPU

pytestmark = pytest.mark.slow

_qpu: list[RemoteQPU] = []


def _remote() -> RemoteQPU:
    if not _qpu:
        raise RuntimeError("the broker fixture has not started")
    return _qpu[0]


TestStatevectorEstimator, TestStatevectorSampler, _modules = qiskit_tests.conformance_classes(
    _remote, prefix="qhpc_qiskit_tests_remote"
)


@pytest.fixture(scope="module", autouse=True)
def _broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    tmp: Path = tmp_path_factory.mktemp("conformance-broker")
    config = tmp / "resources.toml"
    config.write_text('[resources.aer]\ntype = "aer"\nseed = 11\n')
    port = free_port()
    log = (tmp / "serve.log").open("wb")
    process = start_serve(tmp, port, "--config", str(config), db=tmp / "broker.db", stdout=log)
    url = f"http://127.0.0.1:{port}"
    client: Client | None = None
    try:
        wait_healthy(url, process)
        client = connect(url, (tmp / "admin.token").read_text().strip())
        client.set_account("conformance", 1.0)
        _qpu.append(RemoteQPU(client, "aer", account="conformance"))
        yield
    finally:
        _qpu.clear()
        if client is not None:
            client.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
