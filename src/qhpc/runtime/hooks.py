"""The QPU hook: how a program process turns its context into a QPU handle.

The real handle (``qhpc.session.QPU``) is written elsewhere; the pool only needs
a factory ``make_qpu(context) -> object``, named by a string so that the template
process can import it before forking (a closure of the broker could not cross the
``spawn``). Without one, programs get :class:`UnconfiguredQpu`, which is harmless
until used and then raises :class:`QpuNotConfiguredError`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qhpc.runtime.errors import QpuNotConfiguredError
from qhpc.runtime.outcome import ProgramContext

#: ``make_qpu(context) -> handle``; the handle is what ``execute(qi)`` receives
QpuFactory = Callable[[ProgramContext], object]


class UnconfiguredQpu:
    """Stands in for the QPU when the pool has no factory; any use says so."""

    def __init__(self, context: ProgramContext) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        raise QpuNotConfiguredError(
            f"this program used its QPU handle (.{name}) but the runtime pool has no QPU: "
            "build RuntimePool(qpu_factory='package.module:make_qpu')"
        )

    def __call__(self, *args: object, **kwargs: object) -> Any:
        return self.__getattr__("__call__")

    def __repr__(self) -> str:
        return "<UnconfiguredQpu: no QPU configured for this runtime pool>"


def default_make_qpu(context: ProgramContext) -> object:
    return UnconfiguredQpu(context)


def factory_spec(factory: str | QpuFactory | None) -> str | None:
    """A string the template can import: ``module:attr`` or ``/path/file.py:attr``."""
    if factory is None or isinstance(factory, str):
        return factory
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", "")
    if not module or "<" in name or module == "__main__":
        raise ValueError(
            "qpu_factory must be a module-level function importable by the runtime "
            "processes, or a 'module:function' / '/path/file.py:function' string"
        )
    return f"{module}:{name}"


def load_qpu_factory(spec: str | None) -> QpuFactory:
    """Import the factory named by ``spec`` (in the template, before any fork)."""
    if spec is None:
        return default_make_qpu
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"qpu_factory {spec!r} is not 'module:function' or 'file.py:function'")
    if target.endswith(".py"):
        path = Path(target)
        name = f"qhpc_qpu_factory_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot load qpu_factory file {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    found: Any = module
    for part in attr.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise TypeError(f"qpu_factory {spec!r} is not callable")
    factory: QpuFactory = found
    return factory
