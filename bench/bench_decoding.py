"""What decoding tenants' circuits costs, and what the budgets cost (docs/security.md).

Three parts, medians printed and written with ``--json``:

* parser cost per byte of source, in this process, for OpenQASM 2, OpenQASM 3 and
  cQASM (time and peak-RSS growth of one parse of N gates, each in a fresh child
  process so the peaks do not mask each other) — why the broker parses in workers;
* a decoding worker's round trip (``DecodePool``): a Bell circuit as text, and the
  screen of a QPY blob the connection has not sent before;
* the hostile corpus through a pool with ``max_seconds=3`` and 384 MiB: the answer and
  the time of each case (the 40-level gate bomb, a 10**9 loop, 200k lines of
  OpenQASM 3, 60k lines of cQASM …).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import write_report

from qhpc.resources import (
    CircuitParseError,
    DecodeLimits,
    DecodePool,
    LimitExceeded,
    PayloadError,
    dump_qpy,
    load_circuits,
)

QASM2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
QASM3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
BELL = QASM2 + "qreg q[2];\ncreg c[2];\nh q[0];\ncx q[0], q[1];\nmeasure q -> c;\n"

_PARSE_ONE = """
import resource, sys, time
from qhpc.resources.circuits import _parse
from qhpc.resources.limits import DEFAULT_LIMITS
text = sys.stdin.read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
began = time.perf_counter()
_parse(text, None, None, DEFAULT_LIMITS)
took = time.perf_counter() - began
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def source(fmt: str, gates: int) -> str:
    if fmt == "OpenQASM 2":
        return QASM2 + "qreg q[2];\n" + "cx q[0],q[1];\n" * gates
    if fmt == "OpenQASM 3":
        return QASM3 + "qubit[2] q;\n" + "cx q[0],q[1];\n" * gates
    return "version 3.0\nqubit[2] q\n" + "CNOT q[0], q[1]\n" * gates


def parser_costs(gates: int) -> dict[str, dict[str, float]]:
    costs = {}
    for fmt in ("OpenQASM 2", "OpenQASM 3", "cQASM"):
        text = source(fmt, gates)
        done = subprocess.run(
            [sys.executable, "-c", _PARSE_ONE], input=text, capture_output=True, text=True,
            check=True, timeout=600,
        )  # fmt: skip
        seconds, grown = (float(x) for x in done.stdout.split())
        costs[fmt] = {
            "bytes": len(text), "seconds": seconds, "rss_growth_bytes": grown,
            "us_per_byte": seconds / len(text) * 1e6, "rss_bytes_per_byte": grown / len(text),
        }  # fmt: skip
        print(f"{fmt:11} {len(text):>8} B  {seconds:7.3f} s  {seconds / len(text) * 1e6:6.2f} "
              f"µs/B  {grown / 2**20:7.1f} MB ({grown / len(text):6.0f} B/B)")  # fmt: skip
    return costs


def worker_round_trips(pool: DecodePool, repeats: int) -> dict[str, float]:
    pool.circuits([BELL])  # warm
    text, screen = [], []
    blob = dump_qpy(load_circuits(BELL))
    for _ in range(repeats):
        began = time.perf_counter()
        pool.circuits([BELL])
        text.append(time.perf_counter() - began)
        began = time.perf_counter()
        pool.check_qpy(blob)
        screen.append(time.perf_counter() - began)
    figures = {
        "text_bell_ms": statistics.median(text) * 1e3,
        "qpy_screen_ms": statistics.median(screen) * 1e3,
    }
    print(f"worker: Bell as text {figures['text_bell_ms']:.3f} ms, "
          f"QPY screen {figures['qpy_screen_ms']:.3f} ms (medians of {repeats})")  # fmt: skip
    return figures


def gate_bomb(levels: int) -> str:
    lines = [QASM2, "qreg q[1];\n", "gate g0 a { h a; }\n"]
    lines += [f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}\n" for i in range(1, levels + 1)]
    return "".join([*lines, f"g{levels} q[0];\n"])


def corpus(pool: DecodePool) -> list[dict[str, object]]:
    cases = {
        "nested gate bomb (40 levels)": gate_bomb(40),
        "for loop over 10**9": QASM3 + "qubit[1] q;\nfor int i in [0:1000000000] { x q[0]; }\n",
        "rx(1e308*10)": QASM2 + "qreg q[1];\nrx(1e308*10) q[0];\n",
        "qreg q[100000000]": QASM2 + "qreg q[100000000];\n",
        "200k lines of OpenQASM 3": source("OpenQASM 3", 200_000),
        "60k lines of cQASM": source("cQASM", 60_000),
        "50k nested parentheses": QASM2 + "qreg q[1];\nrx(" + "(" * 50_000 + "1"
        + ")" * 50_000 + ") q[0];\n",
    }  # fmt: skip
    rows = []
    for name, text in cases.items():
        began = time.perf_counter()
        try:
            pool.circuits([text])
            answer = "accepted"
        except LimitExceeded as exc:
            answer = f"refused: {exc.limit}"
        except (CircuitParseError, PayloadError) as exc:
            answer = f"refused: {type(exc).__name__}"
        took = time.perf_counter() - began
        rows.append({"case": name, "answer": answer, "seconds": took})
        print(f"{name:30} {answer:32} {took:6.2f} s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    gates = 5_000 if args.quick else 50_000
    report: dict[str, object] = {"parser_costs": parser_costs(gates)}
    pool = DecodePool(DecodeLimits(max_seconds=3.0, max_memory_bytes=384 * 2**20))
    try:
        pool.start()
        report["worker"] = worker_round_trips(pool, 50 if args.quick else 300)
        report["corpus"] = corpus(pool)
    finally:
        pool.close()
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    main()
