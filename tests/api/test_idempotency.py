"""Idempotent submission: ``Idempotency-Key`` on POST /v1/jobs and /v1/programs.

On SQLite and PostgreSQL (as in test_api.py; the PostgreSQL cases need
``QHPC_TEST_POSTGRES_URL``): one key of one principal makes at most one job, a key
reused with another body is a 409 that names neither body, keys of different
tenants never meet, a key expires, the key is stored in the job's transaction, and
the Python client's retries after a lost answer (an httpx transport that drops the
answer after the server processed the request) end with exactly one job each, also
with 100 concurrent submissions.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from test_api import BELL, World, assert_problem, bearer, registry

from helpers import postgres_schema_url
from qhpc.api import create_app
from qhpc.broker import Broker, BrokerConfig, Idempotency
from qhpc.client import Client, ClientError
from qhpc.store import ConflictError, IdempotencyRecord, Store, StoreError
from qhpc.store.database import Database
from qhpc.store.migrations import MIGRATIONS, Migration, migrate

PROGRAM = "def main(qpu):\n    return 1\n"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "idem.db")
    else:
        yield from postgres_schema_url()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def idle(store_url: str, clock: Clock) -> Iterator[tuple[World, TestClient]]:
    """A broker that is never started (jobs stay queued), on a clock the test moves."""
    regs = registry()
    with Store.open(store_url) as store:
        broker = Broker(store, regs, BrokerConfig(policy="fifo"), clock=clock)
        try:
            with TestClient(create_app(broker)) as http:
                yield World(broker), http
        finally:
            broker.programs.close()  # hybrid jobs start their programs even when idle
    regs.close()


def post(
    http: TestClient, secret: str, key: str | None, path: str = "/v1/jobs", **body: Any
) -> httpx.Response:
    if path == "/v1/jobs":
        body.setdefault("circuits", [BELL])
        body.setdefault("shots", 100)
    body.setdefault("resource", "aer")
    headers = bearer(secret) | ({} if key is None else {"Idempotency-Key": key})
    return http.post(path, json=body, headers=headers)


def job_count(store: Store) -> int:
    """Jobs submitted (a hybrid job's program also opens a session job of its own)."""
    return sum(1 for j in store.list_jobs(limit=10_000) if j.kind != "session")


# -- the REST contract ---------------------------------------------------------------


def test_same_key_same_body_is_one_job(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    first = post(http, w.alice, "k-1", name="one")
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    # The same request spelled differently (key order, a default given) is the same body.
    again = http.post(
        "/v1/jobs",
        json={"shots": 100, "split_circuits": False, "name": "one", "circuits": [BELL],
              "resource": "aer"},
        headers=bearer(w.alice) | {"Idempotency-Key": "k-1"},
    )  # fmt: skip
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["job_id"] == first.json()["job_id"]
    assert job_count(w.broker.store) == 1
    # Without a key every request is a new job; another key, another job.
    assert post(http, w.alice, None, name="one").json()["job_id"] != first.json()["job_id"]
    assert post(http, w.alice, "k-2", name="one").status_code == 201
    assert job_count(w.broker.store) == 3


def test_same_key_for_programs(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    first = post(http, w.alice, "p-1", "/v1/programs", source=PROGRAM)
    assert first.status_code == 201, first.text
    again = post(http, w.alice, "p-1", "/v1/programs", source=PROGRAM)
    assert again.status_code == 201 and again.json()["job_id"] == first.json()["job_id"]
    assert [j.kind for j in w.broker.store.list_jobs() if j.kind != "session"] == ["hybrid"]
    # A key names one submission: the same key on the other route is another request.
    body = assert_problem(post(http, w.alice, "p-1"), 409)
    assert body["type"] == "urn:qhpc:problem:idempotency-key-reused"


def test_same_key_other_body_is_409_without_either_body(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    assert post(http, w.alice, "k", name="first-secret-name").status_code == 201
    response = post(http, w.alice, "k", name="second-secret-name")
    body = assert_problem(response, 409)
    assert body["type"] == "urn:qhpc:problem:idempotency-key-reused"
    assert "secret" not in response.text and "OPENQASM" not in response.text
    assert post(http, w.alice, "k", shots=101).status_code == 409
    assert job_count(w.broker.store) == 1


def test_keys_are_scoped_per_principal(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    mine = post(http, w.alice, "shared", name="alice-job")
    # Bob's key of the same name is his own: a new job, not a 409 revealing Alice's use.
    theirs = post(http, w.bob, "shared", name="bob-job")
    assert mine.status_code == theirs.status_code == 201, theirs.text
    assert mine.json()["job_id"] != theirs.json()["job_id"]
    assert theirs.json()["user"] == "bob"
    # A retry with the same body finds each one's own job.
    assert post(http, w.bob, "shared", name="bob-job").json()["job_id"] == theirs.json()["job_id"]
    # An admin submitting for alice is another principal than alice's own token.
    admin = post(http, w.admin, "shared", name="alice-job", user="alice", account="chem")
    assert admin.status_code == 201 and admin.json()["job_id"] != mine.json()["job_id"]


@pytest.mark.parametrize(
    ("key", "why"),
    [("x" * 129, "too long"), ("", "empty"), ("a b", "space"), ("é", "not ASCII")],
)
def test_bad_keys_are_422(idle: tuple[World, TestClient], key: str, why: str) -> None:
    w, http = idle
    headers: dict[str, Any] = bearer(w.alice) | {"Idempotency-Key": key.encode("latin-1")}
    response = http.post(
        "/v1/jobs", json={"resource": "aer", "circuits": [BELL], "shots": 1}, headers=headers
    )
    body = assert_problem(response, 422)
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"], why
    assert job_count(w.broker.store) == 0
    assert post(http, w.alice, "x" * 128).status_code == 201  # the longest allowed


def test_key_expires_after_the_ttl(idle: tuple[World, TestClient], clock: Clock) -> None:
    w, http = idle
    first = post(http, w.alice, "k").json()["job_id"]
    clock.now += w.broker.config.idempotency_ttl - 1
    assert post(http, w.alice, "k").json()["job_id"] == first
    assert post(http, w.alice, "k", shots=7).status_code == 409
    clock.now += 2  # past the TTL: the key names nothing any more, and is taken anew
    second = post(http, w.alice, "k", shots=7)
    assert second.status_code == 201 and second.json()["job_id"] != first
    assert post(http, w.alice, "k", shots=7).json()["job_id"] == second.json()["job_id"]


def test_expired_keys_are_purged(idle: tuple[World, TestClient], clock: Clock) -> None:
    w, http = idle
    for n in range(3):
        post(http, w.alice, f"old-{n}")
    store = w.broker.store
    clock.now += 2 * 24 * 3600  # past the TTL and the purge interval
    post(http, w.alice, "new")
    with store._db.tx() as conn:
        keys = conn.execute(text("SELECT key FROM idempotency_keys")).scalars().all()
    assert keys == ["new"]


def test_concurrent_first_uses_of_one_key_store_one_job(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        answers.append(post(http, w.alice, "race"))

    run_threads(8, one)
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert job_count(w.broker.store) == 1
    assert len(w.broker.store.tasks_of_job(answers[0].json()["job_id"])) == 1


# -- the store -----------------------------------------------------------------------


def test_key_and_job_share_one_transaction(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    first = post(http, w.alice, "k").json()["job_id"]
    store = w.broker.store
    (job,) = store.list_jobs()
    with store._db.tx() as conn:
        scope = conn.execute(text("SELECT scope FROM idempotency_keys")).scalar_one()
    copy = replace(job, job_id="j2")
    tasks = [replace(t, job_id="j2", task_id=f"j2-{t.index}") for t in store.tasks_of_job(first)]
    clash = IdempotencyRecord(
        scope=scope, key="k", request_hash="other", job_id="j2", created_at=job.created_at,
        expires_at=job.created_at + 10,
    )  # fmt: skip
    with pytest.raises(ConflictError):
        store.create_job(copy, tasks, clash)
    assert [j.job_id for j in store.list_jobs()] == [first]  # the job rolled back with its key
    # The other way round: with a fresh key both are stored, together.
    store.create_job(copy, tasks, replace(clash, key="k2"))
    assert store.find_idempotency(scope, "k2", job.created_at) is not None
    assert job_count(store) == 2


def test_a_lower_migration_may_land_after_a_higher_one(store_url: str) -> None:
    # Migrations come from parallel branches (4 reached main before 3): a database that
    # got 1, 2, 4 gets 3 once it lands, and code that knows no 3 refuses a store with it.
    def table(name: str) -> Callable[[Any], None]:
        return lambda conn: conn.execute(text(f"CREATE TABLE {name} (x INTEGER)"))

    m1, m2, m3, m4 = (Migration(n, f"m{n}", table(f"mig_t{n}")) for n in (1, 2, 3, 4))
    db = Database.connect(store_url)
    try:
        assert migrate(db, (m1, m2, m4)) == 4
        assert migrate(db, (m1, m2, m3, m4)) == 4
        with db.tx() as conn:
            versions = conn.execute(text("SELECT version FROM schema_version")).scalars().all()
            assert conn.execute(text("SELECT count(*) FROM mig_t3")).scalar() == 0
        assert sorted(versions) == [1, 2, 3, 4]
        assert migrate(db, (m1, m2, m3, m4)) == 4  # nothing applied twice
        with pytest.raises(StoreError, match="unknown to"):
            migrate(db, (m1, m2, m4))
    finally:
        db.close()
    assert [m.version for m in MIGRATIONS] == sorted({m.version for m in MIGRATIONS})


# -- the Python client's retries -------------------------------------------------------


class LossyTransport(httpx.BaseTransport):
    """Hands each request to the app, then may lose the answer (the job is stored)."""

    def __init__(self, app: TestClient, lose: Callable[[httpx.Request], bool]) -> None:
        self.app = app
        self.lose = lose
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        response = self.app.send(request)
        response.read()
        if self.lose(request):
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return httpx.Response(response.status_code, headers=response.headers,
                              content=response.content)  # fmt: skip


def lossy_client(http: TestClient, secret: str, lose: Callable[[httpx.Request], bool]) -> Client:
    transport = LossyTransport(http, lose)
    inner = httpx.Client(transport=transport, base_url="http://testserver", headers=bearer(secret))
    return Client(inner, "http://testserver", retries=6, backoff=0.001)


def test_client_retry_after_a_lost_answer_makes_one_job(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    lost = [True, True]  # the first two answers of the submission are lost
    client = lossy_client(http, w.alice, lambda r: r.method == "POST" and bool(lost and lost.pop()))
    job = client.submit("aer", [BELL], shots=10)
    assert client._http._transport.sent == 3  # type: ignore[attr-defined]
    assert [j.job_id for j in w.broker.store.list_jobs()] == [job["job_id"]]
    program = client.submit_program("aer", source=PROGRAM)
    assert program["job_id"] != job["job_id"]  # a fresh key per logical submission
    assert job_count(w.broker.store) == 2


def test_client_without_retries_shows_the_loss(idle: tuple[World, TestClient]) -> None:
    # The control: the same loss with retries off is an error, though the job is stored,
    # which is exactly the situation the retries with one key resolve.
    w, http = idle
    client = lossy_client(http, w.alice, lambda r: r.method == "POST")
    client.retries = 0
    with pytest.raises(ClientError, match="cannot reach broker"):
        client.submit("aer", [BELL], shots=10)
    assert job_count(w.broker.store) == 1


def test_client_retries_5xx_with_the_same_key(
    idle: tuple[World, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, http = idle
    seen: list[Idempotency | None] = []
    real = w.broker.submit
    failures = [StoreError("database restarting")]

    def flaky(**kwargs: Any) -> Any:
        seen.append(kwargs["idempotency"])
        if failures:
            raise failures.pop()  # a 503 before anything was stored
        return real(**kwargs)

    monkeypatch.setattr(w.broker, "submit", flaky)
    client = lossy_client(http, w.alice, lambda r: False)
    job = client.submit("aer", [BELL], shots=10)
    assert len(seen) == 2 and seen[0] is not None and seen[0] == seen[1]
    assert [j.job_id for j in w.broker.store.list_jobs()] == [job["job_id"]]


def test_100_concurrent_submissions_with_lost_answers_make_100_jobs(
    idle: tuple[World, TestClient],
) -> None:
    w, http = idle
    rng = random.Random(7)
    lock = threading.Lock()
    losses: dict[str, int] = {}

    def lose(request: httpx.Request) -> bool:
        # Half of the answers are lost, at most twice per submission, so that every
        # submission ends within its retries whatever the threads' interleaving.
        key = request.headers["idempotency-key"]
        with lock:
            if losses.get(key, 0) < 2 and rng.random() < 0.5:
                losses[key] = losses.get(key, 0) + 1
                return True
        return False

    client = lossy_client(http, w.alice, lose)
    ids: list[str] = []
    pending = list(range(100))

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                n = pending.pop()
            job = client.submit("aer", [BELL], shots=1 + n, name=f"job-{n}")
            with lock:
                ids.append(job["job_id"])

    run_threads(8, worker)
    sent = client._http._transport.sent  # type: ignore[attr-defined]
    assert sent > 100, "no answer was lost: the test proved nothing"
    assert len(ids) == len(set(ids)) == 100
    assert job_count(w.broker.store) == 100


def run_threads(n: int, target: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # reported below, with the thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
