"""Request bodies of the REST API (pydantic, validated before any handler runs).

Bounds are part of the contract, not decoration: every number that reaches the
store fits a 64-bit integer or a finite float, and every name is a short plain
token, so no input can make the database (SQLite or PostgreSQL) fail with a 500.

Bodies are validated strictly: nothing is converted to fit a field, so ``"shots":
"100"``, ``"shots": true`` and ``"shots": 100.0`` are 422 like any other wrong type
(only an integer is accepted where a float is expected). Lenient coercion would make
two spellings of one request differ in their idempotency hash, and hides client bugs.
Non-finite numbers (``NaN``, ``Infinity``, which Python's JSON parser reads, and
``1e400``, which it reads as infinity) are refused in every float field and anywhere
inside ``args``. Query parameters are text by nature and are converted, with the same
bounds and finiteness checks.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import Header, Path, Query
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

#: user, account, centre, resource names: Slurm-like identifiers
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@+-]{1,128}$")]
#: UNIX seconds, up to the year 5138
Timestamp = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False)]
#: durations in seconds, up to ten years
Seconds = Annotated[float, Field(gt=0, le=10 * 366 * 86400, allow_inf_nan=False)]
Priority = Annotated[int, Field(ge=-1000, le=1000)]
Shots = Annotated[int, Field(gt=0, le=10**9)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
#: one circuit: OpenQASM 2/3, cQASM or QIR (LLVM IR) source, or base64 QPY or QIR bitcode
CircuitText = Annotated[str, StringConstraints(min_length=1)]
#: one task payload as produced by ``qhpc.resources.codec.encode_payload``, base64
PayloadText = Annotated[str, StringConstraints(min_length=1)]

# Ids and names in URLs: any printable text (a wrong one is simply not found), but no
# control characters, which PostgreSQL refuses in text columns (NUL) and logs mangle.
_PRINTABLE = r"^[^\x00-\x1f\x7f]{1,128}$"
#: an id or name in the path
PathId = Annotated[str, Path(pattern=_PRINTABLE)]
#: an optional name filter in the query
QueryName = Annotated[str | None, Query(pattern=_PRINTABLE)]
#: the ``Idempotency-Key`` header of a submission: 1-128 visible ASCII characters
#: (a UUID is typical); one key names one logical submission of one principal
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[\x21-\x7e]{1,128}$",
        description="names this submission: sent again with the same body (a retry), it "
        "answers with the job the first one made instead of storing another; with another "
        "body, 409. Scoped to the token's user; kept 24 h.",
    ),
]
#: free text stored as is (job names)
Label = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{0,200}$")]

TaskStateName = Literal["queued", "running", "completed", "failed", "cancelled"]
GroupBy = Literal["account", "user", "centre", "job", "resource"]


#: every request body: unknown fields refused (a typo like ``shot`` is not silently
#: ignored), no type coercion (see the module doc)
_STRICT = ConfigDict(extra="forbid", strict=True)


class _Body(BaseModel):
    model_config = _STRICT


class CircuitsBody(_Body):
    circuits: list[CircuitText] | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="circuits as OpenQASM 2/3, cQASM or QIR (LLVM IR text) source, or "
        "base64 QPY or QIR bitcode; "
        "together they form one sampler task (see split_circuits)",
    )
    shots: Shots | None = Field(None, description="shots per circuit; required with circuits")
    seed: Seed | None = None
    payloads: list[PayloadText] | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="alternatively, base64 codec-encoded payloads, one task each",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CircuitsBody:
        if (self.circuits is None) == (self.payloads is None):
            raise ValueError("give either circuits (with shots) or payloads, not both or neither")
        if self.circuits is not None and self.shots is None:
            raise ValueError("shots is required with circuits")
        if self.payloads is not None and (self.shots is not None or self.seed is not None):
            raise ValueError("shots and seed belong inside encoded payloads")
        return self


_BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0], q[1];\nmeasure q -> c;\n"
)


class JobSubmission(CircuitsBody):
    model_config = ConfigDict(
        **_STRICT,
        json_schema_extra={"examples": [{"resource": "aer", "circuits": [_BELL], "shots": 1000}]},
    )

    resource: Name
    split_circuits: bool = Field(
        False, description="one task per circuit instead of one task for all circuits"
    )
    priority: Priority = Field(0, description="positive values need an admin token")
    account: Name | None = Field(None, description="defaults to the token's account")
    user: Name | None = Field(None, description="centre and admin tokens may submit for a user")
    centre: Name | None = Field(None, description="admins only; centre tokens use their own")
    name: Label | None = None


_PROGRAM = "def main(qpu, shots=1000):\n    return qpu.run(bell(), shots=shots)\n"


class ProgramSubmission(_Body):
    """A hybrid job: a program the broker runs next to the QPU (co-located)."""

    model_config = ConfigDict(
        **_STRICT,
        json_schema_extra={"examples": [{"resource": "aer", "source": _PROGRAM, "timeout": 600}]},
    )

    resource: Name
    source: str | None = Field(
        None, min_length=1, description="the program text (a .py file); or entry_point"
    )
    filename: Label = Field("program.py", description="shown in tracebacks and messages")
    entry_point: Name | None = Field(
        None, description="a server-side program registered at the broker, instead of source"
    )
    entry: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")] = Field(
        "main", description="the function to call; a module with execute(qi) also works"
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the entry function (JSON); the spec of an entry point",
    )
    timeout: Seconds | None = Field(None, description="wall-clock limit; the broker's default")
    max_iterations: Annotated[int, Field(ge=1, le=10**12)] | None = Field(
        None, description="stop (status limit) when report() passes this iteration"
    )
    account: Name | None = Field(None, description="defaults to the token's account")
    user: Name | None = Field(None, description="centre and admin tokens may submit for a user")
    centre: Name | None = Field(None, description="admins only; centre tokens use their own")
    name: Label | None = None

    @field_validator("args")
    @classmethod
    def _finite_json(cls, args: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(args, allow_nan=False)
        except ValueError:
            raise ValueError("args must hold finite numbers only (no NaN or Infinity)") from None
        return args

    @model_validator(mode="after")
    def _one_program(self) -> ProgramSubmission:
        if (self.source is None) == (self.entry_point is None):
            raise ValueError("give either source or entry_point, not both or neither")
        return self


class SessionTaskSubmission(CircuitsBody):
    @model_validator(mode="after")
    def _single(self) -> SessionTaskSubmission:
        if self.payloads is not None and len(self.payloads) != 1:
            raise ValueError("a session task carries exactly one payload")
        return self


class SessionRequest(_Body):
    model_config = ConfigDict(
        **_STRICT,
        json_schema_extra={
            "examples": [
                {"resource": "aer", "user": "alice", "account": "chem", "duration_seconds": 3600}
            ]
        },
    )

    resource: Name
    user: Name | None = None
    account: Name | None = None
    centre: Name | None = None
    deadline: Timestamp | None = Field(None, description="UNIX seconds when the lease ends")
    duration_seconds: Seconds | None = Field(None, description="or: lease length from now")
    mode: Literal["multiplex", "exclusive"] = "multiplex"
    slurm_job_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")] | None = (
        Field(None, description="the Slurm job holding the session: admin and centre tokens only")
    )

    @model_validator(mode="after")
    def _one_end(self) -> SessionRequest:
        if (self.deadline is None) == (self.duration_seconds is None):
            raise ValueError("give either deadline or duration_seconds")
        return self


class SessionUpdate(_Body):
    slurm_job_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")] = Field(
        description="the Slurm job that will use this session (admin and centre tokens; once)"
    )


class ReservationRequest(_Body):
    resource: Name
    account: Name
    start: Timestamp
    end: Timestamp
    allow_backfill: bool = Field(
        False, description="let other work run in the window while the account has none queued"
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReservationRequest:
        if not self.start < self.end:
            raise ValueError("a reservation must start before it ends")
        return self


class DrainBody(_Body):
    model_config = ConfigDict(
        **_STRICT,
        json_schema_extra={"examples": [{"reason": "cryostat warm-up", "for_seconds": 7200}]},
    )

    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        description="shown to every user in status, queue and ETA"
    )
    until: Timestamp | None = Field(None, description="UNIX seconds the drain ends")
    for_seconds: Seconds | None = Field(None, description="or: how long from now")
    now: bool = Field(
        False, description="stop running work (it is queued again) instead of letting it finish"
    )

    @model_validator(mode="after")
    def _one_end(self) -> DrainBody:
        if self.until is not None and self.for_seconds is not None:
            raise ValueError("give until or for_seconds, not both (neither: until resumed)")
        return self


class AccountUpdate(_Body):
    shares: float = Field(gt=0, le=1e9, allow_inf_nan=False)
    centre: Name | None = None


class TokenRequest(_Body):
    role: Literal["admin", "centre", "user"] = Field(
        description="session tokens come from POST /v1/sessions"
    )
    subject: Name
    account: Name | None = None
    centre: Name | None = None
    resource: Name | None = Field(None, description="restrict the token to one resource")
    ttl_seconds: Seconds | None = Field(None, description="lifetime; no expiry if omitted")

    @model_validator(mode="after")
    def _centre_named(self) -> TokenRequest:
        if self.role == "centre" and self.centre is None:
            raise ValueError("a centre token needs centre")
        return self
