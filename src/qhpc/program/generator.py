"""Job generators: programs that yield jobs and receive their results."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from qhpc.program.job import Batch, Job
from qhpc.program.result import Result

#: what a job generator yields and receives
GeneratorFunction: TypeAlias = Callable[..., Generator[Job | Batch, Any, Any]]


@dataclass(frozen=True)
class JobGenerator:
    """A program that yields jobs (or batches) and receives their results.

    ``result = yield job`` gets a :class:`Result`; ``results = yield batch`` a
    :class:`BatchResult`. The generator's return value is the submission's
    result (a number becomes ``Result(value=...)``). Build one with the
    :func:`job_generator` decorator and submit it to any QPU or stack.
    """

    function: GeneratorFunction
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return getattr(self.function, "__name__", "generator")

    def start(self) -> Generator[Job | Batch, Any, Any]:
        return self.function(*self.args, **self.kwargs)


def job_generator(function: GeneratorFunction) -> Callable[..., JobGenerator]:
    """Decorator: calling the function returns a :class:`JobGenerator` to submit."""

    def build(*args: Any, **kwargs: Any) -> JobGenerator:
        return JobGenerator(function, args, kwargs)

    build.__name__ = getattr(function, "__name__", "generator")
    build.__doc__ = function.__doc__
    return build


def as_result(value: Any) -> Result:
    """A generator's return value as a :class:`Result`."""
    if isinstance(value, Result):
        return value
    if isinstance(value, numbers.Real):
        return Result(value=float(value))
    return Result(meta={"return": value})
