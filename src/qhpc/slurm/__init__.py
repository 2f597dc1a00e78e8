"""Slurm integration: QPUs as licences, session hooks, accounting into ``sacct``.

The public surface of the room. Slurm allocates coarsely — which jobs hold a
QPU session, for how long — and the broker multiplexes the sessions' tasks.

- :func:`write_config` (``qhpc slurm config``) turns the broker's resource list
  into slurm.conf licences, hook lines, the SPANK ``--qpu`` plugstack line and
  the hooks' credential file;
- :mod:`qhpc.slurm.hooks` holds the hook entry points
  (``python -m qhpc.slurm.hooks prolog-slurmctld`` …);
- :func:`slurm_accounting` joins broker usage with ``sacct`` records
  (``qhpc accounting --slurm``).
"""

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

__all__ = [
    "Handover",
    "HookSettings",
    "HookSettingsError",
    "JobView",
    "SessionHandoverError",
    "SlurmCommandError",
    "SlurmConfigError",
    "SlurmConfigRequest",
    "SlurmError",
    "WrittenConfig",
    "job_from_env",
    "join_accounting",
    "licence_name",
    "load_settings",
    "parse_show_job",
    "parse_time_limit",
    "parse_usage_comment",
    "qpus_in_licences",
    "sacct_jobs",
    "show_job",
    "slurm_accounting",
    "usage_comment",
    "write_config",
]
