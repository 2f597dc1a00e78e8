"""REST under load: many concurrent clients against a real ``qhpc serve``, on loopback.

A broker process (``qhpc serve``, SQLite in a temp dir or ``--db postgresql://…``,
one ``null`` resource so only the broker's own cost is measured) and ``--processes``
client processes with ``--threads`` threads each (default 4 × 16 = 64 clients), each
thread with its own keep-alive connection looping *submit → status → result* for
``--seconds`` (default 60). Reported: requests and errors by kind, p50/p99 latency of
each call, jobs completed, and the broker's RSS before the load, at its end and once
the queue has drained (the issue's goal: submit p99 ≤ 250 ms, 0 errors, RSS back
within 10 % of its start).

Bounded in count and time: the clients stop at the deadline, each request has a
timeout, and every process started here is stopped by pid at the end.

Run: ``.venv/bin/python bench/bench_rest_load.py [--quick] [--db URL] [--json PATH]``
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import bell
from _report import write_report

from qhpc.resources import SamplerTask
from qhpc.resources.codec import encode_payload

#: the issue's goals
SUBMIT_P99_GOAL_S = 0.250
RSS_GOAL_RATIO = 1.10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def client_loop(
    url: str, token: str, deadline: float, payload: str, out: Any, process: int
) -> None:
    """One client process: ``threads`` loops of submit → status → result."""
    threads_per_process = int(os.environ.get("QHPC_BENCH_THREADS", "16"))
    samples: dict[str, list[float]] = {"submit": [], "status": [], "result": []}
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def loop() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        body = {"resource": "null", "payloads": [payload], "account": "bench"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            while time.monotonic() < deadline:
                try:
                    started = time.perf_counter()
                    answer = http.post("/v1/jobs", json=body)
                    took = time.perf_counter() - started
                    if answer.status_code != 201:
                        raise RuntimeError(f"submit {answer.status_code}")
                    job = answer.json()["job_id"]
                    statuses, final_by = [], time.monotonic() + 30
                    while True:  # polled as a client would, until the job is final
                        started = time.perf_counter()
                        state = http.get(f"/v1/jobs/{job}")
                        statuses.append(time.perf_counter() - started)
                        if state.status_code != 200:
                            raise RuntimeError(f"status {state.status_code}")
                        if state.json()["state"] in ("completed", "failed", "cancelled"):
                            break
                        if time.monotonic() > final_by:
                            raise RuntimeError("not final in 30 s")
                        time.sleep(0.02)
                    started = time.perf_counter()
                    result = http.get(f"/v1/jobs/{job}/results")
                    took_result = time.perf_counter() - started
                    if result.status_code != 200 or result.json()["tasks"][0]["result"] is None:
                        raise RuntimeError(f"result {result.status_code}")
                    with lock:
                        samples["submit"].append(took)
                        samples["status"] += statuses
                        samples["result"].append(took_result)
                except Exception as exc:  # counted, never fatal: the bench reports them
                    kind = str(exc).split(":")[0][:40] or type(exc).__name__
                    with lock:
                        errors[kind] = errors.get(kind, 0) + 1

    workers = [threading.Thread(target=loop) for _ in range(threads_per_process)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((process, samples, errors))


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"n": len(ordered), "p50_ms": statistics.median(ordered) * 1e3, "p99_ms": p99 * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="2 × 4 clients for 10 s")
    parser.add_argument("--db", default=None, help="store URL (default: SQLite in a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.processes, args.threads, args.seconds = 2, 4, 10.0
    work = Path(tempfile.mkdtemp(prefix="qhpc-rest-load-"))
    config = work / "resources.toml"
    config.write_text('[resources.null]\ntype = "null"\n')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "qhpc.cli", "serve", "--config", str(config),
         "--db", args.db or str(work / "state" / "qhpc.db"), "--port", str(port),
         "--fastpath", f"tcp://127.0.0.1:{free_port()}", "--policy", "fifo",
         "--admin-token-file", str(work / "admin.token"), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("qhpc serve did not come up")
            time.sleep(0.2)
        token = (work / "admin.token").read_text().strip()
        payload = base64.b64encode(encode_payload(SamplerTask((bell(),), shots=10))).decode()
        rss_start = rss_bytes(server.pid)
        os.environ["QHPC_BENCH_THREADS"] = str(args.threads)
        out: Any = multiprocessing.get_context("spawn").Queue()
        stop_at = time.monotonic() + args.seconds
        clients = [
            multiprocessing.get_context("spawn").Process(
                target=client_loop, args=(url, token, stop_at, payload, out, n)
            )
            for n in range(args.processes)
        ]
        for client in clients:
            client.start()
        results = [out.get(timeout=args.seconds + 300) for _ in clients]
        for client in clients:
            client.join(timeout=60)
        rss_loaded = rss_bytes(server.pid)
        time.sleep(5)  # the queue drains, the allocator settles
        rss_drained = rss_bytes(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    merged: dict[str, list[float]] = {"submit": [], "status": [], "result": []}
    errors: dict[str, int] = {}
    for _, samples, errs in results:
        for call, values in samples.items():
            merged[call] += values
        for kind, count in errs.items():
            errors[kind] = errors.get(kind, 0) + count
    clients_n = args.processes * args.threads
    report = {
        "clients": clients_n, "seconds": args.seconds,
        "store": "postgresql" if args.db else "sqlite",
        "calls": {call: quantiles(values) for call, values in merged.items()},
        "jobs_completed": len(merged["result"]), "errors": errors,
        "rss_mb": {"start": rss_start / 2**20, "loaded": rss_loaded / 2**20,
                   "drained": rss_drained / 2**20},
        "goals": {
            "submit_p99_ms": SUBMIT_P99_GOAL_S * 1e3,
            "rss_drained_over_start": RSS_GOAL_RATIO,
        },
    }  # fmt: skip
    submit = report["calls"]["submit"]
    ratio = rss_drained / rss_start if rss_start else float("nan")
    print(f"{clients_n} clients for {args.seconds:g} s ({report['store']}): "
          f"{report['jobs_completed']} jobs, errors {errors or 0}")  # fmt: skip
    for call, stats in report["calls"].items():
        if stats.get("n"):
            print(f"  {call:7s} p50 {stats['p50_ms']:8.1f} ms   p99 {stats['p99_ms']:8.1f} ms")
    print(f"  broker RSS {rss_start / 2**20:.0f} → {rss_loaded / 2**20:.0f} MB loaded → "
          f"{rss_drained / 2**20:.0f} MB drained ({ratio:.2f}× start)")  # fmt: skip
    met = submit.get("p99_ms", float("inf")) <= SUBMIT_P99_GOAL_S * 1e3 and not errors
    print(f"  goal submit p99 ≤ {SUBMIT_P99_GOAL_S * 1e3:.0f} ms, 0 errors: "
          f"{'met' if met else 'NOT met'}; RSS ≤ {RSS_GOAL_RATIO:.2f}× start: "
          f"{'met' if ratio <= RSS_GOAL_RATIO else 'NOT met'}")  # fmt: skip
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    main()
