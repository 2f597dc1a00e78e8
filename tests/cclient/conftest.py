"""Fixtures of the C client's tests: the two builds of libqhpc and a loopback broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cclient_support import CLIENT, RESOURCES, Broker, Build, build

from helpers import free_port, start_serve, stop_process, wait_healthy


@pytest.fixture(scope="session")
def libqhpc() -> Build:
    return build(CLIENT / "build")


@pytest.fixture(scope="session")
def libqhpc_asan() -> Build:
    return build(CLIENT / "build-asan", sanitize="address")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """``qhpc serve`` on loopback with an aer QPU and a slow emulated one."""
    tmp = tmp_path_factory.mktemp("cclient")
    (tmp / "resources.toml").write_text(RESOURCES)
    port = free_port()
    log = (tmp / "serve.log").open("wb")
    process = start_serve(
        tmp, port, "--config", str(tmp / "resources.toml"), db=tmp / "broker.db", stdout=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        served = Broker(url, (tmp / "admin.token").read_text().strip())
        served.call("PUT", "/accounts/chem", json={"shares": 1.0}).raise_for_status()
        yield served
    finally:
        stop_process(process)
        log.close()
