"""Pools in the resource configuration: read, and refused with the file, pool and key named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qhpc.resources import (
    POOL_POLICIES,
    PoolSpec,
    ResourceConfigError,
    ResourceRegistry,
    ResourceSpec,
    UnknownResourceError,
    load_registry,
)

RESOURCES = """
[resources.emu-a]
type = "emulator"
device = "line-5"

[resources.emu-b]
type = "emulator"
device = "line-7"

[resources.sim]
type = "aer"
"""


def write(tmp_path: Path, text: str, name: str = "resources.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_pools_are_read_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        RESOURCES
        + """
[pools.emus]
members = ["emu-b", "emu-a"]

[pools.all]
members = ["sim", "emu-a", "emu-b"]
policy = "lowest-eta"
""",
    )
    with load_registry(path) as registry:
        assert registry.pool_names() == ["emus", "all"]
        emus = registry.pool("emus")
        assert emus == PoolSpec("emus", ("emu-b", "emu-a"), "lowest-eta", str(path))
        assert registry.pool("all") is not None
        assert registry.pool("sim") is None  # a resource, not a pool
        assert registry.pool("nothing") is None
        # Pools are not resources: the resource list and spec() are unchanged.
        assert registry.names() == ["emu-a", "emu-b", "sim"]


def test_a_config_without_pools_has_none(tmp_path: Path) -> None:
    with load_registry(write(tmp_path, RESOURCES)) as registry:
        assert registry.pool_names() == []


def test_a_pool_may_name_resources_of_a_qrmi_file(tmp_path: Path) -> None:
    qrmi = {"resources": [{"name": "FRESNEL", "type": "pasqal-cloud", "environment": {}}]}
    (tmp_path / "qrmi_config.json").write_text(json.dumps(qrmi))
    path = write(
        tmp_path,
        'qrmi_config = "qrmi_config.json"\n'
        + RESOURCES
        + '\n[pools.any]\nmembers = ["FRESNEL", "sim"]\n',
    )
    registry = load_registry(path)
    pool = registry.pool("any")
    assert pool is not None and pool.members == ("FRESNEL", "sim")


@pytest.mark.parametrize(
    ("text", "pool", "key", "message"),
    [
        ('[pools.p]\nmembers = ["emu-a", "ghost"]\n', "p", "members", "unknown member 'ghost'"),
        ("[pools.p]\nmembers = []\n", "p", "members", "at least one member"),
        ("[pools.p]\npolicy = 'lowest-eta'\n", "p", "members", "missing 'members'"),
        ('[pools.p]\nmembers = "emu-a"\n', "p", "members", "list of resource names"),
        ("[pools.p]\nmembers = [1, 2]\n", "p", "members", "list of resource names"),
        ('[pools.p]\nmembers = ["emu-a", ""]\n', "p", "members", "list of resource names"),
        ('[pools.p]\nmembers = ["emu-a", "emu-a"]\n', "p", "members", "'emu-a' is listed twice"),
        ('[pools.sim]\nmembers = ["emu-a"]\n', "sim", None, "a resource has this name too"),
        (
            '[pools.p]\nmembers = ["emu-a"]\n[pools.q]\nmembers = ["p", "sim"]\n',
            "q",
            "members",
            "member 'p' is a pool; pools cannot contain pools",
        ),
        ('[pools.p]\nmembers = ["sim"]\npolicy = "random"\n', "p", "policy", "unknown policy"),
        ('[pools.p]\nmembers = ["sim"]\nweight = 2\n', "p", "weight", "unknown option"),
        ('[pools."a b"]\nmembers = ["sim"]\n', "a b", None, "a pool name is 1 to 128"),
        ('[pools."p/../x"]\nmembers = ["sim"]\n', "p/../x", None, "a pool name is 1 to 128"),
        ("[pools]\np = 3\n", "p", None, "must be a table"),
    ],
)
def test_pool_errors_name_file_pool_and_key(
    tmp_path: Path, text: str, pool: str, key: str | None, message: str
) -> None:
    path = write(tmp_path, RESOURCES + text)
    with pytest.raises(ResourceConfigError) as caught:
        load_registry(path)
    error = caught.value
    assert error.resource == pool
    assert error.key == key
    assert message in str(error)
    assert str(error).startswith(f"pool {pool!r}")
    assert str(path) in str(error)


def test_pools_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ResourceConfigError, match="'pools' must be a table") as caught:
        load_registry(write(tmp_path, 'pools = ["sim"]\n' + RESOURCES))
    assert caught.value.key == "pools"


def test_registry_built_in_code_checks_pools_too() -> None:
    specs = [ResourceSpec("a", "null"), ResourceSpec("b", "null")]
    with pytest.raises(ResourceConfigError, match="defined twice"):
        ResourceRegistry(specs, [PoolSpec("p", ("a",)), PoolSpec("p", ("b",))])
    with pytest.raises(ResourceConfigError, match="unknown member 'c'"):
        ResourceRegistry(specs, [PoolSpec("p", ("a", "c"))])
    registry = ResourceRegistry(specs, [PoolSpec("p", ("b", "a"))])
    assert registry.pool_names() == ["p"]


def test_unknown_name_lists_resources_and_pools() -> None:
    registry = ResourceRegistry(
        [ResourceSpec("a", "null"), ResourceSpec("b", "null")], [PoolSpec("p", ("a", "b"))]
    )
    with pytest.raises(UnknownResourceError) as caught:
        registry.spec("nope")
    assert str(caught.value) == "unknown resource 'nope'; configured resources: a, b; pools: p"
    assert caught.value.pools == ["p"]
    # Without pools the message is as it always was.
    with pytest.raises(UnknownResourceError, match=r"configured resources: a, b$"):
        ResourceRegistry([ResourceSpec("a", "null"), ResourceSpec("b", "null")]).spec("nope")


def test_the_one_policy_is_the_default() -> None:
    assert POOL_POLICIES == ("lowest-eta",)
    assert PoolSpec("p", ("a",)).policy == "lowest-eta"


def test_check_name_accepts_resources_and_pools_only() -> None:
    registry = ResourceRegistry([ResourceSpec("a", "null")], [PoolSpec("p", ("a",))])
    registry.check_name("a")
    registry.check_name("p")
    with pytest.raises(UnknownResourceError, match="pools: p"):
        registry.check_name("q")
