"""The plugin registry: plugins a broker can rebuild from a JSON-able description.

A stack sent to a broker travels as a *spec*: every plugin as
``{"plugin": name, "params": {...}}`` plus the QPU's name. The broker rebuilds
the stack from the plugins registered under those names and runs it next to
the QPU. Only registered plugins can travel: a user-defined plugin has code the
broker does not have, so it either runs on the client or is refused, by name,
before anything is sent.

The shipped plugins are registered under their class names::

    register_plugin("MyPlugin", MyPlugin)     # on client *and* broker, same name

Stacks and plugins as specs, and back, are :mod:`qhpc.program.specs` (above the
stack; this module is below it). A plugin describes itself with
:meth:`~qhpc.program.Plugin.params` (the
keyword arguments that rebuild it; plain JSON data only). Lookup is by exact
type: a subclass of a registered plugin is not the registered plugin (it may
override what the broker would run) and must be registered itself.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from qhpc.program.errors import PluginSpecError


class Describable(Protocol):
    """What the registry reads of a plugin: a protocol, so that ``Plugin.spec()`` can
    ask the registry while the registry never imports the stack (no circle)."""

    @property
    def name(self) -> str: ...

    def params(self) -> dict[str, Any]: ...


#: ``factory(**params) -> Plugin``; a plugin class is the usual factory
PluginFactory = Callable[..., Any]

_lock = threading.Lock()
_factories: dict[str, PluginFactory] = {}
_names_by_type: dict[type, str] = {}


def register_plugin(name: str, factory: PluginFactory) -> None:
    """Make ``factory(**params)`` rebuild plugins named ``name``.

    Registering the same factory again under the same name is harmless; another
    factory under a taken name is an error (two meanings for one name would run
    different code on client and broker).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise PluginSpecError(str(name), f"plugin name {name!r} must be a Python identifier")
    if not callable(factory):
        raise PluginSpecError(name, f"plugin {name}: the factory is not callable")
    with _lock:
        known = _factories.get(name)
        if known is not None and known is not factory:
            raise PluginSpecError(
                name, f"plugin name {name!r} is already registered to {_qualname(known)}"
            )
        _factories[name] = factory
        if isinstance(factory, type):
            _names_by_type[factory] = name


def registered_plugins() -> dict[str, PluginFactory]:
    """Every registered name with its factory."""
    with _lock:
        return dict(_factories)


def registered_name(plugin: Describable) -> str | None:
    """The name ``plugin`` is registered under (exact type), or None."""
    with _lock:
        return _names_by_type.get(type(plugin))


def plugin_spec(plugin: Describable) -> dict[str, Any]:
    """``{"plugin": name, "params": {...}}`` for a registered plugin, else PluginSpecError."""
    name = registered_name(plugin)
    if name is None:
        raise PluginSpecError(
            plugin.name,
            f"plugin {plugin.name} is not registered, so a broker cannot rebuild it; "
            f"register_plugin({plugin.name!r}, {type(plugin).__name__}) on the client and "
            "the broker, or let it run on the client",
        )
    try:
        params = plugin.params()
    except NotImplementedError as exc:
        raise PluginSpecError(name, f"plugin {name} cannot describe itself: {exc}") from exc
    return {"plugin": name, "params": _plain_params(name, params)}


# -- helpers ------------------------------------------------------------------------


def _plain_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        out[str(key)] = _plain(name, str(key), value)
    return out


def _plain(name: str, where: str, value: Any) -> Any:
    """``value`` as JSON data (numpy scalars and tuples converted), else PluginSpecError."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PluginSpecError(name, f"plugin {name}: param {where} is {value} (not JSON)")
        return float(value)
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
        return _plain(name, where, value.item())  # numpy scalar
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return _plain(name, where, value.tolist())  # numpy array
    if isinstance(value, list | tuple):
        return [_plain(name, f"{where}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _plain(name, f"{where}.{k}", v) for k, v in value.items()}
    raise PluginSpecError(
        name,
        f"plugin {name}: param {where} is a {type(value).__name__}, which a broker cannot "
        "rebuild (plain numbers, strings, lists and maps only)",
    )


def _qualname(factory: object) -> str:
    module = getattr(factory, "__module__", "?")
    return f"{module}.{getattr(factory, '__qualname__', repr(factory))}"
