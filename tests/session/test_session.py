"""The session room: where its names live, the old paths that still lead there, and
what a user program (or a Slurm hook) loads when it imports the client side."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import qhpc
import qhpc.session
from qhpc.client import Client
from qhpc.program import Connection

SOURCE = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize(
    ("old_module", "old_name", "new_name"),
    [
        ("qhpc.runtime.program", "QPU", "QPU"),
        ("qhpc.runtime.program", "QpuTimings", "QpuTimings"),
        ("qhpc.runtime.program", "connect", "open_channel"),
        ("qhpc.runtime.fastpath", "FastPathClient", "FastPathClient"),
        ("qhpc.runtime.fastpath", "FastPathError", "FastPathError"),
        ("qhpc.api.fastpath", "FastPathClient", "FastPathClient"),
        ("qhpc.api.fastpath", "FastPathError", "FastPathError"),
    ],
)
def test_old_import_paths_still_work_and_warn(
    old_module: str, old_name: str, new_name: str
) -> None:
    module = __import__(old_module, fromlist=[old_name])
    with pytest.warns(DeprecationWarning, match=rf"{old_name}.*qhpc\.session"):
        found = getattr(module, old_name)
    assert found is getattr(qhpc.session, new_name)


def test_the_pools_old_factory_name_still_loads_without_a_warning() -> None:
    from qhpc.runtime.hooks import load_qpu_factory

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = load_qpu_factory("qhpc.runtime.program:make_qpu")
    assert old is load_qpu_factory("qhpc.session:make_qpu") is qhpc.session.make_qpu


def test_unknown_names_on_the_old_paths_are_attribute_errors() -> None:
    import qhpc.api.fastpath
    import qhpc.runtime.program

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        qhpc.runtime.program.nothing  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'FastPathNothing'"):
        qhpc.api.fastpath.FastPathNothing  # noqa: B018


def test_the_runtime_re_exports_the_sessions_error() -> None:
    from qhpc.runtime import QpuNotConfiguredError

    assert QpuNotConfiguredError is qhpc.session.QpuNotConfiguredError


def test_qhpc_connect_gives_a_client_that_hands_out_qpus() -> None:
    assert issubclass(Connection, Client)
    assert callable(Connection.qpu)
    assert not hasattr(Client, "qpu")  # the REST client knows nothing of QPUs


def loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SOURCE), "PATH": "/usr/bin:/bin"},
        timeout=120,
    ).stdout
    return set(out.split())


def test_the_rest_client_and_the_slurm_link_load_no_qiskit() -> None:
    """The hooks run once per job on the controller: their start-up is every job's."""
    loaded = loaded_by("import qhpc.client, qhpc.slurm.link, qhpc.slurm.hooks")
    assert "qhpc.client" in loaded and "qhpc.slurm.link" in loaded
    assert not {m for m in loaded if m == "qiskit" or m.startswith("qhpc.resources")}


def test_a_hybrid_program_loads_neither_broker_nor_pool() -> None:
    loaded = loaded_by("from qhpc.session import QPU, FastPathClient, DirectClient")
    assert {"qhpc.session.handle", "qhpc.session.fastpath", "qhpc.session.direct"} <= loaded
    heavy = {"qhpc.broker", "qhpc.api", "qhpc.runtime", "qhpc.store", "fastapi"}
    assert not loaded & heavy


def test_the_runtime_pool_does_not_load_qiskit_through_the_session() -> None:
    loaded = loaded_by("import qhpc.runtime")
    assert "qhpc.session.errors" in loaded
    assert "qiskit" not in loaded and "qhpc.session.handle" not in loaded


def test_the_primitives_old_protocol_name_still_works_and_warns() -> None:
    import qhpc.primitives

    with pytest.warns(DeprecationWarning, match="TaskRunner"):
        old = qhpc.primitives.QPU
    assert old is qhpc.primitives.TaskRunner
