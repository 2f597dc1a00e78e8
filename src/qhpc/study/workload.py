"""The workload model of the scheduling study, published as data.

A :class:`Scenario` names classes of jobs — hybrid programs (iterations,
circuits per iteration, shots, classical think time between quantum calls) and
batch jobs (circuits, shots) — with their arrivals, the accounts' shares and
the QPU model. Every random quantity is a :class:`Dist` stated in the data.
:meth:`Scenario.materialise` draws concrete jobs with a seeded RNG per job, so
the same seed gives the same jobs, and changing one class leaves the others'
draws alone. Scenarios read and write as JSON (``bench/scenarios/*.json``) or
TOML.
"""

from __future__ import annotations

import json
import math
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qhpc.errors import QhpcError
from qhpc.resources import CalibrationSchedule, TimingModel


class ScenarioError(QhpcError):
    """A scenario file or definition is invalid; the message names the field."""


#: parameters each distribution takes, in the order they are written
_DIST_PARAMS: dict[str, tuple[str, ...]] = {
    "const": ("value",),
    "uniform": ("low", "high"),
    "randint": ("low", "high"),
    "exponential": ("mean",),
    "lognormal": ("median", "sigma"),
}


@dataclass(frozen=True)
class Dist:
    """A stated distribution: ``const``, ``uniform``, ``randint`` (inclusive),
    ``exponential`` (by its mean) or ``lognormal`` (by its median and sigma)."""

    kind: str
    params: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, kind: str, **params: float) -> Dist:
        return cls.from_dict({"kind": kind, **params})

    @classmethod
    def from_dict(cls, data: Any, where: str = "distribution") -> Dist:
        if isinstance(data, int | float) and not isinstance(data, bool):
            data = {"kind": "const", "value": data}
        if not isinstance(data, Mapping) or "kind" not in data:
            raise ScenarioError(f"{where}: expected a number or a table with 'kind', got {data!r}")
        kind = str(data["kind"])
        names = _DIST_PARAMS.get(kind)
        if names is None:
            raise ScenarioError(
                f"{where}: unknown distribution {kind!r}; known: {', '.join(_DIST_PARAMS)}"
            )
        given = set(data) - {"kind"}
        if given != set(names):
            got = ", ".join(sorted(given)) or "none"
            raise ScenarioError(f"{where}: {kind} takes {', '.join(names)}, got {got}")
        values: list[tuple[str, float]] = []
        for name in names:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ScenarioError(f"{where}: {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ScenarioError(f"{where}: {name} must be finite and non-negative")
            values.append((name, float(value)))
        dist = cls(kind, tuple(values))
        low, high = dist._get("low"), dist._get("high")
        if low is not None and high is not None and high < low:
            raise ScenarioError(f"{where}: high {high:g} is below low {low:g}")
        return dist

    def _get(self, name: str) -> float | None:
        return dict(self.params).get(name)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(self.params)}

    def mean(self) -> float:
        p = dict(self.params)
        if self.kind == "const":
            return p["value"]
        if self.kind in ("uniform", "randint"):
            return (p["low"] + p["high"]) / 2
        if self.kind == "exponential":
            return p["mean"]
        return p["median"] * math.exp(p["sigma"] ** 2 / 2)

    def draw(self, rng: random.Random) -> float:
        p = dict(self.params)
        if self.kind == "const":
            return p["value"]
        if self.kind == "uniform":
            return rng.uniform(p["low"], p["high"])
        if self.kind == "randint":
            return float(rng.randint(math.ceil(p["low"]), math.floor(p["high"])))
        if self.kind == "exponential":
            return rng.expovariate(1 / p["mean"]) if p["mean"] > 0 else 0.0
        return rng.lognormvariate(math.log(p["median"]), p["sigma"]) if p["median"] > 0 else 0.0

    def draw_count(self, rng: random.Random) -> int:
        """A draw rounded to a whole number, at least 1 (circuits, shots, iterations)."""
        return max(1, round(self.draw(rng)))


@dataclass(frozen=True)
class Arrivals:
    """``count`` jobs: the first at ``start``, then gaps drawn from ``gap``."""

    count: int
    start: float = 0.0
    gap: Dist = field(default_factory=lambda: Dist.of("const", value=0.0))

    def times(self, rng: random.Random) -> list[float]:
        now, out = self.start, []
        for index in range(self.count):
            if index:
                now += self.gap.draw(rng)
            out.append(now)
        return out


@dataclass(frozen=True)
class HybridClass:
    """Hybrid programs: ``iterations`` quantum calls of ``circuits`` × ``shots``, each
    followed by ``think`` seconds of classical work (the optimiser step)."""

    name: str
    account: str
    arrivals: Arrivals
    iterations: Dist
    circuits: Dist
    shots: Dist
    think: Dist


@dataclass(frozen=True)
class BatchClass:
    """Batch jobs of ``circuits`` × ``shots``, submitted as tasks of ``circuits_per_task``."""

    name: str
    account: str
    arrivals: Arrivals
    circuits: Dist
    shots: Dist
    circuits_per_task: int = 1


@dataclass(frozen=True)
class QpuModel:
    """The emulator's time model (per task, per circuit, per shot) and calibration."""

    timing: TimingModel = field(default_factory=TimingModel)
    calibration: CalibrationSchedule | None = None

    def duration(self, circuits: int, shots: int) -> float:
        return self.timing.duration(circuits, shots)


@dataclass(frozen=True)
class Environment:
    """What surrounds the QPU: Slurm's start latency, the client's round trip, licences.

    ``job_start_latency``: seconds from Slurm granting a job until its program runs
    (scheduling cycle, prolog, interpreter start, checkpoint restore for a split
    sub-job). ``round_trip``: client ↔ broker per quantum call. ``licences``: how many
    hybrid jobs may hold a multiplexed session at once (Slurm's licence count).
    ``starvation_limit`` and ``fairshare_half_life`` are the broker's settings.
    """

    job_start_latency: float = 1.0
    round_trip: float = 0.002
    licences: int = 4
    starvation_limit: float = 60.0
    fairshare_half_life: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Iteration:
    circuits: int
    shots: int
    think: float


@dataclass(frozen=True)
class HybridJob:
    job_id: str
    account: str
    arrival: float
    iterations: tuple[Iteration, ...]


@dataclass(frozen=True)
class BatchJob:
    job_id: str
    account: str
    arrival: float
    circuits: int
    shots: int
    circuits_per_task: int

    def task_sizes(self) -> list[int]:
        """Circuits per task, in submission order."""
        full, rest = divmod(self.circuits, self.circuits_per_task)
        return [self.circuits_per_task] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class Workload:
    """Concrete jobs drawn from a scenario, by arrival."""

    scenario: str
    seed: int
    hybrid: tuple[HybridJob, ...]
    batch: tuple[BatchJob, ...]

    def accounts(self) -> list[str]:
        return sorted({j.account for j in self.hybrid} | {j.account for j in self.batch})


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    hybrid: tuple[HybridClass, ...] = ()
    batch: tuple[BatchClass, ...] = ()
    shares: Mapping[str, float] = field(default_factory=dict)
    qpu: QpuModel = field(default_factory=QpuModel)
    environment: Environment = field(default_factory=Environment)
    seed: int = 1

    def accounts(self) -> list[str]:
        return sorted({c.account for c in self.hybrid} | {c.account for c in self.batch})

    def materialise(self, seed: int | None = None, scale: float = 1.0) -> Workload:
        """Draw the jobs. ``scale`` < 1 keeps that fraction of each class's jobs and
        iterations (at least one), for quick runs."""
        seed = self.seed if seed is None else seed

        def rng(*key: object) -> random.Random:
            # String seeds are hashed with SHA-512: stable across runs and platforms.
            return random.Random(":".join(map(str, (seed, self.name, *key))))

        def scaled(count: int) -> int:
            return max(1, round(count * scale))

        hybrid: list[HybridJob] = []
        for cls in self.hybrid:
            times = Arrivals(scaled(cls.arrivals.count), cls.arrivals.start, cls.arrivals.gap)
            for index, arrival in enumerate(times.times(rng(cls.name, "arrivals"))):
                r = rng(cls.name, index)
                steps = range(scaled(cls.iterations.draw_count(r)))
                c, s, t = cls.circuits, cls.shots, cls.think
                iterations = tuple(
                    Iteration(c.draw_count(r), s.draw_count(r), t.draw(r)) for _ in steps
                )
                hybrid.append(HybridJob(f"{cls.name}-{index}", cls.account, arrival, iterations))
        batch: list[BatchJob] = []
        for bcls in self.batch:
            times = Arrivals(scaled(bcls.arrivals.count), bcls.arrivals.start, bcls.arrivals.gap)
            for index, arrival in enumerate(times.times(rng(bcls.name, "arrivals"))):
                r = rng(bcls.name, index)
                batch.append(
                    BatchJob(
                        f"{bcls.name}-{index}", bcls.account, arrival,
                        scaled(bcls.circuits.draw_count(r)), bcls.shots.draw_count(r),
                        bcls.circuits_per_task,
                    )
                )  # fmt: skip
        return Workload(
            self.name,
            seed,
            tuple(sorted(hybrid, key=lambda j: (j.arrival, j.job_id))),
            tuple(sorted(batch, key=lambda j: (j.arrival, j.job_id))),
        )

    # -- data ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def arrivals(a: Arrivals) -> dict[str, Any]:
            return {"count": a.count, "start": a.start, "gap": a.gap.to_dict()}

        timing = self.qpu.timing
        calibration = self.qpu.calibration
        env = self.environment
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "shares": dict(self.shares),
            "qpu": {
                "task_overhead": timing.task_overhead,
                "circuit_overhead": timing.circuit_overhead,
                "shot_time": timing.shot_time,
                "calibration": None
                if calibration is None
                else {
                    "every": calibration.every,
                    "duration": calibration.duration,
                    **({} if calibration.first is None else {"first": calibration.first}),
                },
            },
            "environment": {
                "job_start_latency": env.job_start_latency,
                "round_trip": env.round_trip,
                "licences": env.licences,
                "starvation_limit": env.starvation_limit,
                "fairshare_half_life": env.fairshare_half_life,
            },
            "hybrid": [
                {
                    "name": c.name,
                    "account": c.account,
                    "arrivals": arrivals(c.arrivals),
                    "iterations": c.iterations.to_dict(),
                    "circuits": c.circuits.to_dict(),
                    "shots": c.shots.to_dict(),
                    "think": c.think.to_dict(),
                }
                for c in self.hybrid
            ],
            "batch": [
                {
                    "name": c.name,
                    "account": c.account,
                    "arrivals": arrivals(c.arrivals),
                    "circuits": c.circuits.to_dict(),
                    "shots": c.shots.to_dict(),
                    "circuits_per_task": c.circuits_per_task,
                }
                for c in self.batch
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        try:
            return _scenario_from_dict(data)
        except ScenarioError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            name = data.get("name", "?") if isinstance(data, Mapping) else "?"
            raise ScenarioError(f"scenario {name}: invalid definition ({exc!s})") from None
        except QhpcError as exc:
            raise ScenarioError(f"scenario {data.get('name', '?')}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


_TOP_KEYS = {"name", "description", "seed", "shares", "qpu", "environment", "hybrid", "batch"}


def _check_keys(where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _arrivals(data: Mapping[str, Any], where: str) -> Arrivals:
    _check_keys(where, data, {"count", "start", "gap"})
    count = int(data["count"])
    if count < 1:
        raise ScenarioError(f"{where}: count must be at least 1, got {count}")
    return Arrivals(count, float(data.get("start", 0.0)), Dist.from_dict(data.get("gap", 0), where))


def _scenario_from_dict(data: Mapping[str, Any]) -> Scenario:
    name = str(data["name"])
    _check_keys(f"scenario {name}", data, _TOP_KEYS)
    qpu_data = dict(data.get("qpu", {}))
    calibration_data = qpu_data.pop("calibration", None)
    _check_keys(
        f"scenario {name}: qpu", qpu_data, {"task_overhead", "circuit_overhead", "shot_time"}
    )
    qpu = QpuModel(
        TimingModel(**{k: float(v) for k, v in qpu_data.items()}),
        CalibrationSchedule(**calibration_data) if calibration_data else None,
    )
    env_data = dict(data.get("environment", {}))
    _check_keys(
        f"scenario {name}: environment",
        env_data,
        {"job_start_latency", "round_trip", "licences", "starvation_limit", "fairshare_half_life"},
    )
    env = Environment(
        job_start_latency=float(env_data.get("job_start_latency", Environment.job_start_latency)),
        round_trip=float(env_data.get("round_trip", Environment.round_trip)),
        licences=int(env_data.get("licences", Environment.licences)),
        starvation_limit=float(env_data.get("starvation_limit", Environment.starvation_limit)),
        fairshare_half_life=float(
            env_data.get("fairshare_half_life", Environment.fairshare_half_life)
        ),
    )
    if env.licences < 1:
        raise ScenarioError(f"scenario {name}: environment.licences must be at least 1")
    hybrid = []
    for item in data.get("hybrid", []):
        where = f"scenario {name}: hybrid class {item.get('name', '?')}"
        _check_keys(
            where, item,
            {"name", "account", "arrivals", "iterations", "circuits", "shots", "think"},
        )  # fmt: skip
        hybrid.append(
            HybridClass(
                str(item["name"]), str(item["account"]), _arrivals(item["arrivals"], where),
                Dist.from_dict(item["iterations"], f"{where}: iterations"),
                Dist.from_dict(item["circuits"], f"{where}: circuits"),
                Dist.from_dict(item["shots"], f"{where}: shots"),
                Dist.from_dict(item["think"], f"{where}: think"),
            )
        )  # fmt: skip
    batch = []
    for item in data.get("batch", []):
        where = f"scenario {name}: batch class {item.get('name', '?')}"
        _check_keys(
            where, item, {"name", "account", "arrivals", "circuits", "shots", "circuits_per_task"}
        )
        per_task = int(item.get("circuits_per_task", 1))
        if per_task < 1:
            raise ScenarioError(f"{where}: circuits_per_task must be at least 1")
        batch.append(
            BatchClass(
                str(item["name"]), str(item["account"]), _arrivals(item["arrivals"], where),
                Dist.from_dict(item["circuits"], f"{where}: circuits"),
                Dist.from_dict(item["shots"], f"{where}: shots"), per_task,
            )
        )  # fmt: skip
    names = [c.name for c in hybrid] + [c.name for c in batch]
    if len(set(names)) != len(names):
        raise ScenarioError(f"scenario {name}: job class names must be unique, got {names}")
    if not names:
        raise ScenarioError(f"scenario {name}: no job classes")
    shares = {str(k): float(v) for k, v in dict(data.get("shares", {})).items()}
    return Scenario(
        name=name, description=str(data.get("description", "")), hybrid=tuple(hybrid),
        batch=tuple(batch), shares=shares, qpu=qpu, environment=env,
        seed=int(data.get("seed", 1)),
    )  # fmt: skip


def load_scenario(path: Path) -> Scenario:
    """A scenario from a ``.json`` or ``.toml`` file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"scenario file {path} is not valid {path.suffix[1:]}: {exc}") from None
    return Scenario.from_dict(data)


# -- the named scenarios -------------------------------------------------------------------

_LOG = "lognormal"


def _vqe_heavy() -> Scenario:
    return Scenario(
        name="vqe-heavy",
        description=(
            "Eight VQE-style hybrid jobs of account chem (40-80 iterations of 2-6 "
            "circuits, classical think time ~1.5 s between quantum calls), with a light "
            "batch background from account phys."
        ),
        hybrid=(
            HybridClass(
                "vqe",
                "chem",
                Arrivals(8, 0.0, Dist.of("exponential", mean=10.0)),
                iterations=Dist.of("randint", low=40, high=80),
                circuits=Dist.of("randint", low=2, high=6),
                shots=Dist.of("const", value=1000),
                think=Dist.of(_LOG, median=1.5, sigma=0.4),
            ),
        ),
        batch=(
            BatchClass(
                "sampling",
                "phys",
                Arrivals(6, 5.0, Dist.of("exponential", mean=40.0)),
                circuits=Dist.of("randint", low=10, high=30),
                shots=Dist.of("const", value=2000),
            ),
        ),
        shares={"chem": 1.0, "phys": 1.0},
        qpu=QpuModel(calibration=CalibrationSchedule(every=600.0, duration=30.0)),
    )


def _batch_heavy() -> Scenario:
    return Scenario(
        name="batch-heavy",
        description=(
            "A steady stream of batch sampling jobs from three accounts and two small "
            "hybrid jobs that must stay responsive."
        ),
        hybrid=(
            HybridClass(
                "qaoa",
                "opt",
                Arrivals(2, 20.0, Dist.of("const", value=30.0)),
                iterations=Dist.of("randint", low=30, high=50),
                circuits=Dist.of("randint", low=1, high=3),
                shots=Dist.of("const", value=1000),
                think=Dist.of(_LOG, median=1.0, sigma=0.4),
            ),
        ),
        batch=tuple(
            BatchClass(
                f"batch-{account}",
                account,
                Arrivals(8, 0.0, Dist.of("exponential", mean=20.0)),
                circuits=Dist.of("randint", low=10, high=40),
                shots=Dist.of("uniform", low=1000, high=4000),
            )
            for account in ("astro", "bio", "fin")
        ),
        shares={"astro": 1.0, "bio": 1.0, "fin": 1.0, "opt": 1.0},
        qpu=QpuModel(calibration=CalibrationSchedule(every=300.0, duration=20.0)),
    )


def _two_centres() -> Scenario:
    return Scenario(
        name="two-centres",
        description=(
            "Two HPC centres with equal shares on one QPU. 'north' is greedy: it floods the "
            "queue with three times as many batch jobs, arriving faster; 'south' sends fewer "
            "batch jobs and two hybrid jobs."
        ),
        hybrid=(
            HybridClass(
                "south-vqe",
                "south",
                Arrivals(2, 10.0, Dist.of("const", value=20.0)),
                iterations=Dist.of("randint", low=30, high=50),
                circuits=Dist.of("randint", low=2, high=4),
                shots=Dist.of("const", value=1000),
                think=Dist.of(_LOG, median=1.5, sigma=0.4),
            ),
        ),
        batch=(
            BatchClass(
                "north-batch",
                "north",
                Arrivals(30, 0.0, Dist.of("exponential", mean=4.0)),
                circuits=Dist.of("randint", low=10, high=30),
                shots=Dist.of("const", value=2000),
            ),
            BatchClass(
                "south-batch",
                "south",
                Arrivals(10, 0.0, Dist.of("exponential", mean=12.0)),
                circuits=Dist.of("randint", low=10, high=30),
                shots=Dist.of("const", value=2000),
            ),
        ),
        shares={"north": 1.0, "south": 1.0},
        qpu=QpuModel(calibration=CalibrationSchedule(every=600.0, duration=30.0)),
    )


def _mixed_duty() -> Scenario:
    return Scenario(
        name="mixed-duty",
        description=(
            "Sessions whose QPU share differs sevenfold, over a stream of batch jobs: twelve "
            "SQD-style jobs of account mat (10-20 iterations of 1-2 circuits x 4000 shots, "
            "then ~20 s of classical diagonalisation: a duty cycle of ~6 %) and, from 300 s, "
            "six VQE jobs of chem arriving close together (duty ~34 %). Slurm's licence "
            "total is 8: how many sessions fit changes as the mix does."
        ),
        hybrid=(
            HybridClass(
                "sqd",
                "mat",
                Arrivals(12, 0.0, Dist.of("exponential", mean=15.0)),
                iterations=Dist.of("randint", low=10, high=20),
                circuits=Dist.of("randint", low=1, high=2),
                shots=Dist.of("const", value=4000),
                think=Dist.of(_LOG, median=20.0, sigma=0.4),
            ),
            HybridClass(
                "vqe",
                "chem",
                Arrivals(6, 300.0, Dist.of("exponential", mean=10.0)),
                iterations=Dist.of("randint", low=40, high=80),
                circuits=Dist.of("randint", low=2, high=6),
                shots=Dist.of("const", value=1000),
                think=Dist.of(_LOG, median=1.5, sigma=0.4),
            ),
        ),
        batch=(
            BatchClass(
                "sampling",
                "phys",
                Arrivals(120, 0.0, Dist.of("exponential", mean=14.0)),
                circuits=Dist.of("randint", low=10, high=30),
                shots=Dist.of("const", value=2000),
            ),
        ),
        shares={"mat": 1.0, "chem": 1.0, "phys": 1.0},
        qpu=QpuModel(calibration=CalibrationSchedule(every=600.0, duration=30.0)),
        environment=Environment(licences=8),
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (_vqe_heavy(), _batch_heavy(), _two_centres(), _mixed_duty())
}


def scenario(name: str) -> Scenario:
    """A named scenario, or one read from a ``.json``/``.toml`` path."""
    if name in SCENARIOS:
        return SCENARIOS[name]
    path = Path(name)
    if path.suffix in (".json", ".toml") and path.exists():
        return load_scenario(path)
    raise ScenarioError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)} or a file path")
