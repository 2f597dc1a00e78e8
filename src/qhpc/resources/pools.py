"""Pools in the resource configuration: several resources behind one name.

A site with two emulators and an Aer simulator can offer them as one ``sim`` pool;
a user names the pool, and the broker sends the work to the member with the lowest
ETA whose target fits it (the choice itself is the broker's, ``broker/pools.py``;
this module only reads and checks the configuration). In qhpc's TOML::

    [pools.sim]
    members = ["emu-a", "emu-b", "aer"]
    policy = "lowest-eta"        # optional; the only policy so far

Pools and resources share one namespace (a name used for both would be ambiguous
wherever a resource name is accepted), pools do not nest, and a pool's name obeys
the same rule as a resource name over REST, so every configured pool can be named
in a request. Errors name the file, the pool and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qhpc.resources.errors import ResourceConfigError

#: how a pool picks its member; the broker maps each name to its policy class
POOL_POLICIES: tuple[str, ...] = ("lowest-eta",)
DEFAULT_POOL_POLICY = POOL_POLICIES[0]

#: the REST API's rule for resource names (``api/models.py`` ``Name``)
_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")
_KEYS = {"members", "policy"}


@dataclass(frozen=True)
class PoolSpec:
    """One configured pool: its members in the order the file lists them."""

    name: str
    members: tuple[str, ...]
    policy: str = DEFAULT_POOL_POLICY
    source: str = "built-in defaults"


def _error(detail: str, pool: str | None = None, key: str | None = None) -> ResourceConfigError:
    return ResourceConfigError(detail, pool, key, what="pool")


def parse_pools(tables: object, source: str) -> list[PoolSpec]:
    """The ``[pools.NAME]`` tables of one file, checked one by one (how they relate to
    the resources is :func:`check_pools`'s part, once every file is read)."""
    if not isinstance(tables, dict):
        raise ResourceConfigError(f"{source}: 'pools' must be a table", key="pools")
    return [_parse_pool(name, table, source) for name, table in tables.items()]


def _parse_pool(name: str, table: object, source: str) -> PoolSpec:
    if not _NAME.match(name):
        raise _error(
            f"{source}: a pool name is 1 to 128 of the characters A-Z a-z 0-9 _ . @ + -", name
        )
    if not isinstance(table, dict):
        raise _error(f"{source}: must be a table", name)
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise _error(f"{source}: unknown option; allowed: members, policy", name, unknown[0])
    members = table.get("members")
    if members is None:
        raise _error(f"{source}: missing 'members'", name, "members")
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise _error(f"{source}: must be a list of resource names", name, "members")
    if not members:
        raise _error(f"{source}: a pool needs at least one member", name, "members")
    seen: set[str] = set()
    for member in members:
        if member in seen:
            raise _error(f"{source}: {member!r} is listed twice", name, "members")
        seen.add(member)
    policy = table.get("policy", DEFAULT_POOL_POLICY)
    if policy not in POOL_POLICIES:
        raise _error(
            f"{source}: unknown policy {policy!r}; known: {', '.join(POOL_POLICIES)}",
            name,
            "policy",
        )
    return PoolSpec(name=name, members=tuple(members), policy=str(policy), source=source)


def check_pools(pools: Sequence[PoolSpec], resources: Mapping[str, str]) -> dict[str, PoolSpec]:
    """``pools`` by name, checked against the configured ``resources`` (name → the file
    that defines it): every member is a resource, no pool is named like a resource,
    none is defined twice, none contains a pool."""
    by_name: dict[str, PoolSpec] = {}
    for pool in pools:
        if pool.name in by_name:
            raise _error(
                f"defined twice ({by_name[pool.name].source} and {pool.source})", pool.name
            )
        if pool.name in resources:
            raise _error(
                f"{pool.source}: a resource has this name too ({resources[pool.name]}); "
                "pools and resources share one namespace",
                pool.name,
            )
        by_name[pool.name] = pool
    for pool in by_name.values():
        for member in pool.members:
            if member in by_name:
                raise _error(
                    f"{pool.source}: member {member!r} is a pool; pools cannot contain pools",
                    pool.name,
                    "members",
                )
            if member not in resources:
                known = ", ".join(sorted(resources)) or "none"
                raise _error(
                    f"{pool.source}: unknown member {member!r}; configured resources: {known}",
                    pool.name,
                    "members",
                )
    return by_name
