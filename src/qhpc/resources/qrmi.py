"""Vendor QPUs through IBM's QRMI (``pip install qrmi``, Rust core).

:class:`QrmiResource` wraps one ``qrmi.QuantumResource`` (IBM, Pasqal, IQM,
Alice & Bob, OQTOPUS) behind qhpc's resource interface. Circuits go to IBM
types as Qiskit primitive inputs (sampler/estimator V2 JSON with OpenQASM 3);
other vendors take native formats (Pulser sequences, IQM JSON …) that qhpc
does not produce, so they raise :class:`UnsupportedPayloadError`.

Facts read from qrmi 0.26 on this machine: ``from_config`` does no network
I/O, but ``status``/``target``/tasks do and may hang on a silent endpoint, so
every vendor call runs in a daemon thread bounded by ``timeout`` (and
``task_wait`` polls every ``poll_interval`` s, not the base class's ms). Results are
the runtime's ``__type__``-tagged JSON; qiskit-ibm-runtime decodes them when
installed, else a small decoder here handles the primitive-result types.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import json
import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import qrmi as _qrmi_package
from qiskit import qasm3
from qiskit.circuit import Gate, Parameter, QuantumCircuit
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.primitives.containers import (
    BitArray,
    DataBin,
    PrimitiveResult,
    PubResult,
    SamplerPubResult,
)

from qhpc.resources.base import QuantumResource, ResourceState, ResourceStatus, TaskStatus
from qhpc.resources.bounded import bounded_call
from qhpc.resources.errors import (
    AcquisitionError,
    PayloadError,
    ResourceConfigError,
    ResourceError,
    TaskFailedError,
    TaskNotFinishedError,
    UnknownTaskError,
    UnsupportedPayloadError,
)
from qhpc.resources.payload import (
    EstimatorResult,
    EstimatorTask,
    Payload,
    SampledCircuit,
    SamplerResult,
    SamplerTask,
    TaskResult,
    normalise_counts,
    validate_payload,
)
from qhpc.resources.target import DeviceTarget

# qrmi is py.typed yet re-exports its Rust core with `import *` and no stubs, so mypy sees
# none of its names; treat the module as untyped.
qrmi: Any = _qrmi_package

#: type strings of ``qrmi_config.json`` (the serde names qrmi 0.26's ``Config.load`` accepts)
QRMI_TYPES: dict[str, Any] = {
    "ibm-quantum-system": qrmi.ResourceType.IBMQuantumSystem,
    "qiskit-runtime-service": qrmi.ResourceType.IBMQiskitRuntimeService,
    "ibm-quantum-compute-service": qrmi.ResourceType.IBMQuantumComputeService,
    "pasqal-cloud": qrmi.ResourceType.PasqalCloud,
    "pasqal-local": qrmi.ResourceType.PasqalLocal,
    "alice-bob-felis": qrmi.ResourceType.AliceBobFelis,
    "iqm-server": qrmi.ResourceType.IQMServer,
    "oqtopus": qrmi.ResourceType.OQTOPUS,
}

# Read from qrmi 0.26's "missing required config key" errors by calling from_config with
# {} and adding each reported key until it succeeded. pasqal-cloud needs none; oqtopus
# could not be probed (its bridge library is not in the wheel), so its list is unknown.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "ibm-quantum-system": ("QRMI_IBM_QS_ENDPOINT", "QRMI_IBM_QS_IAM_APIKEY",
                           "QRMI_IBM_QS_SERVICE_CRN", "QRMI_IBM_QS_IAM_ENDPOINT"),
    "qiskit-runtime-service": ("QRMI_IBM_QRS_ENDPOINT", "QRMI_IBM_QRS_IAM_ENDPOINT",
                               "QRMI_IBM_QRS_IAM_APIKEY", "QRMI_IBM_QRS_SERVICE_CRN"),
    "ibm-quantum-compute-service": ("QRMI_IBM_QCS_ENDPOINT", "QRMI_IBM_QCS_IAM_ENDPOINT",
                                    "QRMI_IBM_QCS_IAM_APIKEY", "QRMI_IBM_QCS_SERVICE_CRN"),
    "pasqal-cloud": (),
    "pasqal-local": ("QRMI_WARDEN_URL", "QRMI_JOB_UID", "QRMI_JOB_ID"),
    "alice-bob-felis": ("QRMI_AB_FELIS_API_KEY", "QRMI_AB_FELIS_BASE_ENDPOINT"),
    "iqm-server": ("QRMI_IQM_ISA_ENDPOINT", "QRMI_IQM_ISA_TOKEN"),
    "oqtopus": (),
}  # fmt: skip

#: types that run Qiskit primitives; the rest want the vendor's own format
IBM_TYPES = frozenset(
    {"ibm-quantum-system", "qiskit-runtime-service", "ibm-quantum-compute-service"}
)
_NATIVE = {
    "pasqal-cloud": "a Pulser sequence (qrmi.Payload.PasqalCloud)",
    "pasqal-local": "a Pulser sequence (qrmi.Payload.PasqalCloud)",
    "iqm-server": "IQM circuit JSON for the device's native gates (qrmi.Payload.IQMServer)",
    "alice-bob-felis": "Felis human-readable QIR (qrmi.Payload.AliceBobFelis)",
    "oqtopus": "an OQTOPUS job spec (qrmi.Payload.Oqtopus)",
}
_TASK_STATES = {"Queued": TaskStatus.QUEUED, "Running": TaskStatus.RUNNING,
                "Completed": TaskStatus.COMPLETED, "Failed": TaskStatus.FAILED,
                "Cancelled": TaskStatus.CANCELLED}  # fmt: skip
#: QRMI's ResourceStatus onto QDMI's words: a paused device is out of service (maintenance)
_RESOURCE_STATES = {"Online": ResourceState.IDLE, "Offline": ResourceState.OFFLINE,
                    "Paused": ResourceState.MAINTENANCE}  # fmt: skip
_KEY_IN_MESSAGE = re.compile(r"\b(QRMI_[A-Z0-9_]+|PASQAL_[A-Z0-9_]+)")


def required_keys(qrmi_type: str) -> tuple[str, ...]:
    """Environment variables qrmi 0.26 insists on for ``qrmi_type`` (oqtopus: unknown, ``()``)."""
    if qrmi_type not in _REQUIRED:
        raise ResourceConfigError(_unknown_type(qrmi_type), key="type")
    return _REQUIRED[qrmi_type]


def _unknown_type(qrmi_type: str) -> str:
    return f"unknown QRMI resource type {qrmi_type!r}; known: {', '.join(QRMI_TYPES)}"


def _enum_name(value: Any) -> str:
    # pyo3 enums print as "TaskStatus.Completed"; the member name is what we map.
    return str(value).rsplit(".", 1)[-1]


def _qasm(circuit: QuantumCircuit) -> str:
    # The export options IBM's primitives use for the runtime's OpenQASM 3 reader.
    switch = qasm3.ExperimentalFeatures.SWITCH_CASE_V1
    return str(
        qasm3.dumps(circuit, disable_constants=True, allow_aliasing=True, experimental=switch)
    )


def sampler_input(task: SamplerTask) -> dict[str, Any]:
    """The sampler V2 program input (ibm-quantum-schemas ``sampler_v2_schema``).

    ``seed`` is not sent: a QPU has no seed to set.
    """
    pubs = [[_qasm(circuit), None, task.shots] for circuit in task.circuits]
    return {"pubs": pubs, "shots": task.shots, "options": {}, "version": 2, "support_qiskit": True}


def estimator_input(task: EstimatorTask) -> dict[str, Any]:
    """The estimator V2 program input (``estimator_v2_schema``): one pub of shape (P, O).

    Observables go as a 1×O array and parameter sets as P×1 rows, so the runtime broadcasts
    them to ``evs[p][o]``. ``shots`` maps to ``precision = 1/sqrt(shots)`` (the runtime picks
    shots from a target standard error); ``shots=None`` omits it and takes IBM's default.
    """
    circuit = task.circuit.remove_final_measurements(inplace=False)
    if circuit.num_parameters:
        # qasm3 renames parameters (θ[0] → _θ_0_) and the runtime binds by the re-read
        # circuit's sorted names; zero-padded ASCII names keep our column order intact.
        circuit = circuit.assign_parameters(
            {p: Parameter(f"qhpc_p{i:05d}") for i, p in enumerate(circuit.parameters)}
        )
    observables = [_pauli_dict(op, i) for i, op in enumerate(task.observables)]
    rows = [[list(row)] for row in task.parameter_values]
    precision = None if task.shots is None else 1 / math.sqrt(task.shots)
    body: dict[str, Any] = {
        "pubs": [[_qasm(circuit), [observables], rows, precision]],
        "options": {},
        "version": 2,
        "support_qiskit": True,
    }
    if precision is not None:
        body["precision"] = precision
    return body


def _pauli_dict(op: Any, index: int) -> dict[str, float]:
    terms: dict[str, complex] = {}
    for label, coeff in op.to_list():
        terms[label] = terms.get(label, 0) + complex(coeff)
    if any(abs(c.imag) > 1e-12 for c in terms.values()):
        raise PayloadError(f"observable {index} has complex coefficients; it is not Hermitian")
    return {label: c.real for label, c in terms.items()}


class QrmiResource(QuantumResource):
    """One QRMI resource; ``name`` is also the vendor backend name unless ``backend`` is given.

    ``num_qubits`` is the width assumed when the vendor target is not IBM's backend
    configuration (0 = unknown: payload width is then not checked locally). ``max_shots`` caps
    shots even below the vendor's limit. ``timeout`` bounds every vendor call in seconds.
    """

    type_name = "qrmi"
    remembers_tasks = True
    #: seconds between status polls in task_wait (vendors rate-limit their APIs)
    poll_interval = 2.0

    def __init__(
        self,
        name: str,
        qrmi_type: str,
        environment: Mapping[str, str],
        *,
        num_qubits: int | None = None,
        max_shots: int = 100_000,
        timeout: float = 30.0,
        backend: str | None = None,
    ) -> None:
        super().__init__(name)
        if qrmi_type not in QRMI_TYPES:
            raise ResourceConfigError(_unknown_type(qrmi_type), resource=name, key="type")
        for key, value in environment.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ResourceConfigError("environment values must be strings", name, str(key))
        limits = {"num_qubits": num_qubits or 1, "max_shots": max_shots, "timeout": timeout}
        for option, number in limits.items():
            if number <= 0:
                raise ResourceConfigError(f"{option} must be positive", name, option)
        self.qrmi_type = qrmi_type
        self.backend = backend or name
        self.num_qubits = num_qubits
        self.max_shots = max_shots
        self.timeout = timeout
        self._env = dict(environment)
        # Endpoints help debugging; every other value (keys, tokens, CRNs) is redacted.
        secret = [
            v
            for k, v in self._env.items()
            if len(v) >= 4 and ("@" in v or not k.endswith(("ENDPOINT", "URL")))
        ]
        self._secrets = sorted(secret, key=len, reverse=True)
        self._target: DeviceTarget | None = None
        self._tasks: dict[str, Payload] = {}
        self._lock = threading.Lock()
        try:  # no I/O: qrmi only reads the dict here (checked against a listening socket)
            self._qrmi = qrmi.QuantumResource.from_config(
                self.backend, QRMI_TYPES[qrmi_type], self._env
            )
        except Exception as exc:
            # `from None`: qrmi's own message can quote a value (e.g. QRMI_JOB_UID).
            message = self._redact(str(exc))
            match = _KEY_IN_MESSAGE.search(message)
            key = match.group(1) if match else "type"
            raise ResourceConfigError(
                f"qrmi rejected the {qrmi_type} configuration: {message}", resource=name, key=key
            ) from None

    def __repr__(self) -> str:
        return (
            f"QrmiResource(name={self.name!r}, qrmi_type={self.qrmi_type!r}, "
            f"variables={sorted(self._env)!r})"
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def _call(self, what: str, method: Callable[..., Any], *args: Any) -> Any:
        try:
            return bounded_call(method, args, self.timeout, "qrmi-call")
        except TimeoutError as exc:
            message = f"{self.name}: {what}: {exc} (the vendor may still act on it)"
            raise TaskFailedError(message) from None
        except qrmi.TaskNotFoundError as exc:
            raise UnknownTaskError(f"{self.name}: {self._redact(str(exc))}") from None
        except qrmi.TaskNotReadyError as exc:
            raise TaskNotFinishedError(f"{self.name}: {self._redact(str(exc))}") from None
        except Exception as exc:
            raise TaskFailedError(f"{self.name}: {what} failed: {self._redact(str(exc))}") from None

    def metadata(self) -> dict[str, Any]:
        # Variable names only: the values are credentials.
        return super().metadata() | {
            "qrmi_type": self.qrmi_type,
            "backend": self.backend,
            "variables": sorted(self._env),
        }

    def acquire(self) -> str:
        try:
            return str(self._call("acquire", self._qrmi.acquire))
        except TaskFailedError as exc:
            raise AcquisitionError(str(exc)) from None

    def release(self, token: str) -> None:
        try:
            self._call("release", self._qrmi.release, token)
        except TaskFailedError as exc:
            raise AcquisitionError(str(exc)) from None

    def status(self) -> ResourceStatus:
        try:
            raw = self._call("status", self._qrmi.status)
        except ResourceError as exc:  # unreachable is a state, not an error, for the broker
            return ResourceStatus(ResourceState.OFFLINE, busy=False, pending=0, reason=str(exc))
        state = _RESOURCE_STATES.get(_enum_name(raw.status), ResourceState.OFFLINE)
        reason = str(raw.status_reason or "")
        if getattr(raw, "healthy", None) is False:
            reason = f"unhealthy; {reason}" if reason else "unhealthy"
        busy = bool(raw.busy)
        if busy and state is ResourceState.IDLE:
            state = ResourceState.BUSY
        return ResourceStatus(state, busy, int(raw.pending_job_count or 0), reason)

    def target(self) -> DeviceTarget:
        """The vendor's target (cached); a provisional, uncached one while unreachable."""
        if self._target is not None:
            return self._target
        try:
            text = str(self._call("target", self._qrmi.target).value)
        except ResourceError as exc:
            return self._assumed_target({"provisional": True, "reason": str(exc)})
        parsed = _ibm_target(self.name, text, self.max_shots)
        self._target = parsed or self._assumed_target({"vendor_format": self.qrmi_type})
        return self._target

    def _assumed_target(self, extra: dict[str, Any]) -> DeviceTarget:
        return DeviceTarget(
            self.name,
            self.num_qubits or 0,
            max_shots=self.max_shots,
            extra={"qrmi_type": self.qrmi_type, **extra},
        )

    def build_payload(self, payload: Payload) -> Any:
        """The ``qrmi.Payload`` for ``payload``; pure (no I/O), usable without a vendor."""
        if self.qrmi_type not in IBM_TYPES:
            raise UnsupportedPayloadError(
                f"{self.name}: QRMI type {self.qrmi_type!r} takes {_NATIVE[self.qrmi_type]}, "
                "not gate circuits; qhpc submits circuits only to IBM QRMI types"
            )
        try:
            if isinstance(payload, SamplerTask):
                body, program = sampler_input(payload), "sampler"
            else:
                body, program = estimator_input(payload), "estimator"
        except PayloadError:
            raise
        except Exception as exc:  # the qasm3 exporter rejects e.g. initialize()
            raise UnsupportedPayloadError(f"{self.name}: cannot write OpenQASM 3: {exc}") from exc
        return qrmi.Payload.QiskitPrimitive(input=json.dumps(body), program_id=program)

    def task_start(self, payload: Payload) -> str:
        qrmi_payload = self.build_payload(payload)
        target = self.target()
        if target.num_qubits == 0:  # width unknown: still check shots and circuit count
            target = replace(target, num_qubits=payload.num_qubits)
        validate_payload(payload, target)
        task_id = str(self._call("task_start", self._qrmi.task_start, qrmi_payload))
        with self._lock:
            self._tasks[task_id] = payload
        return task_id

    def task_wait(self, task_id: str, timeout: float | None = None) -> TaskStatus:
        """As the base class, but polling every ``poll_interval`` s: each poll is an API call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (status := self.task_status(task_id)).is_final:
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(self.poll_interval, left))
        return status

    def task_stop(self, task_id: str) -> None:
        self._call("task_stop", self._qrmi.task_stop, task_id)

    def task_status(self, task_id: str) -> TaskStatus:
        raw = self._call("task_status", self._qrmi.task_status, task_id)
        return _TASK_STATES.get(_enum_name(raw), TaskStatus.FAILED)

    def task_logs(self, task_id: str) -> str:
        return str(self._call("task_logs", self._qrmi.task_logs, task_id))

    def task_result_raw(self, task_id: str) -> str:
        """The vendor's result text as returned (IBM: RuntimeEncoder JSON)."""
        return str(self._call("task_result", self._qrmi.task_result, task_id).value)

    def task_result(self, task_id: str) -> TaskResult:
        status = self.task_status(task_id)
        if not status.is_final:
            raise TaskNotFinishedError(f"{self.name}: task {task_id} is {status}")
        if status is not TaskStatus.COMPLETED:
            raise TaskFailedError(f"{self.name}: task {task_id} {status}; see task_logs()")
        with self._lock:
            payload = self._tasks.get(task_id)
        return decode_result(
            self.task_result_raw(task_id), payload, where=f"{self.name}: task {task_id}: "
        )


def _ibm_target(name: str, text: str, max_shots: int) -> DeviceTarget | None:
    """A target from IBM's ``{"configuration": …, "properties": …}`` JSON; None otherwise.

    Only the configuration is read (width, gates, coupling, limits); error rates stay 0.
    """
    try:
        data = json.loads(text)
        config = data.get("configuration", data)
        if not {"n_qubits", "basis_gates", "coupling_map"} <= config.keys():
            return None
        known = get_standard_gate_name_mapping()
        return DeviceTarget(
            name=name,
            num_qubits=int(config["n_qubits"]),
            # gates only: "delay", "measure", "if_else" … are instructions DeviceTarget adds itself
            basis_gates=tuple(g for g in config["basis_gates"] if isinstance(known.get(g), Gate)),
            coupling_map=tuple((int(a), int(b)) for a, b in config["coupling_map"] or ()),
            max_shots=min(int(config.get("max_shots", max_shots)), max_shots),
            max_circuits=int(config.get("max_experiments", 300)),
            extra={"backend_name": config.get("backend_name", name)},
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _runtime_object(obj: dict[str, Any]) -> Any:
    """``json`` object hook for the runtime's ``{"__type__", "__value__"}`` encoding."""
    kind = obj.get("__type__")
    value: Any = obj.get("__value__")
    if kind == "ndarray":
        if not isinstance(value, str):
            return np.asarray(value)
        try:  # base64 of zlib-compressed np.save bytes; other strings are option names
            raw = zlib.decompress(base64.standard_b64decode(value))
        except (binascii.Error, zlib.error, ValueError):
            return value
        return np.load(io.BytesIO(raw), allow_pickle=False)
    if kind == "complex":
        return complex(value[0], value[1])
    if kind == "BitArray":
        return BitArray(value["array"], value["num_bits"])
    if kind == "DataBin":
        return DataBin(shape=tuple(value.get("shape") or ()), **value["fields"])
    if kind == "SamplerPubResult":
        return SamplerPubResult(value["data"], value.get("metadata"))
    if kind in ("PubResult", "EstimatorPubResult"):
        return PubResult(value["data"], value.get("metadata"))
    if kind == "PrimitiveResult":
        return PrimitiveResult(value["pub_results"], value.get("metadata"))
    return obj  # datetimes, execution spans …: metadata we do not read


def decode_result(raw: str, payload: Payload | None, where: str = "") -> TaskResult:
    """Our result from a runtime primitive result; ``payload`` (if known) fixes widths/shapes.

    Uses qiskit-ibm-runtime's ``RuntimeDecoder`` when installed, else :func:`_runtime_object`.
    """
    try:
        runtime: Any = importlib.import_module("qiskit_ibm_runtime")
    except ImportError:
        runtime = None
    try:
        if runtime is not None:
            decoded = json.loads(raw, cls=runtime.RuntimeDecoder)
        else:
            decoded = json.loads(raw, object_hook=_runtime_object)
        if not isinstance(decoded, PrimitiveResult) or len(decoded) == 0:
            raise TypeError(f"expected a PrimitiveResult, got {type(decoded).__name__}")
        if all("evs" in pub.data for pub in decoded):
            return _estimator_result(decoded[0], payload)
        return _sampler_result(list(decoded), payload)
    except Exception as exc:
        raise TaskFailedError(
            f"{where}cannot decode the result ({exc}); the raw JSON is available from "
            "task_result_raw(), and installing qiskit-ibm-runtime enables its decoder"
        ) from exc


def _sampler_result(pubs: list[Any], payload: Payload | None) -> SamplerResult:
    task = payload if isinstance(payload, SamplerTask) else None
    circuits = []
    for index, pub in enumerate(pubs):
        bits = pub.join_data() if isinstance(pub, SamplerPubResult) else None
        if not isinstance(bits, BitArray):
            raise TypeError(f"pub {index} holds no measured bits")
        width = task.circuits[index].num_clbits if task else bits.num_bits
        memory = None
        if task is not None and task.memory:
            memory = tuple(s.zfill(width) for s in bits.get_bitstrings())
        counts = normalise_counts(bits.get_counts(), width)
        circuits.append(SampledCircuit(counts, bits.num_shots, width, memory))
    return SamplerResult(tuple(circuits), {"source": "qrmi"})


def _estimator_result(pub: Any, payload: Payload | None) -> EstimatorResult:
    task = payload if isinstance(payload, EstimatorTask) else None
    evs = np.asarray(pub.data["evs"], dtype=float)
    stds = np.asarray(pub.data["stds"], dtype=float) if "stds" in pub.data else evs * math.nan
    shape = (len(task.parameter_values), len(task.observables)) if task else (-1, evs.shape[-1])
    values, errors = evs.reshape(shape), np.broadcast_to(stds, evs.shape).reshape(shape)
    return EstimatorResult(
        tuple(tuple(float(v) for v in row) for row in values),
        tuple(tuple(float(v) for v in row) for row in errors),
        task.shots if task else None,
        {"source": "qrmi"},
    )


def load_qrmi_config(path: str | Path, *, timeout: float = 30.0) -> list[QrmiResource]:
    """Resources of an IBM ``qrmi_config.json`` (``{"resources": [{name, type, environment}]}``).

    Read with ``json`` rather than ``qrmi.Config.load``: qrmi's serde errors name neither the
    resource nor the file, and it silently keeps the last of two same-named resources.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResourceConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ResourceConfigError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("resources"), list):
        raise ResourceConfigError(
            f'{path}: expected an object with a "resources" list', key="resources"
        )
    resources: list[QrmiResource] = []
    for index, entry in enumerate(data["resources"]):
        label = f"resources[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]:
            label = entry["name"]
        if not isinstance(entry, dict):
            raise ResourceConfigError(f"{path}: each resource must be an object", label)
        for key, kind in (("name", str), ("type", str), ("environment", dict)):
            value = entry.get(key)
            if not isinstance(value, kind) or (kind is str and not value):
                raise ResourceConfigError(
                    f"{path}: {key!r} missing or not a {kind.__name__}", label, key
                )
        if entry.get("is_dynamic"):
            raise ResourceConfigError(
                f"{path}: dynamic discovery is not supported; list each "
                "backend as its own resource",
                label,
                "is_dynamic",
            )
        if any(r.name == label for r in resources):
            raise ResourceConfigError(f"{path}: defined twice", label, "name")
        try:
            resources.append(
                QrmiResource(label, entry["type"], entry["environment"], timeout=timeout)
            )
        except ResourceConfigError as exc:
            raise ResourceConfigError(f"{path}: {exc.detail}", exc.resource, exc.key) from None
    return resources
