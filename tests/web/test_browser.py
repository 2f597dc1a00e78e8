"""The console in a real browser: headless Chromium against a broker served on 127.0.0.1.

The broker runs in this process (so a test can pause its emulator) behind uvicorn on
a free loopback port; work is submitted over REST while the page is open, and the
page must follow it without a reload. Screenshots go to the artefacts directory
(``QHPC_TEST_ARTEFACTS``). Every wait is bounded; none is a performance claim.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from helpers import free_port
from qhpc.api import create_app
from qhpc.broker import Broker, BrokerConfig
from qhpc.resources import EmulatorResource, ResourceRegistry, ResourceSpec
from qhpc.security import Role
from qhpc.store import AccountRecord, Store

pytestmark = pytest.mark.slow

BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0], q[1];
measure q -> c;
"""
PROGRAM = """\
import time


def main(qpu):
    for step in range(4):
        print(f"step {step} of the loop", flush=True)
        time.sleep(0.4)
    return {"steps": 4}
"""
#: longest any page is given to show a change (it polls each second)
SHOWS_WITHIN_MS = 30_000
LAPTOP = {"width": 1366, "height": 768}


@dataclass
class Site:
    url: str
    broker: Broker
    registry: ResourceRegistry
    admin: str
    alice: str
    bob: str

    def submit(self, secret: str, name: str, resource: str = "aer") -> str:
        response = httpx.post(
            f"{self.url}/v1/jobs", headers={"Authorization": f"Bearer {secret}"}, timeout=30,
            json={"resource": resource, "circuits": [BELL], "shots": 50, "name": name},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        return str(response.json()["job_id"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    registry = ResourceRegistry(
        [
            ResourceSpec("aer", "aer", {"seed": 7}),
            ResourceSpec(
                "emu", "emulator", {"device": "line-5", "noise": False, "time_scale": 1000.0}
            ),
        ]
    )
    path = tmp_path_factory.mktemp("browser") / "console.db"
    with Store.open(path) as store:
        store.upsert_account(AccountRecord("chem", 2.0, None))
        store.upsert_account(AccountRecord("phys", 1.0, None))
        broker = Broker(store, registry, BrokerConfig(policy="fifo", runtime_pool_size=1))
        broker.start()
        issue = broker.access.issue
        port = free_port()
        config = uvicorn.Config(
            create_app(broker), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="console-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        try:
            yield Site(
                f"http://127.0.0.1:{port}", broker, registry, issue(Role.ADMIN, "root")[1],
                issue(Role.USER, "alice", account="chem")[1],
                issue(Role.USER, "bob", account="phys")[1],
            )  # fmt: skip
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            broker.stop()
    registry.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(SHOWS_WITHIN_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Any, site: Site, secret: str) -> None:
    page.goto(f"{site.url}/dashboard")
    assert page.url == f"{site.url}/dashboard/login"  # not signed in yet
    page.fill("#token", secret)
    page.click("#sign-in")
    page.wait_for_url(f"{site.url}/dashboard")


def test_signing_in_with_a_bad_token_says_why(page: Any, site: Site, artefacts: Path) -> None:
    page.goto(f"{site.url}/dashboard/login")
    page.fill("#token", "qhpc_" + "0" * 43)
    page.click("#sign-in")
    assert "Sign-in refused: unknown token." in page.inner_text("#error")
    page.screenshot(path=str(artefacts / "login-refused.png"))
    assert page.context.cookies() == []


def test_a_job_appears_and_finishes_without_a_reload(
    page: Any, site: Site, artefacts: Path
) -> None:
    sign_in(page, site, site.alice)
    page.evaluate("window.qhpcSamePage = 'yes'")
    job_id = site.submit(site.alice, "browser-bell")
    row = page.locator(f'tr[data-job="{job_id}"]')
    row.wait_for()
    assert "browser-bell" in row.inner_text()
    page.wait_for_function(
        "id => document.querySelector(`tr[data-job='${id}'] td.state`)?.textContent"
        " === 'completed'",
        arg=job_id,
    )
    assert page.evaluate("window.qhpcSamePage") == "yes"  # the same page, never reloaded
    assert "live: updated" in page.inner_text("#live")
    page.screenshot(path=str(artefacts / "job-completed.png"), full_page=True)


def test_a_paused_qpu_shows_maintenance_with_its_reason(
    page: Any, site: Site, artefacts: Path
) -> None:
    emulator = site.registry.get("emu")
    assert isinstance(emulator, EmulatorResource)
    sign_in(page, site, site.alice)
    card = page.locator('article[data-resource="emu"]')
    assert card.locator(".state").inner_text().lower() in ("idle", "busy")
    emulator.pause()
    try:
        page.wait_for_function(
            "() => document.querySelector(\"article[data-resource='emu'] .state\")"
            "?.textContent === 'maintenance'"
        )
        assert "reason: paused by operator" in card.inner_text()
        page.screenshot(path=str(artefacts / "qpu-maintenance.png"))
    finally:
        emulator.resume()
    page.wait_for_function(
        "() => document.querySelector(\"article[data-resource='emu'] .state\")"
        "?.textContent === 'idle'"
    )


def test_a_user_cannot_see_anothers_job(page: Any, site: Site, artefacts: Path) -> None:
    bobs = site.submit(site.bob, "bob-private-job")
    sign_in(page, site, site.alice)
    later = site.submit(site.alice, "alice-after-bob")
    page.locator(f'tr[data-job="{later}"]').wait_for()  # the panel was redrawn after bob's job
    assert page.locator(f'tr[data-job="{bobs}"]').count() == 0
    assert "bob-private-job" not in page.content()
    overview = page.request.get(f"{site.url}/dashboard/api/overview")
    assert overview.status == 200
    assert bobs not in overview.text() and "bob-private-job" not in overview.text()
    assert page.request.get(f"{site.url}/dashboard/api/jobs/{bobs}").status == 404
    response = page.goto(f"{site.url}/dashboard/jobs/{bobs}")
    assert response is not None and response.status == 404
    assert "No such job." in page.inner_text("#error")
    page.screenshot(path=str(artefacts / "other-users-job.png"))


def test_a_programs_output_follows_live(page: Any, site: Site, artefacts: Path) -> None:
    response = httpx.post(
        f"{site.url}/v1/programs", headers={"Authorization": f"Bearer {site.alice}"},
        json={"resource": "aer", "source": PROGRAM, "name": "looping-program"}, timeout=30,
    )  # fmt: skip
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    sign_in(page, site, site.alice)
    page.goto(f"{site.url}/dashboard/jobs/{job_id}")
    page.wait_for_function(
        "() => document.getElementById('stdout').textContent.includes('step 3 of the loop')",
        timeout=90_000,
    )
    page.wait_for_function(
        "() => document.getElementById('logs-state').textContent.includes('has ended')",
        timeout=90_000,
    )
    stdout = page.inner_text("#stdout")
    assert [line for line in stdout.splitlines() if line] == [
        f"step {n} of the loop" for n in range(4)
    ]  # each line once: offsets, not repeats
    page.wait_for_function(
        "() => document.getElementById('program-status')?.textContent === 'completed'"
    )
    page.screenshot(path=str(artefacts / "program-logs.png"), full_page=True)


def test_signing_out_ends_the_login(page: Any, site: Site) -> None:
    sign_in(page, site, site.alice)
    page.click("#sign-out")
    page.wait_for_url(f"{site.url}/dashboard/login?bye=true")
    assert "You are signed out." in page.inner_text("#message")
    page.goto(f"{site.url}/dashboard")
    assert page.url == f"{site.url}/dashboard/login"
    assert page.request.get(f"{site.url}/dashboard/api/overview").status == 401


def test_the_admin_sees_everything_on_a_laptop_screen(
    page: Any, site: Site, artefacts: Path
) -> None:
    emulator = site.registry.get("emu")
    assert isinstance(emulator, EmulatorResource)
    emulator.pause()  # its jobs wait in the queue, with positions and ETAs
    session, _ = site.broker.open_session(
        user="alice", account="chem", resource="emu", deadline=time.time() + 3600,
        slurm_job_id="81723",
    )  # fmt: skip
    try:
        bobs = site.submit(site.bob, "bob-sampling", resource="emu")
        alices = site.submit(site.alice, "alice-sampling", resource="emu")
        sign_in(page, site, site.admin)
        page.locator(f'tr[data-job="{bobs}"]').wait_for()
        page.locator(f'tr[data-job="{alices}"]').wait_for()
        page.locator(f'tr[data-session="{session.session_id}"]').wait_for()
        assert "81723" in page.inner_text('[data-panel="sessions"]')
        queue = page.inner_text('[data-panel="queues"]')
        assert "emu: 2 waiting" in queue and "bob" in queue and "alice" in queue
        assert "another user" not in queue  # the admin sees every entry in full
        # usable at 1366 wide: nothing forces the page wider than the window
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= LAPTOP["width"]
        page.screenshot(path=str(artefacts / "dashboard.png"))
        page.screenshot(path=str(artefacts / "dashboard-full.png"), full_page=True)
        page.goto(f"{site.url}/dashboard/accounts")
        assert "chem" in page.inner_text("main") and "phys" in page.inner_text("main")
    finally:
        emulator.resume()
        site.broker.close_session(session.session_id)
