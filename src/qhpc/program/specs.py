"""Stacks as specs and back: how a stack travels to a broker and is rebuilt there.

A stack's spec is ``{"v": 1, "plugins": [plugin specs…], "qpu": name}``, every
plugin as ``{"plugin": name, "params": {...}}`` (see :mod:`qhpc.program.registry`,
which names plugins). This module stands above the stack (it builds stacks) and the
registry (it looks factories up), so neither of those imports the other's way back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qhpc.program.errors import PluginSpecError, StackError
from qhpc.program.executor import Executor
from qhpc.program.registry import plugin_spec, registered_plugins
from qhpc.program.stack import Plugin, Stack

#: version of the stack spec format; a broker refuses other versions by name
SPEC_VERSION = 1
#: longest plugin list a spec may carry (a guard against absurd input)
MAX_PLUGINS = 32


def plugin_from_spec(spec: object) -> Plugin:
    """Rebuild one plugin; unknown names and bad params are errors naming the plugin."""
    if not isinstance(spec, Mapping):
        raise PluginSpecError("?", f"a plugin spec must be a map, not {type(spec).__name__}")
    name = spec.get("plugin")
    if not isinstance(name, str):
        raise PluginSpecError("?", f"a plugin spec needs a 'plugin' name, got {name!r}")
    extra = sorted(set(spec) - {"plugin", "params"})
    if extra:
        raise PluginSpecError(name, f"plugin {name}: unknown spec field(s) {extra}")
    params = spec.get("params", {})
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise PluginSpecError(name, f"plugin {name}: params must be a map of names to values")
    factory = registered_plugins().get(name)
    if factory is None:
        known = ", ".join(sorted(registered_plugins())) or "none"
        raise PluginSpecError(name, f"unknown plugin {name!r}; registered plugins: {known}")
    try:
        plugin = factory(**params)
    except (TypeError, ValueError) as exc:
        raise PluginSpecError(name, f"plugin {name}: bad params {dict(params)}: {exc}") from exc
    if not isinstance(plugin, Plugin):
        raise PluginSpecError(name, f"plugin {name}: the factory made a {type(plugin).__name__}")
    return plugin


def stack_spec(stack: Stack) -> dict[str, Any]:
    """A stack as JSON-able data: its plugins' specs and its QPU's name."""
    if stack.qpu is None:
        raise StackError(f"stack {stack.name} has no QPU: end it with a qpu ({stack.name} | qpu)")
    return {
        "v": SPEC_VERSION,
        "plugins": [plugin_spec(p) for p in stack.plugins],
        "qpu": stack.qpu.name,
    }


def check_stack_spec(spec: object) -> list[Plugin]:
    """The plugins of a stack spec, rebuilt (which validates them), or PluginSpecError."""
    if not isinstance(spec, Mapping):
        raise PluginSpecError("?", f"a stack spec must be a map, not {type(spec).__name__}")
    if spec.get("v") != SPEC_VERSION:
        raise PluginSpecError(
            "?", f"stack spec version {spec.get('v')!r} is not supported (this qhpc speaks "
            f"version {SPEC_VERSION})",
        )  # fmt: skip
    qpu = spec.get("qpu")
    plugins = spec.get("plugins")
    if not isinstance(qpu, str) or not qpu:
        raise StackError("the stack spec names no QPU: a stack must end in a qpu")
    if not isinstance(plugins, list):
        raise PluginSpecError("?", "a stack spec's 'plugins' must be a list")
    if len(plugins) > MAX_PLUGINS:
        raise PluginSpecError(
            "?", f"a stack spec holds {len(plugins)} plugins (at most {MAX_PLUGINS})"
        )
    return [plugin_from_spec(p) for p in plugins]


def stack_from_spec(spec: object, qpu: Executor) -> Stack:
    """Rebuild the stack ``spec`` describes over ``qpu`` (the broker's own QPU)."""
    return Stack(check_stack_spec(spec), qpu)
