"""Pools at admission: which member of a pool a new job or session goes to.

A pool is several resources behind one name (``[pools.NAME]`` in the resource
config, read by ``qhpc.resources``). A pool name is accepted wherever a resource
name is when work is admitted: :class:`PoolRouter` turns it into one member before
anything is stored, and the job or session records that member as its resource
and the pool beside it. A resource name passes through unchanged.

The choice is split in two, like the scheduler's: :class:`PoolRouter` reads each
member as the broker sees it now — a :class:`MemberView` with its ETA, queue length
and, if the work does not fit its target, why — and the pool's policy, a frozen
class with one method and time passed in (:class:`LowestEtaPolicy`), picks one.
The policy reads nothing else, so the study's simulator can drive the same object.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from qhpc.broker import admission
from qhpc.broker.executor import ResourceExecutor
from qhpc.resources import Payload, PayloadError, PoolSpec, ResourceRegistry, ResourceStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberView:
    """One member of a pool as a new piece of work would find it."""

    name: str
    #: seconds from now until a task queued now would start there (inf: not known —
    #: drained until resumed, offline with no expected end)
    eta: float
    #: tasks waiting in the broker for it
    queue_length: int
    #: why the work does not fit its target (None: it fits)
    unfit: str | None = None
    #: sessions open on it (their tasks will come before batch work)
    sessions: int = 0


class PoolPolicy(Protocol):
    @property
    def name(self) -> str: ...

    def choose(self, members: Sequence[MemberView], now: float) -> MemberView | None: ...


def _eta_key(eta: float) -> float:
    return eta if eta >= 0 else math.inf  # `not >= 0` also sends NaN last


@dataclass(frozen=True)
class LowestEtaPolicy:
    """The member that fits with the lowest ETA; then the shorter queue; then the one
    with fewer open sessions; then the name.

    None when no member fits. Members with unknown ETAs (inf) are still chosen when
    no other fits: work waits there as it would had it named that member. The
    sessions' count spreads sessions opened on idle members (an open session adds
    nothing to a queue until it sends a task).
    """

    name: ClassVar[str] = "lowest-eta"

    def choose(self, members: Sequence[MemberView], now: float) -> MemberView | None:
        return min(
            (m for m in members if m.unfit is None),
            key=lambda m: (_eta_key(m.eta), m.queue_length, m.sessions, m.name),
            default=None,
        )


#: each policy a pool's ``policy`` may name (resources.POOL_POLICIES lists the names)
POOL_POLICY_CLASSES: dict[str, Callable[[], PoolPolicy]] = {LowestEtaPolicy.name: LowestEtaPolicy}


class NoMemberFits(PayloadError):
    """No member of a pool can take the work; names, per member, why not."""

    def __init__(self, pool: str, reasons: Mapping[str, str]) -> None:
        self.pool = pool
        self.reasons = dict(reasons)
        listing = "; ".join(f"{member}: {why}" for member, why in self.reasons.items())
        super().__init__(f"no member of pool {pool!r} fits: {listing}")


@dataclass(frozen=True)
class Routed:
    """Where admitted work goes: ``resource``, reached through ``pool`` (None: named)."""

    resource: str
    pool: str | None = None


class PoolRouter:
    """Pool names to members at admission; the broker's ``pools`` (takes the lock itself).

    ``status`` is the broker's view of a resource (drains included); ``held`` says
    why a resource cannot take a new exclusive session (None: it can); ``sessions``
    counts the sessions open on a resource.
    """

    def __init__(
        self,
        resources: ResourceRegistry,
        executors: Mapping[str, ResourceExecutor],
        status: Callable[[str], ResourceStatus],
        held: Callable[[str], str | None],
        sessions: Callable[[str], int],
        clock: Callable[[], float],
    ) -> None:
        self.resources = resources
        self.executors = executors
        self.status = status
        self.held = held
        self.sessions = sessions
        self.clock = clock

    def route(
        self, name: str, payloads: Sequence[Payload] = (), *, exclusive: bool = False
    ) -> Routed:
        """The resource for work naming ``name``: itself if it is a resource, the chosen
        member if it is a pool (NoMemberFits if none fits ``payloads``; ``exclusive``:
        an exclusive session, for which a member another one holds does not fit)."""
        pool = self.resources.pool(name)
        if pool is None:
            self.resources.spec(name)  # unknown name → UnknownResourceError
            return Routed(name)
        now = self.clock()
        members = self.members(pool, payloads, now, exclusive=exclusive)
        chosen = POOL_POLICY_CLASSES[pool.policy]().choose(members, now)
        if chosen is None:
            raise NoMemberFits(pool.name, {m.name: m.unfit or "" for m in members})
        return Routed(chosen.name, pool.name)

    def members(
        self,
        pool: PoolSpec,
        payloads: Sequence[Payload] = (),
        now: float | None = None,
        *,
        exclusive: bool = False,
    ) -> list[MemberView]:
        """Each member of ``pool`` as work made of ``payloads`` would find it now."""
        now = self.clock() if now is None else now
        views = []
        for member in pool.members:
            unfit = self.held(member) if exclusive else None
            if unfit is None:
                unfit = self._unfit(member, payloads)
            executor = self.executors[member]
            with executor.context.shared.cond:
                length = len(executor.queue)
            eta, sessions = self.eta(member, now), self.sessions(member)
            views.append(MemberView(member, eta, length, unfit, sessions))
        return views

    def eta(self, resource: str, now: float | None = None) -> float:
        """Seconds until a task queued on ``resource`` now would start (inf: not known):
        its queue, its running task, a drain, and a device out of service until ``until``."""
        now = self.clock() if now is None else now
        try:
            status = self.status(resource)
        except Exception:  # an adapter that cannot tell is not a place to send work to
            log.exception("status() of %s failed", resource)
            return math.inf
        wait = 0.0
        if not status.state.takes_work:
            wait = math.inf if status.until is None else max(0.0, status.until - now)
        return self.executors[resource].eta_of_new(now, not_before=wait)

    def _unfit(self, member: str, payloads: Sequence[Payload]) -> str | None:
        if not payloads:
            return None
        try:
            return admission.refusal(self.resources.get(member), payloads)
        except Exception:  # a remote target that cannot be read now: not this member
            log.exception("the target of %s could not be read", member)
            return "its target cannot be read now"
