"""The console at /dashboard over a real broker and store, in-process (no browser).

Sign-in with every kind of bad token, the cookie's flags and life, who sees what
(pages, live panels and JSON alike), CSRF on every state-changing POST, hostile job
names, tampered cookies, and that the broker keeps serving after each. The browser
tests (test_browser.py) drive the same console through Chromium.

The broker here is never started: submitted tasks stay queued, so queues and
"nothing changed" are stable to check.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from qiskit.circuit import QuantumCircuit

from qhpc.api import create_app
from qhpc.broker import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerTask
from qhpc.security import Role
from qhpc.store import AccountRecord, JobRecord, Store

ORIGIN = "http://testserver"
#: an emulator calibrating for its first hour of device time, offline later
CALIBRATING = {
    "device": "line-5", "noise": False, "offline": [[9000, 9100]],
    "calibration": {"every": 7200, "duration": 3600, "first": 0},
}  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, broker: Broker, clock: Clock) -> None:
        self.broker = broker
        self.clock = clock
        broker.store.upsert_account(AccountRecord("chem", 2.0, None))
        broker.store.upsert_account(AccountRecord("phys", 1.0, None))
        broker.store.upsert_account(AccountRecord("north-acc", 1.0, "north"))
        issue = broker.access.issue
        self.admin = issue(Role.ADMIN, "root")[1]
        self.alice_record, self.alice = issue(Role.USER, "alice", account="chem")
        self.bob = issue(Role.USER, "bob", account="phys")[1]
        self.north = issue(Role.CENTRE, "north-gw", account="north-acc", centre="north")[1]

    def submit(self, user: str, account: str, name: str | None = None, **extra: object) -> str:
        circuit = QuantumCircuit(1, 1)
        circuit.x(0)
        circuit.measure(0, 0)
        job = self.broker.submit(
            user=user, account=account, resource="aer", name=name,
            payloads=[SamplerTask((circuit,), 10)], **extra,  # type: ignore[arg-type]
        )  # fmt: skip
        self.clock.now += 1  # one job a second: a clear FIFO order
        return job.job_id

    def state(self, job_id: str) -> str:
        return self.broker.get_job(job_id).state


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, TestClient]]:
    registry = ResourceRegistry(
        [
            ResourceSpec("aer", "aer", {"seed": 7}),
            ResourceSpec(
                "emu", "emulator", {"device": "line-5", "noise": False, "time_scale": 1000.0}
            ),
            ResourceSpec("cal", "emulator", CALIBRATING),
        ]
    )
    clock = Clock()
    with Store.open(tmp_path / "console.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"), clock=clock)
        with TestClient(create_app(broker), base_url=ORIGIN) as http:
            yield World(broker, clock), http
    registry.close()


def client(http: TestClient, base_url: str = ORIGIN) -> TestClient:
    """Another browser on the same app (its own cookie jar)."""
    return TestClient(http.app, base_url=base_url)


def sign_in(http: TestClient, secret: str, origin: str = ORIGIN) -> httpx.Response:
    return http.post(
        "/dashboard/login", data={"token": secret}, headers={"Origin": origin},
        follow_redirects=False,
    )  # fmt: skip


def signed_in(http: TestClient, secret: str) -> TestClient:
    browser = client(http)
    response = sign_in(browser, secret)
    assert response.status_code == 303, response.text
    return browser


def csrf_of(browser: TestClient) -> str:
    page = browser.get("/dashboard").text
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def still_serves(http: TestClient, secret: str) -> None:
    assert http.get("/v1/health").status_code == 200
    headers = {"Authorization": f"Bearer {secret}"}
    assert http.get("/v1/resources", headers=headers).status_code == 200


# -- sign-in ---------------------------------------------------------------------------


def test_sign_in_sets_a_strict_cookie_and_shows_the_overview(
    world: tuple[World, TestClient],
) -> None:
    w, http = world
    browser = client(http)
    assert browser.get("/dashboard", follow_redirects=False).headers["location"] == (
        "/dashboard/login"
    )
    response = sign_in(browser, w.alice)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"
    cookie = response.headers["set-cookie"]
    value = re.match(r"qhpc_console=([A-Za-z0-9_-]+);", cookie)
    assert value is not None and len(value.group(1)) >= 43  # ≥ 256 bits of urlsafe base64
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # plain http here; see the https test
    assert int(re.search(r"Max-Age=(\d+)", cookie).group(1)) == 8 * 3600  # type: ignore[union-attr]
    page = browser.get("/dashboard")
    assert page.status_code == 200
    assert '<strong id="who">alice</strong>' in page.text
    assert "Content-Security-Policy" in page.headers
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    # the token itself never travels back to the browser
    assert w.alice not in page.text and w.alice not in browser.get("/dashboard/api/overview").text


def test_signing_in_again_ends_the_previous_login(world: tuple[World, TestClient]) -> None:
    w, http = world
    browser = signed_in(http, w.alice)
    first = browser.cookies["qhpc_console"]
    assert sign_in(browser, w.bob).status_code == 303
    assert browser.cookies["qhpc_console"] != first
    assert browser.get("/dashboard/api/overview").json()["viewer"]["subject"] == "bob"
    replay = client(http)
    replay.cookies.set("qhpc_console", first, domain="testserver", path="/dashboard")
    assert replay.get("/dashboard/api/overview").status_code == 401


def test_over_https_the_cookie_is_secure(world: tuple[World, TestClient]) -> None:
    w, http = world
    browser = client(http, "https://testserver")
    response = sign_in(browser, w.alice, origin="https://testserver")
    assert response.status_code == 303
    assert "; Secure" in response.headers["set-cookie"]


def test_a_login_ends_with_its_token(world: tuple[World, TestClient]) -> None:
    w, http = world
    _, short = w.broker.access.issue(
        Role.USER, "carol", account="chem", expires_at=w.clock.now + 120
    )
    browser = client(http)
    response = sign_in(browser, short)
    assert response.status_code == 303
    assert "Max-Age=120;" in response.headers["set-cookie"]
    assert browser.get("/dashboard").status_code == 200
    w.clock.now += 121
    assert browser.get("/dashboard", follow_redirects=False).headers["location"].endswith("/login")
    assert browser.get("/dashboard/api/overview").status_code == 401


def test_a_revoked_token_ends_its_logins_at_the_next_request(
    world: tuple[World, TestClient],
) -> None:
    w, http = world
    browser = signed_in(http, w.alice)
    assert browser.get("/dashboard/api/overview").status_code == 200
    w.broker.access.revoke(w.alice_record.token_id)
    assert browser.get("/dashboard/api/overview").status_code == 401
    response = browser.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/login"


def test_bad_tokens_at_sign_in_get_a_clear_page_and_no_cookie(
    world: tuple[World, TestClient],
) -> None:
    w, http = world
    _, expired = w.broker.access.issue(Role.USER, "eve", account="chem", expires_at=w.clock.now - 1)
    revoked_record, revoked = w.broker.access.issue(Role.USER, "mallory", account="chem")
    w.broker.access.revoke(revoked_record.token_id)
    _, session_token = w.broker.open_session(
        user="alice", account="chem", resource="aer", deadline=w.clock.now + 600
    )
    cases = {
        "": (400, "Paste your qhpc token"),
        "   ": (400, "Paste your qhpc token"),
        "not-a-token": (401, "malformed token"),
        "qhpc_" + "x" * 43: (401, "unknown token"),
        "qhpc_" + "x" * 500: (401, "malformed token"),
        expired: (401, "token has expired"),
        revoked: (401, "token was revoked"),
        session_token: (403, "session tokens cannot sign in to the console"),
    }
    for secret, (status, message) in cases.items():
        browser = client(http)
        response = sign_in(browser, secret)
        assert response.status_code == status, (secret[:20], response.text)
        assert message in response.text
        assert "set-cookie" not in response.headers
        assert secret.strip() == "" or secret not in response.text  # never echoed
        assert browser.get("/dashboard", follow_redirects=False).status_code == 303
        still_serves(http, w.admin)


def test_unreadable_sign_in_forms_are_refused(world: tuple[World, TestClient]) -> None:
    w, http = world
    headers = {"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}
    huge = b"token=" + b"q" * 100_000
    for body, message in (
        (huge, "too large"),
        ("token=é".encode(), "could not be read"),
        (b"\xff\xfe\x00", "could not be read"),
        (b"&".join(b"f%d=1" % i for i in range(50)), "could not be read"),
    ):
        response = http.post("/dashboard/login", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert message in response.text
        assert "set-cookie" not in response.headers
        still_serves(http, w.admin)


def test_sign_in_from_another_site_is_refused(world: tuple[World, TestClient]) -> None:
    w, http = world
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {},
    ):
        response = http.post(
            "/dashboard/login", data={"token": w.alice}, headers=headers, follow_redirects=False
        )
        assert response.status_code == 403, headers
        assert "set-cookie" not in response.headers
    # a same-site Referer alone (no Origin) is enough
    referer = {"Referer": f"{ORIGIN}/dashboard/login"}
    response = http.post(
        "/dashboard/login", data={"token": w.alice}, headers=referer, follow_redirects=False
    )
    assert response.status_code == 303


def test_tampered_cookies_lead_back_to_sign_in(world: tuple[World, TestClient]) -> None:
    w, http = world
    browser = signed_in(http, w.alice)
    good = browser.cookies["qhpc_console"]
    flipped = ("A" if good[0] != "A" else "B") + good[1:]
    for value in (flipped, good[:-1], good + "x", "x" * 4000, "../../etc", ""):
        forged = client(http)
        forged.cookies.set("qhpc_console", value, domain="testserver", path="/dashboard")
        response = forged.get("/dashboard", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/dashboard/login"
        assert forged.get("/dashboard/api/overview").status_code == 401
    assert browser.get("/dashboard").status_code == 200  # the real one still works
    still_serves(http, w.admin)


# -- who sees what ---------------------------------------------------------------------


def test_users_see_their_own_work_and_others_only_as_queue_positions(
    world: tuple[World, TestClient],
) -> None:
    w, http = world
    alices = w.submit("alice", "chem", name="alice-job")
    bobs = w.submit("bob", "phys", name="bob-secret-job")
    norths = w.submit("alice", "north-acc", name="north-alice-job", centre="north")
    bob_session, _ = w.broker.open_session(
        user="bob", account="phys", resource="emu", deadline=w.clock.now + 600,
        slurm_job_id="4242",
    )  # fmt: skip
    alice = signed_in(http, w.alice)
    data = alice.get("/dashboard/api/overview").json()
    text = alice.get("/dashboard/api/overview").text + alice.get("/dashboard").text
    assert [j["job_id"] for j in data["jobs"]] == [alices]
    for secret_part in (bobs, "bob-secret-job", bob_session.session_id, "4242", "phys", norths):
        assert secret_part not in text, secret_part
    assert "bob" not in text.replace("bob-", "")  # nor bob's name anywhere
    (aer,) = [q for q in data["queues"] if q["resource"] == "aer"]
    assert aer["length"] == 3
    rows = aer["rows"]
    assert [(r["position"], r["visible"], r["mine"]) for r in rows] == [
        (1, True, True), (2, False, False), (3, False, False),
    ]  # fmt: skip
    assert rows[1]["user"] is None and rows[1]["job_id"] is None and rows[1]["task_id"] is None
    assert "another user's task" in data["panels"]["queues"]
    assert data["sessions"] == []
    assert [a["account"] for a in data["accounts"]] == ["chem"]
    # another's job reads exactly like a missing one, on every path
    for path in (f"/dashboard/jobs/{bobs}", "/dashboard/jobs/no-such-job"):
        response = alice.get(path)
        assert response.status_code == 404 and "No such job." in response.text
        assert "bob-secret-job" not in response.text
    for path in (f"/api/jobs/{bobs}", f"/api/jobs/{bobs}/logs", "/api/jobs/nope"):
        response = alice.get("/dashboard" + path)
        assert response.status_code == 404 and response.json() == {"detail": "no such job"}
    # the admin sees everything; the centre its own centre's
    admin = signed_in(http, w.admin).get("/dashboard/api/overview").json()
    assert {j["job_id"] for j in admin["jobs"]} >= {alices, bobs, norths}
    assert [s["slurm_job_id"] for s in admin["sessions"]] == ["4242"]
    assert all(r["visible"] for q in admin["queues"] for r in q["rows"])
    north = signed_in(http, w.north).get("/dashboard/api/overview").json()
    assert [j["job_id"] for j in north["jobs"]] == [norths]
    (north_aer,) = [q for q in north["queues"] if q["resource"] == "aer"]
    assert [r["visible"] for r in north_aer["rows"]] == [False, False, True]


def test_admin_only_views_answer_403_to_users(world: tuple[World, TestClient]) -> None:
    w, http = world
    alice = signed_in(http, w.alice)
    page = alice.get("/dashboard/accounts")
    assert page.status_code == 403 and "for admins" in page.text
    assert alice.get("/dashboard/api/accounts").status_code == 403
    assert 'href="/dashboard/accounts"' not in alice.get("/dashboard").text
    admin = signed_in(http, w.admin)
    assert admin.get("/dashboard/accounts").status_code == 200
    rows = admin.get("/dashboard/api/accounts").json()["accounts"]
    assert {r["account"]: r["share_fraction"] for r in rows} == {
        "chem": 0.5, "phys": 0.25, "north-acc": 0.25,
    }  # fmt: skip
    assert client(http).get("/dashboard/api/accounts").status_code == 401


def test_a_hostile_job_name_is_escaped_and_cut(world: tuple[World, TestClient]) -> None:
    w, http = world
    name = "<script>alert('x')</script>\"'&<img src=x onerror=alert(1)>" + "A" * 100_000
    job_id = w.submit("alice", "chem", name=name)
    alice = signed_in(http, w.alice)
    for response in (alice.get("/dashboard"), alice.get(f"/dashboard/jobs/{job_id}")):
        assert response.status_code == 200
        assert "<script>alert" not in response.text and "<img src=x" not in response.text
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in response.text
        assert "A" * 100 not in response.text
        assert len(response.text) < 40_000
    data = alice.get("/dashboard/api/overview").json()
    (row,) = data["jobs"]
    assert len(row["name"]) == 80 and row["name"].endswith("…")
    assert "<script>alert" not in data["panels"]["jobs"]
    assert alice.get(f"/dashboard/api/jobs/{job_id}").json()["job"]["name"] == row["name"]
    still_serves(http, w.admin)


def test_odd_paths_and_queries_are_clear_4xx(world: tuple[World, TestClient]) -> None:
    w, http = world
    alice = signed_in(http, w.alice)
    batch = w.submit("alice", "chem")
    assert alice.get("/dashboard/jobs/" + "x" * 300).status_code == 404
    assert alice.get("/dashboard/jobs/%00%01").status_code == 404
    assert alice.get("/dashboard/api/jobs/%7f").status_code == 404
    assert alice.get(f"/dashboard/api/jobs/{batch}/logs").status_code == 409
    for query in ("stdout_offset=-1", "stderr_offset=abc", "stdout_offset=1e99"):
        assert alice.get(f"/dashboard/api/jobs/{batch}/logs?{query}").status_code == 422
    assert alice.get("/dashboard/static/../auth.py").status_code == 404
    assert alice.get("/dashboard/static/%2e%2e%2fauth.py").status_code == 404
    assert alice.get("/dashboard/static/nope.css").status_code == 404
    still_serves(http, w.admin)


def test_assets_come_from_the_package(world: tuple[World, TestClient]) -> None:
    _, http = world
    for name, media in (
        ("console.css", "text/css"),
        ("console.js", "text/javascript"),
        ("icon.svg", "image/svg+xml"),
    ):
        response = http.get(f"/dashboard/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(media)
        assert len(response.content) > 100
        # nothing fetched from elsewhere (the SVG namespace is a name, not a fetch)
        text = response.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "http://" not in text and "https://" not in text


# -- CSRF: every state-changing request ------------------------------------------------


def test_forged_cancels_are_refused_and_change_nothing(world: tuple[World, TestClient]) -> None:
    w, http = world
    job_id = w.submit("alice", "chem", name="keep-me")
    alice = signed_in(http, w.alice)
    token = csrf_of(alice)
    path = f"/dashboard/jobs/{job_id}/cancel"
    forged = {
        "no CSRF token": ({}, {"Origin": ORIGIN}),
        "wrong CSRF token": ({"csrf": token[:-1] + "x"}, {"Origin": ORIGIN}),
        "empty CSRF token": ({"csrf": ""}, {"Origin": ORIGIN}),
        "foreign Origin": ({"csrf": token}, {"Origin": "https://evil.example"}),
        "foreign Referer": ({"csrf": token}, {"Referer": "https://evil.example/x"}),
        "look-alike Origin": ({"csrf": token}, {"Origin": ORIGIN + ".evil.example"}),
        "no Origin, no Referer": ({"csrf": token}, {}),
    }
    for case, (form, headers) in forged.items():
        response = alice.post(path, data=form, headers=headers, follow_redirects=False)
        assert response.status_code == 403, case
        assert w.state(job_id) == "queued", case
    # without a login at all
    response = client(http).post(path, data={"csrf": token}, headers={"Origin": ORIGIN})
    assert response.status_code == 403
    # the header works as well as the field; the genuine request does cancel
    assert w.state(job_id) == "queued"
    response = alice.post(
        path, headers={"Origin": ORIGIN, "X-CSRF-Token": token}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/jobs/{job_id}"
    assert w.state(job_id) == "cancelled"


def test_a_user_cannot_cancel_anothers_job(world: tuple[World, TestClient]) -> None:
    w, http = world
    bobs = w.submit("bob", "phys")
    alice = signed_in(http, w.alice)
    response = alice.post(
        f"/dashboard/jobs/{bobs}/cancel", data={"csrf": csrf_of(alice)}, headers={"Origin": ORIGIN}
    )
    assert response.status_code == 404
    assert w.state(bobs) == "queued"


def test_sign_out_ends_the_login_on_the_server(world: tuple[World, TestClient]) -> None:
    w, http = world
    alice = signed_in(http, w.alice)
    cookie = alice.cookies["qhpc_console"]
    token = csrf_of(alice)
    assert alice.get("/dashboard/logout").status_code == 405  # GETs change nothing
    forged = alice.post("/dashboard/logout", headers={"Origin": ORIGIN})  # no CSRF token
    assert forged.status_code == 403
    assert alice.get("/dashboard").status_code == 200
    response = alice.post(
        "/dashboard/logout", data={"csrf": token}, headers={"Origin": ORIGIN},
        follow_redirects=False,
    )  # fmt: skip
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login?bye=true"
    assert "Max-Age=0" in response.headers["set-cookie"]
    replay = client(http)
    replay.cookies.set("qhpc_console", cookie, domain="testserver", path="/dashboard")
    assert replay.get("/dashboard", follow_redirects=False).status_code == 303
    assert replay.get("/dashboard/api/overview").status_code == 401
    assert "You are signed out." in client(http).get("/dashboard/login?bye=true").text


def test_logins_are_bounded_in_number(
    world: tuple[World, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from qhpc.web import auth

    w, http = world
    monkeypatch.setattr(auth, "MAX_LOGINS", 3)
    browsers = [signed_in(http, w.alice) for _ in range(5)]
    assert http.app.state.console.logins.count() == 3  # type: ignore[attr-defined]
    assert browsers[0].get("/dashboard/api/overview").status_code == 401  # the oldest went
    assert browsers[-1].get("/dashboard/api/overview").status_code == 200


def test_a_job_page_shows_tasks_with_queue_positions(world: tuple[World, TestClient]) -> None:
    w, http = world
    first = w.submit("bob", "phys")
    mine = w.submit("alice", "chem", name="second")
    assert w.state(first) == "queued"
    alice = signed_in(http, w.alice)
    data = alice.get(f"/dashboard/api/jobs/{mine}").json()
    assert data["job"]["state"] == "queued" and data["program"] is None
    (task,) = data["tasks"]
    assert task["position"] == 2 and task["state"] == "queued"
    page = alice.get(f"/dashboard/jobs/{mine}").text
    assert 'id="job-state">queued<' in page and "Cancel this job" in page


def test_session_jobs_show_in_the_jobs_list(world: tuple[World, TestClient]) -> None:
    w, http = world
    session, _ = w.broker.open_session(
        user="alice", account="chem", resource="emu", deadline=w.clock.now + 3600,
        slurm_job_id="77",
    )  # fmt: skip
    data = signed_in(http, w.alice).get("/dashboard/api/overview").json()
    assert [s["slurm_job_id"] for s in data["sessions"]] == ["77"]
    kinds = {j["job_id"]: j["kind"] for j in data["jobs"]}
    assert kinds == {session.session_id: "session"}
    assert isinstance(w.broker.get_job(session.session_id), JobRecord)


def test_a_calibrating_qpu_shows_its_state_reason_and_windows(
    world: tuple[World, TestClient],
) -> None:
    w, http = world
    alice = signed_in(http, w.alice)
    cards = {c["name"]: c for c in alice.get("/dashboard/api/overview").json()["cards"]}
    cal = cards["cal"]
    assert (cal["state"], cal["reason"]) == ("calibration", "calibrating until t=3600s")
    assert cal["windows"] == [
        "calibrates for 3600 s every 7200 s (device time)",
        "offline from t=9000 s to t=9100 s (device time)",
    ]
    assert cards["emu"]["state"] == "idle" and cards["emu"]["reason"] == ""
    page = alice.get("/dashboard").text
    card = page[page.index('data-resource="cal"') :].split("</article>")[0]
    assert '<strong class="state">calibration</strong>' in card
    assert "reason: calibrating until t=3600s" in card


def test_a_drained_qpu_shows_maintenance_with_its_reason_and_end(
    world: tuple[World, TestClient],
) -> None:
    from qhpc.broker import DrainRequest

    w, http = world
    w.broker.drain("emu", DrainRequest("cryostat <warm-up>", until=time.time() + 600), by="ops")
    alice = signed_in(http, w.alice)
    cards = {c["name"]: c for c in alice.get("/dashboard/api/overview").json()["cards"]}
    assert (cards["emu"]["state"], cards["emu"]["reason"]) == (
        "maintenance", "drained: cryostat <warm-up>",
    )  # fmt: skip
    page = alice.get("/dashboard").text
    card = page[page.index('data-resource="emu"') :].split("</article>")[0]
    assert '<strong class="state">maintenance</strong>' in card
    assert "drained: cryostat &lt;warm-up&gt;" in card and "<warm-up>" not in card
    w.broker.resume("emu", by="ops")
    cards = {c["name"]: c for c in alice.get("/dashboard/api/overview").json()["cards"]}
    assert cards["emu"]["state"] == "idle"
