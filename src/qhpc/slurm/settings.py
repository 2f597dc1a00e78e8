"""The hooks' settings file: where the broker is and the credential they use.

Written by ``qhpc slurm config`` as TOML, mode 0600, owned by SlurmUser: it
holds the admin (or centre) token that opens sessions for jobs, so only
SlurmUser (PrologSlurmctld/EpilogSlurmctld) and root (the node's Prolog/Epilog)
may read it. The TaskProlog, which runs as the job's user, never reads it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qhpc.slurm.errors import HookSettingsError

DEFAULT_SPOOL_DIR = Path("/var/spool/qhpc-slurm")
DEFAULT_RUN_DIR = Path("/run/qhpc-slurm")
SESSION_MODES = ("multiplex", "exclusive")


@dataclass(frozen=True)
class HookSettings:
    """Everything the hooks need besides the job's own environment."""

    broker_url: str
    fastpath: str
    token: str
    spool_dir: Path = DEFAULT_SPOOL_DIR  # controller side, SlurmUser only
    run_dir: Path = DEFAULT_RUN_DIR  # node side, one file per job readable by its user
    session_mode: str = "multiplex"
    handover_wait_s: float = 30.0  # how long the node Prolog waits for the controller's file
    broker_timeout_s: float = 10.0
    #: centre → the Slurm user its gateway submits as: a job of that user whose session
    #: the centre tied to it is adopted (federation); no entry, no adoption
    federated_users: Mapping[str, str] = field(default_factory=dict)

    def to_toml(self) -> str:
        """The settings as a TOML document (strings quoted JSON-style, valid TOML)."""
        lines = [
            "# qhpc Slurm hooks: broker address and credential. Keep mode 0600, owner SlurmUser.",
            f"broker_url = {json.dumps(self.broker_url)}",
            f"fastpath = {json.dumps(self.fastpath)}",
            f"token = {json.dumps(self.token)}",
            f"spool_dir = {json.dumps(str(self.spool_dir))}",
            f"run_dir = {json.dumps(str(self.run_dir))}",
            f"session_mode = {json.dumps(self.session_mode)}",
            f"handover_wait_s = {float(self.handover_wait_s)!r}",
            f"broker_timeout_s = {float(self.broker_timeout_s)!r}",
        ]
        if self.federated_users:
            pairs = ", ".join(
                f"{json.dumps(c)} = {json.dumps(u)}"
                for c, u in sorted(self.federated_users.items())
            )
            lines.append(f"federated_users = {{ {pairs} }}")
        return "\n".join(lines) + "\n"


def load_settings(path: Path, *, need_token: bool = True) -> HookSettings:
    """Read and check a settings file; errors name the file and the key.

    ``need_token=False`` for the node's Prolog and Epilog: they never talk to the broker,
    so a node's settings file may leave the token out (it stays on the controller).
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HookSettingsError(f"cannot read hook settings {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HookSettingsError(f"hook settings {path} are not valid TOML: {exc}") from None
    known = set(HookSettings.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise HookSettingsError(
            f"hook settings {path}: unknown key(s) {unknown}; known: {sorted(known)}"
        )
    for key in ("broker_url", "fastpath", "token") if need_token else ():
        if not isinstance(data.get(key), str) or not data[key]:
            raise HookSettingsError(f"hook settings {path}: {key!r} must be a non-empty string")
    for key in ("broker_url", "fastpath", "token"):
        if not isinstance(data.get(key, ""), str):
            raise HookSettingsError(f"hook settings {path}: {key!r} must be a string")
    federated = data.get("federated_users", {})
    if not isinstance(federated, dict) or not all(
        isinstance(c, str) and isinstance(u, str) and c and u for c, u in federated.items()
    ):
        raise HookSettingsError(
            f"hook settings {path}: federated_users must map centre names to Slurm user names"
        )
    mode = data.get("session_mode", "multiplex")
    if mode not in SESSION_MODES:
        raise HookSettingsError(
            f"hook settings {path}: session_mode must be one of {SESSION_MODES}, got {mode!r}"
        )
    try:
        return HookSettings(
            broker_url=data.get("broker_url", ""),
            fastpath=data.get("fastpath", ""),
            token=data.get("token", ""),
            spool_dir=Path(data.get("spool_dir", DEFAULT_SPOOL_DIR)),
            run_dir=Path(data.get("run_dir", DEFAULT_RUN_DIR)),
            session_mode=mode,
            handover_wait_s=float(data.get("handover_wait_s", 30.0)),
            broker_timeout_s=float(data.get("broker_timeout_s", 10.0)),
            federated_users=dict(federated),
        )
    except (TypeError, ValueError) as exc:
        raise HookSettingsError(f"hook settings {path}: {exc}") from None
