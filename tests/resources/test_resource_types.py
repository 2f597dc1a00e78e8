"""Resource types as packages: a throwaway adapter package, installed with pip, adds a
type through the ``qhpc.resources`` entry-point group, with no change to qhpc, and a
task runs on it; broken plugins are skipped with a warning, never imported by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qhpc.resources import ENTRY_POINT_GROUP, ResourceType, resource_types

ADAPTER = '''
"""A toy QPU: every shot measures all ones (so a test can tell it ran here)."""
from qhpc.resources import ResourceType
from qhpc.resources.null import NullResource
from qhpc.resources.payload import SampledCircuit


class AllOnes(NullResource):
    type_name = "allones"

    def _sample(self, circuits, shots, memory, seed, record):
        return [SampledCircuit(counts={"1" * c.num_clbits: shots}, shots=shots,
                               num_bits=c.num_clbits) for c in circuits], {"toy": True}


def _build(spec):
    return AllOnes(spec.name, max_qubits=int(spec.options.get("max_qubits", 8)))


RESOURCE_TYPE = ResourceType("allones", frozenset({"max_qubits"}), _build)
NOT_A_TYPE = 42
'''

PYPROJECT = f"""
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "qhpc-allones-adapter"
version = "0.1"

[project.entry-points."{ENTRY_POINT_GROUP}"]
allones = "allones_adapter:RESOURCE_TYPE"
wrongkind = "allones_adapter:NOT_A_TYPE"
broken = "no_such_module_anywhere:THING"
aer = "allones_adapter:RESOURCE_TYPE"
"""

BELL = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\nmeasure q -> c;\n'


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The adapter package built and installed with pip into a directory of its own."""
    root = tmp_path_factory.mktemp("adapter")
    source = root / "src"
    (source / "allones_adapter").mkdir(parents=True)
    (source / "allones_adapter" / "__init__.py").write_text(textwrap.dedent(ADAPTER))
    (source / "pyproject.toml").write_text(PYPROJECT)
    target = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return target


def _run(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    return subprocess.run(
        [sys.executable, "-m", "qhpc.cli", *args], capture_output=True, text=True,
        timeout=120, check=False, env=env, cwd=cwd,
    )  # fmt: skip


def test_an_installed_package_adds_a_type_and_a_task_runs_on_it(
    installed: Path, tmp_path: Path
) -> None:
    (tmp_path / "resources.toml").write_text('[resources.toy]\ntype = "allones"\nmax_qubits = 4\n')
    (tmp_path / "bell.qasm").write_text(BELL)
    done = _run(installed, "run", "bell.qasm", "-r", "toy", "-c", "resources.toml",
                "--shots", "7", "--json", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (circuit,) = json.loads(done.stdout)["circuits"]
    assert circuit["counts"] == {"11": 7}  # the toy's answer: it ran there
    # the broken, wrong-kind and built-in-named declarations were skipped, with warnings
    for name in ("broken", "wrongkind", "aer"):
        assert repr(name) in done.stderr, done.stderr


def test_an_unknown_option_of_a_plugin_type_is_refused_by_name(
    installed: Path, tmp_path: Path
) -> None:
    (tmp_path / "resources.toml").write_text('[resources.toy]\ntype = "allones"\nshots = 4\n')
    (tmp_path / "bell.qasm").write_text(BELL)
    done = _run(installed, "run", "bell.qasm", "-r", "toy", "-c", "resources.toml",
                cwd=tmp_path)  # fmt: skip
    said = " ".join(done.stderr.split())  # the console wraps long lines
    assert done.returncode != 0
    assert "unknown option for type 'allones'; allowed: max_qubits" in said


def test_without_the_package_the_type_is_unknown_and_the_error_lists_the_known_ones(
    tmp_path: Path,
) -> None:
    (tmp_path / "resources.toml").write_text('[resources.toy]\ntype = "allones"\n')
    (tmp_path / "bell.qasm").write_text(BELL)
    done = _run(tmp_path / "nothing", "run", "bell.qasm", "-r", "toy", "-c", "resources.toml",
                cwd=tmp_path)  # fmt: skip
    said = " ".join(done.stderr.split())
    assert done.returncode != 0 and "unknown type 'allones'" in said
    assert "aer" in said and "emulator" in said


def test_the_built_in_types_are_declared_like_any_plugin() -> None:
    import importlib.metadata

    declared = {e.name for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {"aer", "emulator", "qx", "null"} <= declared
    assert all(isinstance(t, ResourceType) for t in resource_types().values())


def test_every_built_in_type_is_declared_in_pyproject() -> None:
    """The source tree's declarations (what an install will register) match the built-ins,
    whatever the installed metadata says until the next ``pip install``."""
    import tomllib

    from qhpc.resources.config import BUILTIN_TYPES

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert set(declared) == set(BUILTIN_TYPES)
    for name, value in declared.items():
        assert value == f"qhpc.resources.config:{name.upper()}"
