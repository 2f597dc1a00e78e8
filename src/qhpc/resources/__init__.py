"""QRMI-shaped quantum resources: the interface, payloads, adapters and configuration.

The public surface of the room; other rooms import only these names. Adapters
(aer, emulator, qx, qrmi) are built from configuration by ``load_registry`` or
imported from their modules.
"""

from qhpc.resources.aer import (
    AerResource,
)
from qhpc.resources.base import (
    QuantumResource,
    ResourceState,
    ResourceStatus,
    TaskStatus,
)
from qhpc.resources.circuits import (
    CircuitFormat,
    detect_format,
    dump_circuit,
    load_circuit,
    load_circuits,
)
from qhpc.resources.codec import (
    MAX_PAYLOAD_BYTES,
    PayloadDecoder,
    decode_payload,
    decode_result,
    dump_qpy,
    encode_payload,
    encode_result,
    load_qpy,
)
from qhpc.resources.config import (
    ResourceRegistry,
    ResourceSpec,
    ResourceType,
    load_registry,
    resource_types,
)
from qhpc.resources.decoding import (
    DecodePool,
    DecoderUnavailable,
    shared_pool,
)
from qhpc.resources.emulator import (
    CalibrationSchedule,
    EmulatorResource,
    ManualClock,
    ScaledClock,
    TimingModel,
    Window,
)
from qhpc.resources.errors import (
    AcquisitionError,
    CircuitParseError,
    LimitExceeded,
    PayloadError,
    ResourceConfigError,
    ResourceError,
    TaskFailedError,
    TaskNotFinishedError,
    UnknownResourceError,
    UnknownTaskError,
    UnsupportedCircuitError,
    UnsupportedPayloadError,
)
from qhpc.resources.limits import (
    DEFAULT_LIMITS,
    DecodeLimits,
    measure_circuits,
)
from qhpc.resources.local import (
    LocalResource,
    circuit_key,
    observable_key,
)
from qhpc.resources.null import (
    NullResource,
)
from qhpc.resources.payload import (
    EstimatorResult,
    EstimatorTask,
    Payload,
    SampledCircuit,
    SamplerResult,
    SamplerTask,
    TaskResult,
    result_from_dict,
    validate_payload,
)
from qhpc.resources.pools import (
    DEFAULT_POOL_POLICY,
    POOL_POLICIES,
    PoolSpec,
)
from qhpc.resources.proxy import (
    PROXY_SEGMENT,
    AllowRule,
    ProxySpec,
    parse_proxy,
)
from qhpc.resources.qir import (
    QIR_ENTRY_METADATA,
    QIR_METADATA,
    check_qir_metadata,
    drop_qir_metadata,
    qir_to_circuits,
)
from qhpc.resources.qrmi import (
    QrmiResource,
)
from qhpc.resources.qx import (
    QxResource,
)
from qhpc.resources.target import (
    DeviceTarget,
    device_target,
)
from qhpc.resources.types import ENTRY_POINT_GROUP

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_POOL_POLICY",
    "ENTRY_POINT_GROUP",
    "MAX_PAYLOAD_BYTES",
    "POOL_POLICIES",
    "PROXY_SEGMENT",
    "QIR_ENTRY_METADATA",
    "QIR_METADATA",
    "AcquisitionError",
    "AerResource",
    "AllowRule",
    "CalibrationSchedule",
    "CircuitFormat",
    "CircuitParseError",
    "DecodeLimits",
    "DecodePool",
    "DecoderUnavailable",
    "DeviceTarget",
    "EmulatorResource",
    "EstimatorResult",
    "EstimatorTask",
    "LimitExceeded",
    "LocalResource",
    "ManualClock",
    "NullResource",
    "Payload",
    "PayloadDecoder",
    "PayloadError",
    "PoolSpec",
    "ProxySpec",
    "QrmiResource",
    "QuantumResource",
    "QxResource",
    "ResourceConfigError",
    "ResourceError",
    "ResourceRegistry",
    "ResourceSpec",
    "ResourceState",
    "ResourceStatus",
    "ResourceType",
    "SampledCircuit",
    "SamplerResult",
    "SamplerTask",
    "ScaledClock",
    "TaskFailedError",
    "TaskNotFinishedError",
    "TaskResult",
    "TaskStatus",
    "TimingModel",
    "UnknownResourceError",
    "UnknownTaskError",
    "UnsupportedCircuitError",
    "UnsupportedPayloadError",
    "Window",
    "check_qir_metadata",
    "circuit_key",
    "decode_payload",
    "decode_result",
    "detect_format",
    "device_target",
    "drop_qir_metadata",
    "dump_circuit",
    "dump_qpy",
    "encode_payload",
    "encode_result",
    "load_circuit",
    "load_circuits",
    "load_qpy",
    "load_registry",
    "measure_circuits",
    "observable_key",
    "parse_proxy",
    "qir_to_circuits",
    "resource_types",
    "result_from_dict",
    "shared_pool",
    "validate_payload",
]
