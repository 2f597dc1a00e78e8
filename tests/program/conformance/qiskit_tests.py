"""Qiskit's own primitives tests, fetched from the sdist of the installed Qiskit.

The sdist is downloaded with ``pip download`` (never copied into this repository)
into a cache directory (``$QHPC_CONFORMANCE_CACHE`` or
``~/.cache/qhpc-conformance``); only the few test files named in
:data:`MEMBERS` are read from it, by exact name, and written under names chosen
here, so nothing in the archive decides a path. The test modules are then
executed with a ``test`` package holding Qiskit's own ``QiskitTestCase``
(``test/utils/base.py`` and ``decorators.py`` from the same sdist).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import qiskit

#: archive member (below ``qiskit-<version>/``) → module name it is loaded as
MEMBERS = {
    "test/utils/decorators.py": "qhpc_qiskit_tests.utils.decorators",
    "test/utils/base.py": "qhpc_qiskit_tests.utils.base",
    "test/python/primitives/test_statevector_estimator.py": "qhpc_qiskit_tests.estimator",
    "test/python/primitives/test_statevector_sampler.py": "qhpc_qiskit_tests.sampler",
}


class FetchError(RuntimeError):
    """The sdist could not be downloaded (no network, no such release)."""


def cache_dir() -> Path:
    configured = os.environ.get("QHPC_CONFORMANCE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "qhpc-conformance"


def sdist(version: str = qiskit.__version__, cache: Path | None = None) -> Path:
    """The qiskit sdist of ``version``, downloaded into the cache unless already there."""
    cache = cache or cache_dir()
    path = cache / f"qiskit-{version}.tar.gz"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--timeout", "20", "--retries", "1", "--disable-pip-version-check",
        "-d", str(cache), f"qiskit=={version}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise FetchError(f"pip download qiskit=={version} sdist failed: {' / '.join(tail)}")
    return path


def extract(archive: Path, version: str, into: Path) -> dict[str, Path]:
    """Only :data:`MEMBERS`, looked up by exact name, as regular files; nothing else."""
    into.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member, module in MEMBERS.items():
            info = tar.getmember(f"qiskit-{version}/{member}")
            if not info.isfile():
                raise FetchError(f"{member} in {archive.name} is not a regular file")
            source = tar.extractfile(info)
            assert source is not None
            target = into / f"{module.rsplit('.', 1)[-1]}.py"
            target.write_bytes(source.read())
            files[module] = target
    return files


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load(
    substitutes: Mapping[str, Mapping[str, Any]],
    version: str = qiskit.__version__,
    cache: Path | None = None,
) -> dict[str, types.ModuleType]:
    """Qiskit's test modules, each with the names in ``substitutes[module]`` replaced.

    Keys of ``substitutes`` are the short module names (``estimator``, ``sampler``).
    Raises :class:`FetchError` when the sdist cannot be had.
    """
    cache = cache or cache_dir()
    files = extract(sdist(version, cache), version, cache / f"qiskit-{version}-tests")
    package = types.ModuleType("qhpc_qiskit_tests")
    package.__path__ = []
    utils = types.ModuleType("qhpc_qiskit_tests.utils")
    utils.__path__ = []
    sys.modules.update({"qhpc_qiskit_tests": package, "qhpc_qiskit_tests.utils": utils})
    _load("qhpc_qiskit_tests.utils.decorators", files["qhpc_qiskit_tests.utils.decorators"])
    base = _load("qhpc_qiskit_tests.utils.base", files["qhpc_qiskit_tests.utils.base"])
    # Qiskit's tests say ``from test import QiskitTestCase``: for the time they are
    # imported, ``test`` is a package with just that (not the standard library's).
    shim = types.ModuleType("test")
    shim.QiskitTestCase = base.QiskitTestCase  # type: ignore[attr-defined]
    saved = sys.modules.get("test")
    sys.modules["test"] = shim
    modules: dict[str, types.ModuleType] = {}
    try:
        for short in ("estimator", "sampler"):
            name = f"qhpc_qiskit_tests.{short}"
            module = _load(name, files[name])
            for attribute, value in substitutes.get(short, {}).items():
                if not hasattr(module, attribute):
                    raise AttributeError(f"Qiskit's {short} tests have no {attribute}")
                setattr(module, attribute, value)
            modules[short] = module
    finally:
        if saved is None:
            del sys.modules["test"]
        else:
            sys.modules["test"] = saved
    return modules
