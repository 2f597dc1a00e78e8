"""One job of the scheduling study's Slurm run (``bench/bench_study_slurm.py``).

Runs inside a Slurm job whose QPU session came from qhpc's hooks
(``QHPC_FASTPATH``, ``QHPC_SESSION``). The job's work was drawn by the study's
workload model and is handed over as a JSON *spec*; what happened goes to a JSON
*record* (wall-clock times, ``time.time()``: the driver runs on the same host).

- ``study_job.py hybrid SPEC RECORD``: a client-driven hybrid program. For each
  drawn iteration it runs one task of ``circuits`` Bell circuits through
  ``QPU.from_env()``, then "thinks" for the drawn classical time (modelled
  seconds / ``scale``).
- ``study_job.py batch SPEC RECORD``: a batch job holding an exclusive session:
  its tasks pipelined over the fast path.
- as a job-chain program (``qhpc.slurm.Chain(..., program_args=[SPEC])``):
  ``chain_step`` runs iteration ``step`` of the spec, one quantum block per Slurm
  job, and returns its timings in the checkpoint (the think between blocks
  happens outside the job, in the driver, as in seed 002).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import bell

from qhpc.envvars import FASTPATH_ENV, SESSION_ENV
from qhpc.resources import SamplerTask
from qhpc.resources.codec import encode_payload
from qhpc.session import QPU, FastPathClient


def write_record(path: Path, record: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    partial.rename(path)  # the driver never reads half a record


def hybrid(spec: dict[str, Any]) -> dict[str, Any]:
    circuit = bell()
    qpu = QPU.from_env(timeout=600)
    record: dict[str, Any] = {"started": time.time(), "iterations": []}
    iterations = spec["iterations"]
    for index, (circuits, shots, think) in enumerate(iterations):
        asked = time.time()
        qpu.run([circuit] * circuits, shots=shots)
        record["iterations"].append([asked, time.time()])
        if index + 1 < len(iterations):
            time.sleep(think / spec["scale"])
    qpu.close()
    record["ended"] = time.time()
    return record


def batch(spec: dict[str, Any]) -> dict[str, Any]:
    circuit = bell()
    payloads = [
        encode_payload(SamplerTask(tuple([circuit] * n), shots=spec["shots"]))
        for n in spec["tasks"]
    ]
    with FastPathClient(os.environ[FASTPATH_ENV], os.environ[SESSION_ENV], timeout=600) as client:
        record: dict[str, Any] = {"started": time.time()}
        client.run_many_encoded(payloads, window=64)
        record["done"] = time.time()
    record["ended"] = time.time()
    return record


def chain_step(state: dict[str, Any] | None, step: int, steps: int) -> dict[str, Any]:
    """One block of a chain: iteration ``step`` (1-based) of the spec in ``sys.argv[1]``."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    circuits, shots, _ = spec["iterations"][step - 1]
    qpu = QPU.from_env(timeout=600)
    started = time.time()
    qpu.run([bell()] * circuits, shots=shots)
    done = time.time()
    qpu.close()
    blocks = list((state or {}).get("blocks", []))
    blocks.append({"started": started, "done": done, "ended": time.time()})
    return {"blocks": blocks}


def main() -> None:
    kind, spec_path, record_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    record = hybrid(spec) if kind == "hybrid" else batch(spec)
    write_record(Path(record_path), record)


if __name__ == "__main__":
    main()
