"""Where a fast-path session task's round trip goes, stage by stage.

Timestamps each stage of one session task on the instant ``null`` resource (SQLite
store) by wrapping the broker's own functions: client → server, admission
(decode + submit), executor pick-up, the run (executor + the resource's worker
thread), the journal's commit, and the reply. Prints medians in ms;
``--json PATH`` writes them.

Run: ``.venv/bin/python bench/bench_fastpath_stages.py [--tasks N] [--json results/stages.json]``
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_broker import payload_bytes

from qhpc.api import fastpath
from qhpc.broker import service
from qhpc.resources import ResourceRegistry, ResourceSpec
from qhpc.store import Store

Marks = dict[str, list[tuple[float, float]]]


def wrap(owner: Any, name: str, label: str, marks: Marks) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            marks[label].append((started, time.perf_counter()))

    setattr(owner, name, timed)


def first_after(spans: list[tuple[float, float]], t: float) -> tuple[float, float]:
    index = bisect.bisect_left([start for start, _ in spans], t)
    return spans[min(index, len(spans) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    marks: Marks = collections.defaultdict(list)
    wrap(fastpath.FastPathServer, "_run", "admission", marks)
    wrap(service.Broker, "_run_one", "run", marks)
    wrap(Store, "record_finished_tasks", "commit", marks)
    wrap(fastpath.FastPathServer, "_send_finished", "reply", marks)
    wrap(fastpath.FastPathClient, "run_encoded", "client", marks)

    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "s.db") as store:
        broker = service.Broker(store, registry, service.BrokerConfig(policy="fifo"))
        broker.start()
        server = fastpath.FastPathServer(broker).start()
        try:
            _, token = broker.open_session(
                user="bench", account="bench", resource="null", deadline=time.time() + 3600
            )
            client = fastpath.FastPathClient(server.endpoint, token)
            data = payload_bytes()
            for _ in range(args.tasks):
                client.run_encoded(data)
            client.close()
        finally:
            server.stop()
            broker.stop()
            registry.close()

    stages: dict[str, list[float]] = collections.defaultdict(list)
    for start, end in marks["client"][len(marks["client"]) // 5 :]:  # skip warm-up
        admit = first_after(marks["admission"], start)
        run = first_after(marks["run"], admit[0])
        commit = first_after(marks["commit"], run[0])
        reply = first_after(marks["reply"], commit[1])
        stages["client → server"].append(admit[0] - start)
        stages["admission (decode + submit)"].append(admit[1] - admit[0])
        stages["executor pick-up"].append(run[0] - admit[1])
        stages["run (executor + resource worker)"].append(run[1] - run[0])
        stages["journal commit"].append(commit[1] - commit[0])
        stages["commit → reply sent"].append(reply[1] - commit[1])
        stages["whole round trip"].append(end - start)
    report = {name: statistics.median(values) * 1e3 for name, values in stages.items()}
    for name, value in report.items():
        print(f"{name:<36} median {value:7.3f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
