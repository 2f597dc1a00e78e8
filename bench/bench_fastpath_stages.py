"""Where a session task's round trip goes, stage by stage, on both session paths.

Timestamps each stage of one session task on the instant ``null`` resource (SQLite
store) by wrapping the broker's own functions, for the ZeroMQ fast path
(client-driven programs) and the direct Unix-socket channel (co-located programs).
The client loop runs in a separate process, as a real program would; clocks are
the machine's monotonic clock, so the stamps of both processes compare.

Stages: client → broker (until the server's handler starts), decode (the
per-connection payload cache), admission (session checks, task record, may it run
now), run (the resource, inline on the server's thread when idle), result
encoding, journal log (the write that makes releasing the result safe), broker →
client (handler end → the client has the reply). The journal's group commit is
off the path, in a committer process (qhpc.store.committer); the wall time the
journal's thread waits for it, per task, is shown apart (waiting on a pipe does
not hold the broker's interpreter lock). Prints medians in µs; ``--json PATH``
writes them.

Run: ``.venv/bin/python bench/bench_fastpath_stages.py [--tasks N] [--json results/stages.json]``
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qhpc.api import fastpath
from qhpc.broker import admission, dispatch, executor, journal, service
from qhpc.resources import ResourceRegistry, ResourceSpec, codec
from qhpc.store import CommitterProcess, Store

Marks = dict[str, list[tuple[float, float]]]
LABELS = {
    "decode": "decode (payload cache)",
    "admission": "admission (checks, task record)",
    "encode": "result encoding",
    "log": "journal log (release point)",
}
COMMIT = "group commit, wall per task (committer process, off the path)"

CLIENT = """
import json, sys, time
from qhpc.session import open_channel as connect
sys.path.insert(0, sys.argv[4])
from bench_broker import payload_bytes
client = connect(sys.argv[1], sys.argv[2])
data = payload_bytes()
spans = []
for _ in range(int(sys.argv[3])):
    started = time.perf_counter()
    client.run_encoded(data)
    spans.append((started, time.perf_counter()))
client.close()
json.dump(spans, sys.stdout)
"""


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


def stages_of(path: str, tasks: int, in_process: bool = False) -> dict[str, float]:
    marks: Marks = collections.defaultdict(list)
    handler = (fastpath.FastPathServer, "_run") if path == "fast path" else (
        dispatch.DirectDispatcher, "_run_frame")  # fmt: skip
    originals = [
        (owner, name, getattr(owner, name))
        for owner, name in (
            handler,
            (codec.PayloadDecoder, "decode"),
            (admission, "encoded"),
            (executor.ResourceExecutor, "run_one"),
            (executor, "encode_result"),
            (journal.Journal, "append"),
            (CommitterProcess, "record_finished_tasks"),
            (journal.InProcess, "record_finished_tasks"),
        )
    ]
    wrap(*handler, "handler", marks)
    wrap(codec.PayloadDecoder, "decode", "decode", marks)
    wrap(admission, "encoded", "admission", marks)
    wrap(executor.ResourceExecutor, "run_one", "run", marks)
    wrap(executor, "encode_result", "encode", marks)
    wrap(journal.Journal, "append", "log", marks)
    wrap(CommitterProcess, "record_finished_tasks", "commit", marks)
    wrap(journal.InProcess, "record_finished_tasks", "commit", marks)
    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    try:
        with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "s.db") as store:
            config = service.BrokerConfig(policy="fifo", commit_in_process=in_process)
            broker = service.Broker(store, registry, config)
            broker.start()
            server: Any = (
                fastpath.FastPathServer(broker).start()
                if path == "fast path"
                else dispatch.DirectDispatcher(broker)
            )
            try:
                session, token = broker.open_session(
                    user="bench", account="bench", resource="null", deadline=time.time() + 3600
                )
                output = subprocess.run(
                    [sys.executable, "-c", CLIENT, server.endpoint, token, str(tasks),
                     str(Path(__file__).resolve().parent)],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                broker.journal.flush()
                committed = len(store.tasks_of_job(session.session_id))
            finally:
                server.stop()
                broker.stop()
    finally:
        registry.close()
        for owner, name, original in originals:
            setattr(owner, name, original)
    spans = json.loads(output)
    stages: dict[str, list[float]] = collections.defaultdict(list)
    for start, end in spans[len(spans) // 5 :]:  # skip warm-up
        handled = first_after(marks["handler"], start)
        inner = {k: first_after(marks[k], handled[0]) for k in
                 ("decode", "admission", "run", "encode", "log")}  # fmt: skip
        stages["client → broker"].append(handled[0] - start)
        for key, label in LABELS.items():
            stages[label].append(inner[key][1] - inner[key][0])
        run = inner["run"][1] - inner["run"][0]
        stages["run incl. encoding and log"].append(run)
        stages["broker handler in all"].append(handled[1] - handled[0])
        stages["broker → client"].append(end - handled[1])
        stages["whole round trip"].append(end - start)
    report = {name: statistics.median(values) * 1e6 for name, values in stages.items()}
    commits = marks["commit"]
    if commits and committed:
        report[COMMIT] = sum(e - s for s, e in commits) / committed * 1e6
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument(
        "--commit-in-process",
        action="store_true",
        help="the journal commits on the broker's own interpreter (as before the committer "
        "process), for comparison",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    found = {
        path: stages_of(path, args.tasks, args.commit_in_process)
        for path in ("fast path", "direct channel")
    }
    for path, report in found.items():
        print(path)
        for name, value in report.items():
            kind = "" if name == COMMIT else "median "
            print(f"  {name:<44} {kind}{value:8.1f} µs")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()
