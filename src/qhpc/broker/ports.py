"""The narrow views of the broker that its own helpers get, instead of the whole Broker.

:class:`~qhpc.broker.programs.ProgramManager` (hybrid jobs) and
:class:`~qhpc.broker.dispatch.DirectDispatcher` (the co-located programs' channel)
are built by the broker and call back into it. Typing them against these Protocols
rather than ``Broker`` keeps the arrows pointing one way (service → programs →
dispatch → ports) and says exactly what each may touch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from qhpc.broker.access import Access
from qhpc.broker.config import BrokerConfig
from qhpc.broker.idempotency import Keys
from qhpc.broker.lifecycle import JobLog
from qhpc.broker.pools import PoolRouter
from qhpc.broker.scheduler import SessionMode
from qhpc.broker.sessions import SessionTaskOutcome
from qhpc.resources import DecodePool, Payload, PayloadDecoder, ResourceRegistry
from qhpc.store import JobRecord, SessionRecord, Store


class SessionRunner(Protocol):
    """What the direct channel needs: authenticate, decode, run a session task."""

    @property
    def access(self) -> Access: ...

    @property
    def config(self) -> BrokerConfig: ...

    def payload_decoder(self) -> PayloadDecoder: ...

    def run_session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None = None
    ) -> SessionTaskOutcome: ...


class ProgramHost(SessionRunner, Protocol):
    """What the hybrid-job manager needs of the broker."""

    @property
    def store(self) -> Store: ...

    @property
    def resources(self) -> ResourceRegistry: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def pools(self) -> PoolRouter: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def decoder(self) -> DecodePool: ...

    @property
    def job_log(self) -> JobLog: ...

    def get_job(self, job_id: str) -> JobRecord: ...

    def open_session(
        self, *, user: str, account: str, resource: str, deadline: float,
        mode: SessionMode = SessionMode.MULTIPLEX, centre: str | None = None,
        slurm_job_id: str | None = None,
    ) -> tuple[SessionRecord, str]: ...  # fmt: skip

    def close_session(self, session_id: str) -> None: ...
