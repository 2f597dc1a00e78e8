"""A hostile co-located program reads nothing of the broker or of other tenants.

A real ``qhpc serve`` (loopback, ``aer``, runtime pool of 2) keeps its state in a
directory others can traverse, made 0755 beforehand as a careless install would; its
admin token lies next to the store. Alice's program holds secrets in its source, its
output and a file in its work dir, and keeps running while Bob's program walks
everything a program can reach: ``/proc`` (every process's cmdline, environ, fds, cwd
and, where ``maps`` opens, its writable memory), the store path and data dir named on
the broker's command line, its own work dir's parent, and ``/tmp``. Bob reports every
place a secret turned up; the test expects none, and checks the walk really ran (it
found the broker, the store path and Alice's process) so that it cannot pass by
looking nowhere.

Needs root: only then do programs run as an unprivileged uid (``nobody``), which is
what the broker's file modes and the programs' non-dumpable processes protect against.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port, start_serve, stop_process, wait_healthy
from qhpc.client import connect
from qhpc.runtime.isolation import resolve_run_as

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="programs switch to an unprivileged uid as root"),
    pytest.mark.skipif(
        os.geteuid() == 0 and resolve_run_as("auto") is None,
        reason="no unprivileged user can read this Python installation",
    ),
]

VICTIM = """
import os, time
SECRET = "{source_mark}"  # Alice's source: only she and the broker may read it

def main():
    with open("result.txt", "w") as handle:
        handle.write("{file_mark}")
    print("{output_mark}", flush=True)
    held = [SECRET, "{file_mark}", os.environ.get("QHPC_SESSION", "")]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not os.path.exists("stop"):
        time.sleep(0.1)
    return len(held)
"""

HOSTILE = r"""
import os, re

MAX_FILE = 1 << 20
MAX_MEMORY = 256 << 20


def main(needles):
    wanted = {name: value.encode() for name, value in needles.items()}
    hits, opened, notes = [], [], {"pids": 0, "peers": [], "brokers": {}}
    me = os.getpid()

    def look(where, data):
        for name, value in wanted.items():
            if value and value in data:
                hits.append([where, name])

    def read(path, limit=MAX_FILE):
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit)
        except OSError:
            return None
        opened.append(path)
        look(path, data)
        return data

    def walk(top, depth):
        try:
            entries = list(os.scandir(top))
        except OSError:
            return
        opened.append(top + "/")
        for entry in entries[:2000]:
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir():
                    if depth:
                        walk(entry.path, depth - 1)
                elif entry.is_file():
                    read(entry.path)
            except OSError:
                continue

    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        if pid == me:
            continue
        notes["pids"] += 1
        base = f"/proc/{pid}"
        status = read(base + "/status") or b""
        uid = re.search(rb"Uid:\s+(\d+)", status)
        if uid and int(uid.group(1)) == os.getuid():
            notes["peers"].append(pid)
        cmdline = (read(base + "/cmdline") or b"").split(b"\0")
        if b"serve" in cmdline and b"--db" in cmdline:
            db = cmdline[cmdline.index(b"--db") + 1].decode()
            notes["brokers"][str(pid)] = db
            for suffix in ("", "-wal", "-shm", "-journal"):
                read(db + suffix)
            walk(os.path.dirname(db), 3)
            walk(db + ".journal", 1)
            if b"--admin-token-file" in cmdline:
                read(cmdline[cmdline.index(b"--admin-token-file") + 1].decode())
        read(base + "/environ")
        for link in ("cwd", "root"):
            try:
                target = os.readlink(f"{base}/{link}")
            except OSError:
                continue
            opened.append(f"{base}/{link}")
            if link == "cwd" and target != "/":
                walk(f"{base}/cwd", 2)
        try:
            fds = os.listdir(base + "/fd")
        except OSError:
            fds = []
        for fd in fds:
            read(f"{base}/fd/{fd}", 1 << 16)
        maps = read(base + "/maps") or b""
        budget = MAX_MEMORY
        try:
            memory = open(base + "/mem", "rb")
        except OSError:
            continue
        with memory:
            for line in maps.splitlines():
                fields = line.split()
                if len(fields) < 2 or not fields[1].startswith(b"rw"):
                    continue
                start, end = (int(x, 16) for x in fields[0].split(b"-"))
                size = min(end - start, budget)
                if size <= 0:
                    break
                try:
                    memory.seek(start)
                    look(f"{base}/mem", memory.read(size))
                except (OSError, ValueError, OverflowError):
                    continue
                budget -= size
    walk(os.path.dirname(os.getcwd()), 2)  # the other programs' work dirs
    walk("/tmp", 5)
    return {"hits": hits, "opened": len(opened), "notes": notes}
"""


@pytest.fixture
def open_data_dir() -> Iterator[Path]:
    """A data dir a careless install left open: 0755, under a traversable directory."""
    outer = Path(tempfile.mkdtemp(prefix="qhpc-hostile-"))
    try:
        outer.chmod(0o755)
        data = outer / "state"
        data.mkdir()
        data.chmod(0o755)
        yield data
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def test_a_hostile_program_reads_nothing_of_the_broker_or_other_tenants(
    open_data_dir: Path,
) -> None:
    data = open_data_dir
    port = free_port()
    log = open(data.parent / "serve.log", "wb")  # noqa: SIM115 (closed below)
    process = start_serve(data, port, "--runtime-pool-size", "2", db=data / "b.db", stdout=log)
    url = f"http://127.0.0.1:{port}"
    marks = {name: f"{name}-{secrets.token_hex(12)}" for name in ("source", "file", "output")}
    try:
        wait_healthy(url, process)
        admin = (data / "admin.token").read_text().strip()
        with connect(url, admin) as client:
            alice = client.create_token("user", "alice", account="chem")["token"]
            bob = client.create_token("user", "bob", account="phys")["token"]
        with connect(url, alice) as client:
            victim = client.submit_program(
                "aer", source=VICTIM.format(source_mark=marks["source"],
                                            file_mark=marks["file"],
                                            output_mark=marks["output"]),
                timeout=180,
            )["job_id"]  # fmt: skip
            _wait_for(lambda: client.program(victim)["status"] == "running")
            time.sleep(1.0)  # its file is written and its output printed
        needles = {**{f"alice's {k}": v for k, v in marks.items()},
                   "admin token": admin, "alice's token": alice,
                   "store header": "SQLite format 3"}  # fmt: skip
        with connect(url, bob) as client:
            job = client.submit_program(
                "aer", source=HOSTILE, args={"needles": needles}, timeout=170
            )["job_id"]
            program = client.wait(job, timeout=180)["program"]
        assert program["status"] == "completed", program["message"]
        report = program["return_value"]
        with connect(url, alice) as client:
            client.cancel(victim)
            client.wait(victim, timeout=60)
    finally:
        stop_process(process, timeout=60)
        log.close()
    notes = report["notes"]
    # The walk looked where it should: the broker, its store and Alice's process.
    assert notes["brokers"].get(str(process.pid)) == str(data / "b.db"), notes
    assert notes["pids"] > 3 and notes["peers"], notes
    assert report["opened"] > 10
    # Other stores on this host (other brokers' tests) are not this broker's business.
    hits = [[where, name] for where, name in report["hits"]
            if name != "store header" or where.startswith(str(data))]  # fmt: skip
    assert hits == [], json.dumps(hits)
    # The broker tightened the data dir it found open (tests/test_files.py for the rules).
    assert (data.stat().st_mode & 0o777, (data / "b.db").stat().st_mode & 0o777) == (0o700, 0o600)


def _wait_for(condition: object, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
