"""Slurm integration: QPUs as licences, session hooks, accounting into ``sacct``.

The public surface of the room. Slurm allocates coarsely — which jobs hold a
QPU session, for how long — and the broker multiplexes the sessions' tasks.

- :func:`write_config` (``qhpc slurm config``) turns the broker's resource list
  into slurm.conf licences, hook lines, the SPANK ``--qpu`` plugstack line and
  the hooks' credential file;
- :mod:`qhpc.slurm.hooks` holds the hook entry points
  (``python -m qhpc.slurm.hooks prolog-slurmctld`` …);
- :func:`slurm_accounting` joins broker usage with ``sacct`` records
  (``qhpc accounting --slurm``);
- :class:`Chain` splits a hybrid loop into ``afterok`` steps with checkpoints;
- :class:`Feedback` (``qhpc slurm feedback``) holds the jobs of a QPU that is out of
  service in a licence reservation, with a comment saying why and until when;
- :func:`submit_remote` submits to another site's Slurm through slurmrestd,
  with a QPU session at its broker (federation).

Chains, slurmrestd and federation load pydantic and httpx, which the hooks —
whose start-up every job waits for — never need: those names are imported on
first use (:func:`__getattr__`), not with the package.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from qhpc.slurm.accounting import (
    join_accounting,
    slurm_accounting,
)
from qhpc.slurm.config import (
    SlurmConfigError,
    SlurmConfigRequest,
    WrittenConfig,
    write_config,
)
from qhpc.slurm.errors import (
    HookSettingsError,
    SessionHandoverError,
    SlurmCommandError,
    SlurmError,
)
from qhpc.slurm.feedback import Feedback, HoldPolicy, QpuState, SlurmHolds, hold_comment
from qhpc.slurm.handover import Handover
from qhpc.slurm.jobinfo import (
    JobView,
    job_from_env,
    licence_name,
    parse_show_job,
    parse_time_limit,
    qpus_in_licences,
    show_job,
)
from qhpc.slurm.sacct import (
    parse_usage_comment,
    sacct_jobs,
    usage_comment,
)
from qhpc.slurm.settings import HookSettings, load_settings

if TYPE_CHECKING:
    from qhpc.slurm.chain import Chain, ChainStatus, SlurmCommands
    from qhpc.slurm.checkpoint import ChainError
    from qhpc.slurm.federation import (
        CentreSession,
        FederationEvent,
        JobChanged,
        JobSubmitted,
        RemoteSubmission,
        RemoteSubmitResult,
        SessionClosed,
        SessionLeftOpen,
        SessionOpened,
        job_dict,
        job_environment,
        rest_client,
        submit_remote,
    )
    from qhpc.slurm.rest import RemoteJob, RemoteSlurmError, SlurmRestClient
    from qhpc.slurm.templates import hetjob_script

#: names imported on first use, and the module each comes from
_LAZY = {
    "Chain": "qhpc.slurm.chain",
    "ChainStatus": "qhpc.slurm.chain",
    "SlurmCommands": "qhpc.slurm.chain",
    "ChainError": "qhpc.slurm.checkpoint",
    "RemoteJob": "qhpc.slurm.rest",
    "RemoteSlurmError": "qhpc.slurm.rest",
    "SlurmRestClient": "qhpc.slurm.rest",
    "hetjob_script": "qhpc.slurm.templates",
    "CentreSession": "qhpc.slurm.federation",
    "FederationEvent": "qhpc.slurm.federation",
    "JobChanged": "qhpc.slurm.federation",
    "JobSubmitted": "qhpc.slurm.federation",
    "RemoteSubmission": "qhpc.slurm.federation",
    "RemoteSubmitResult": "qhpc.slurm.federation",
    "SessionClosed": "qhpc.slurm.federation",
    "SessionLeftOpen": "qhpc.slurm.federation",
    "SessionOpened": "qhpc.slurm.federation",
    "job_dict": "qhpc.slurm.federation",
    "job_environment": "qhpc.slurm.federation",
    "rest_client": "qhpc.slurm.federation",
    "submit_remote": "qhpc.slurm.federation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


__all__ = [
    "CentreSession",
    "Chain",
    "ChainError",
    "ChainStatus",
    "FederationEvent",
    "Feedback",
    "Handover",
    "HoldPolicy",
    "HookSettings",
    "HookSettingsError",
    "JobChanged",
    "JobSubmitted",
    "JobView",
    "QpuState",
    "RemoteJob",
    "RemoteSlurmError",
    "RemoteSubmission",
    "RemoteSubmitResult",
    "SessionClosed",
    "SessionHandoverError",
    "SessionLeftOpen",
    "SessionOpened",
    "SlurmCommandError",
    "SlurmCommands",
    "SlurmConfigError",
    "SlurmConfigRequest",
    "SlurmError",
    "SlurmHolds",
    "SlurmRestClient",
    "WrittenConfig",
    "hetjob_script",
    "hold_comment",
    "job_dict",
    "job_environment",
    "job_from_env",
    "join_accounting",
    "licence_name",
    "load_settings",
    "parse_show_job",
    "parse_time_limit",
    "parse_usage_comment",
    "qpus_in_licences",
    "rest_client",
    "sacct_jobs",
    "show_job",
    "slurm_accounting",
    "submit_remote",
    "usage_comment",
    "write_config",
]
