"""Results of jobs and batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from qhpc.program.job import Batch


@dataclass(frozen=True)
class Result:
    """The outcome of one job: a value with its standard error, or counts."""

    value: float | None = None
    error: float | None = None
    counts: dict[str, int] | None = None
    parameters: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shots(self) -> int:
        return sum(self.counts.values()) if self.counts else 0

    def probabilities(self) -> dict[str, float]:
        total = self.shots
        return {k: v / total for k, v in (self.counts or {}).items()} if total else {}

    def replace(self, **changes: Any) -> Result:
        return replace(self, **changes)


@dataclass(frozen=True)
class BatchResult:
    """Results in the order of the batch's jobs; ``batch`` is the batch they answer."""

    results: tuple[Result, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    batch: Batch | None = None

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Result:
        return self.results[index]

    def replace(self, **changes: Any) -> BatchResult:
        return replace(self, **changes)
