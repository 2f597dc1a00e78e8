"""Plugins and stacks: ``plugin | plugin | qpu`` is itself a QPU.

On the way down each plugin's :meth:`Plugin.compile` rewrites the batch for
the device's specs; on the way up :meth:`Plugin.post_process` rewrites the
results. A plugin that needs a loop (a variational optimiser, a calibration)
overrides :meth:`Plugin.execute` and submits to the rest of the stack, ``below``,
as often as it likes.

Errors: a plugin that raises is reported as :class:`PluginError` naming the
plugin, the phase and the batch's jobs; errors of the QPU or of a plugin
further down keep their own message (they already name their culprit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qhpc.program.errors import PluginError, ProgramError, StackError
from qhpc.program.executor import Executor, as_qpu
from qhpc.program.job import Batch
from qhpc.program.registry import plugin_spec
from qhpc.program.result import BatchResult
from qhpc.resources.target import DeviceTarget


class Plugin:
    """A processing step between the program and the QPU; compose with ``|``."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def compile(self, batch: Batch, specs: DeviceTarget) -> Batch:
        """Rewrite the batch on its way down (default: unchanged)."""
        return batch

    def post_process(self, result: BatchResult) -> BatchResult:
        """Rewrite the results on their way up (default: unchanged).

        ``result.batch`` is the batch this plugin's :meth:`compile` returned, so
        state kept with :meth:`remember` is found again with :meth:`recall`.
        """
        return result

    def params(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this plugin (plain JSON data).

        A broker rebuilds a registered plugin as ``factory(**plugin.params())``
        (see :func:`~qhpc.program.register_plugin`); plugins that never travel
        need not implement it.
        """
        raise NotImplementedError(f"{self.name} does not implement params()")

    def spec(self) -> dict[str, Any]:
        """``{"plugin": name, "params": {...}}``: how a broker rebuilds this plugin."""
        return plugin_spec(self)

    def execute(self, batch: Batch, below: Executor) -> BatchResult:
        """compile → submit to ``below`` → post_process; override to resubmit."""
        try:
            compiled = self.compile(batch, below.specs())
        except ProgramError:
            raise
        except Exception as exc:
            raise self.failure("compile", batch, exc) from exc
        answer = below.run_batch(compiled)
        try:
            return self.post_process(answer)
        except ProgramError:
            raise
        except Exception as exc:
            raise self.failure("post_process", batch, exc) from exc

    # -- helpers ---------------------------------------------------------------------
    def failure(self, phase: str, batch: Batch, exc: BaseException) -> PluginError:
        return PluginError(
            self.name,
            f"plugin {self.name} failed in {phase} on {batch.describe()}: "
            f"{type(exc).__name__}: {exc}",
        )

    def _key(self) -> str:
        return f"{self.name}@{id(self):x}"

    def remember(self, batch: Batch, state: Any) -> Batch:
        """``batch`` carrying ``state`` for this plugin's :meth:`post_process`."""
        return Batch(batch.jobs, {**batch.meta, self._key(): state})

    def recall(self, result: BatchResult) -> Any:
        """The state :meth:`remember` attached to the batch ``result`` answers."""
        if result.batch is None or self._key() not in result.batch.meta:
            raise PluginError(self.name, f"plugin {self.name}: results lost their batch state")
        return result.batch.meta[self._key()]

    def __or__(self, other: object) -> Stack:
        return Stack([self]) | other

    def __repr__(self) -> str:
        return self.name


class Stack(Executor):
    """Plugins over a QPU; submitting runs the batch down through every plugin."""

    def __init__(self, plugins: Sequence[Plugin], qpu: Executor | None = None) -> None:
        self.plugins = tuple(plugins)
        self.qpu = qpu
        parts = [p.name for p in self.plugins] + ([qpu.name] if qpu is not None else [])
        self.name = " | ".join(parts)

    def __or__(self, other: object) -> Stack:
        if self.qpu is not None:
            raise StackError(
                f"stack {self.name} already ends in the QPU {self.qpu.name}; "
                "nothing can come after a QPU"
            )
        if isinstance(other, Plugin):
            return Stack([*self.plugins, other])
        if isinstance(other, Stack):
            return Stack([*self.plugins, *other.plugins], other.qpu)
        return Stack(self.plugins, as_qpu(other))

    def _bottom(self) -> Executor:
        if self.qpu is None:
            raise StackError(f"stack {self.name} has no QPU: end it with a qpu ({self.name} | qpu)")
        return self.qpu

    def specs(self) -> DeviceTarget:
        return self._bottom().specs()

    def _submit_batch(self, batch: Batch) -> BatchResult:
        qpu = self._bottom()
        if not self.plugins:
            try:
                return qpu.run_batch(batch)
            except ProgramError:
                raise
            except Exception as exc:
                raise ProgramError(
                    f"QPU {qpu.name} failed on {batch.describe()}: {type(exc).__name__}: {exc}"
                ) from exc
        elsewhere = qpu.run_stack(self, batch)  # a remote QPU may run the whole stack
        if elsewhere is not None:
            return elsewhere
        top, below = self.plugins[0], Stack(self.plugins[1:], qpu)
        try:
            return top.execute(batch, below)
        except ProgramError:
            raise
        except Exception as exc:
            raise top.failure("execute", batch, exc) from exc

    def __repr__(self) -> str:
        return f"Stack({self.name})"
