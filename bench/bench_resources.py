"""Resource-layer benchmarks: what one task costs on the local adapters.

Measures, through qhpc's own resource interface (task_start → result):
- aer: one circuit per task vs many circuits batched in one task (per-circuit cost);
- qx: sampling from one final state vs qxelarator's per-shot re-simulation;
- the fixed overhead of a task on aer (tiny circuit, 1 shot) vs a direct Aer run().

Prints medians and ratios; ``--json PATH`` writes them as a report.
Run: ``.venv/bin/python bench/bench_resources.py [--quick] [--json results/resources.json]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from _common import bell
from _report import write_report
from qiskit.circuit.random import random_circuit

from qhpc.resources import AerResource, QxResource, SamplerTask


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    action()  # warm caches (pass managers, simulator objects)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (CI smoke test)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    repeats = 3 if args.quick else 15
    batch_size = 20 if args.quick else 100

    report: dict[str, float] = {}
    aer = AerResource("aer", seed=1)
    circuit = bell()

    single = median_seconds(lambda: aer.run(SamplerTask((circuit,), shots=1000)), repeats)
    batch = tuple(circuit.copy(name=f"c{i}") for i in range(batch_size))
    batched = median_seconds(lambda: aer.run(SamplerTask(batch, shots=1000)), repeats)
    report["aer_single_circuit_task_ms"] = single * 1e3
    report["aer_batched_per_circuit_ms"] = batched / batch_size * 1e3
    report["aer_batching_speedup"] = single / (batched / batch_size)

    from qiskit_aer import AerSimulator

    sim = AerSimulator(method="statevector")
    direct = median_seconds(lambda: sim.run(circuit, shots=1).result(), repeats)
    task = median_seconds(lambda: aer.run(SamplerTask((circuit,), shots=1)), repeats)
    report["aer_direct_run_ms"] = direct * 1e3
    report["aer_task_ms"] = task * 1e3
    report["aer_task_overhead_ms"] = (task - direct) * 1e3
    aer.close()

    qx = QxResource("qx", seed=1)
    wide = random_circuit(10, 20, max_operands=2, measure=True, seed=5)
    shots = 128 if args.quick else 1024
    final_state = median_seconds(lambda: qx.run(SamplerTask((wide,), shots=shots)), repeats)
    import qxelarator

    from qhpc.resources.cqasm import circuit_to_cqasm

    source = circuit_to_cqasm(wide)
    per_shot = median_seconds(
        lambda: qxelarator.execute_string(source, iterations=shots), max(1, repeats // 3)
    )
    report["qx_10q_depth20_final_state_ms"] = final_state * 1e3
    report["qx_10q_depth20_per_shot_ms"] = per_shot * 1e3
    report["qx_final_state_speedup"] = per_shot / final_state
    report["qx_shots"] = shots
    qx.close()

    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value:10.3f}")
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    main()
