"""The broker: admission, scheduling policies, executors, sessions, reservations, accounting.

Public surface; other rooms import only these names.
"""

from qhpc.broker.admission_control import (
    DEFAULT_PRIOR,
    DEFAULT_TARGET,
    Admission,
    AdmissionController,
    AdmissionView,
    LatencyModel,
)
from qhpc.broker.chunking import DEFAULT_CHUNK_SECONDS, shot_chunks
from qhpc.broker.config import BrokerConfig
from qhpc.broker.dispatch import DirectDispatcher
from qhpc.broker.drains import DrainRequest, InvalidDrain, NotDrained
from qhpc.broker.duty import DutyCycles, SessionDuty
from qhpc.broker.errors import BrokerError, SessionClosed
from qhpc.broker.idempotency import (
    IDEMPOTENCY_TTL,
    Idempotency,
    IdempotencyKeyReused,
    scope_of,
)
from qhpc.broker.output import DEFAULT_OUTPUT_LIMIT, MIN_OUTPUT_LIMIT, ProgramLogs
from qhpc.broker.pools import (
    POOL_POLICY_CLASSES,
    LowestEtaPolicy,
    MemberView,
    NoMemberFits,
    PoolPolicy,
    Routed,
)
from qhpc.broker.programs import (
    ProgramError,
    ProgramInfo,
    entry_points,
    register_entry_point,
)
from qhpc.broker.retention import Purger, Retention, purge_expired
from qhpc.broker.scheduler import (
    POLICIES,
    FairSharePolicy,
    FifoPolicy,
    Policy,
    PolicyError,
    PriorityPolicy,
    QueuedTask,
    Reservation,
    ReservationPolicy,
    SchedulingView,
    SessionLease,
    SessionMode,
    SessionPolicy,
    SessionRhythm,
    SessionRhythms,
    build_policy,
)
from qhpc.broker.service import Broker
from qhpc.broker.sessions import SessionTaskOutcome
from qhpc.broker.steering import DEFAULT_LICENCES, MAX_LICENCES, AdmissionSettings
from qhpc.broker.telemetry import (
    EPILOG_SLURMCTLD,
    HOOK_ERROR,
    HOOK_OK,
    HOOK_REFUSED,
    PROLOG_SLURMCTLD,
    Telemetry,
)
from qhpc.broker.usage import UsageTracker
from qhpc.broker.vendor import VENDOR_TASK_PREFIX, VendorJobs, vendor_task_id

__all__ = [
    "DEFAULT_CHUNK_SECONDS",
    "DEFAULT_LICENCES",
    "DEFAULT_OUTPUT_LIMIT",
    "DEFAULT_PRIOR",
    "DEFAULT_TARGET",
    "EPILOG_SLURMCTLD",
    "HOOK_ERROR",
    "HOOK_OK",
    "HOOK_REFUSED",
    "IDEMPOTENCY_TTL",
    "MAX_LICENCES",
    "MIN_OUTPUT_LIMIT",
    "POLICIES",
    "POOL_POLICY_CLASSES",
    "PROLOG_SLURMCTLD",
    "VENDOR_TASK_PREFIX",
    "Admission",
    "AdmissionController",
    "AdmissionSettings",
    "AdmissionView",
    "Broker",
    "BrokerConfig",
    "BrokerError",
    "DirectDispatcher",
    "DrainRequest",
    "DutyCycles",
    "FairSharePolicy",
    "FifoPolicy",
    "Idempotency",
    "IdempotencyKeyReused",
    "InvalidDrain",
    "LatencyModel",
    "LowestEtaPolicy",
    "MemberView",
    "NoMemberFits",
    "NotDrained",
    "Policy",
    "PolicyError",
    "PoolPolicy",
    "PriorityPolicy",
    "ProgramError",
    "ProgramInfo",
    "ProgramLogs",
    "Purger",
    "QueuedTask",
    "Reservation",
    "ReservationPolicy",
    "Retention",
    "Routed",
    "SchedulingView",
    "SessionClosed",
    "SessionDuty",
    "SessionLease",
    "SessionMode",
    "SessionPolicy",
    "SessionRhythm",
    "SessionRhythms",
    "SessionTaskOutcome",
    "Telemetry",
    "UsageTracker",
    "VendorJobs",
    "build_policy",
    "entry_points",
    "purge_expired",
    "register_entry_point",
    "scope_of",
    "shot_chunks",
    "vendor_task_id",
]
