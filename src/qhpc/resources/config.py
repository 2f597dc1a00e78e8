"""Resource configuration: qhpc's own TOML and IBM's ``qrmi_config.json``, read as is.

A TOML file names resources under ``[resources.NAME]`` with a ``type``
(``aer``, ``emulator``, ``qx``, ``qdmi``, or any QRMI type such as ``ibm-quantum-system``)
and that type's options; ``qrmi_config = "path"`` pulls in a QRMI file too. A
``.json`` file is read as a QRMI config. Errors name the file, the resource and
the key. ``[pools.NAME] members = [...]`` puts several resources behind one name
(``pools.py``). With no file at all, built-in defaults give an ``aer`` simulator, an
``emulator`` (5-qubit line device) and ``qx``. Any resource may add a vendor proxy
table, ``[resources.NAME.proxy]`` (``proxy.py``).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from qhpc.resources.base import QuantumResource
from qhpc.resources.errors import ResourceConfigError, UnknownResourceError
from qhpc.resources.pools import PoolSpec, check_pools, parse_pools
from qhpc.resources.proxy import ProxySpec, parse_proxy
from qhpc.resources.target import device_target
from qhpc.resources.types import plugin_types

CONFIG_ENV = "QHPC_CONFIG"

DEFAULT_CONFIG = """
[resources.aer]
type = "aer"

[resources.emulator]
type = "emulator"
device = "line-5"
noise = true

[resources.qx]
type = "qx"
"""


@dataclass(frozen=True)
class ResourceSpec:
    """One configured resource, before it is built."""

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "built-in defaults"

    @property
    def max_task_seconds(self) -> float | None:
        """The longest one task may run on this resource (the broker stops it then);
        None: the broker's default."""
        value = _get(self, "max_task_seconds", float, None)
        if value is not None and not (0 < value <= 366 * 86400 and math.isfinite(value)):
            raise ResourceConfigError(
                f"{self.source}: must be between 0 and one year (seconds)",
                self.name,
                "max_task_seconds",
            )
        return cast(float | None, value)

    @property
    def proxy(self) -> ProxySpec | None:
        """The vendor proxy of this resource (``[resources.NAME.proxy]``); None: none."""
        table = self.options.get("proxy")
        return None if table is None else parse_proxy(self.name, table, self.source)

    def public_options(self) -> dict[str, Any]:
        """Options safe to show: environment values (vendor credentials) are hidden."""
        shown = dict(self.options)
        if "environment" in shown:
            shown["environment"] = sorted(shown["environment"])
        return shown


class ResourceRegistry:
    """Configured resources by name, and the pools over them; each adapter is built on
    first use."""

    def __init__(self, specs: list[ResourceSpec], pools: Sequence[PoolSpec] = ()) -> None:
        self._specs: dict[str, ResourceSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ResourceConfigError(
                    f"defined twice ({self._specs[spec.name].source} and {spec.source})",
                    spec.name,
                )
            self._specs[spec.name] = spec
        self._pools = check_pools(pools, {n: s.source for n, s in self._specs.items()})
        self._built: dict[str, QuantumResource] = {}

    def names(self) -> list[str]:
        return list(self._specs)

    def spec(self, name: str) -> ResourceSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownResourceError(name, self.names(), self.pool_names()) from None

    def check_name(self, name: str) -> None:
        """UnknownResourceError unless ``name`` is a resource or a pool (what work may name)."""
        if name not in self._pools:
            self.spec(name)

    def pool_names(self) -> list[str]:
        return list(self._pools)

    def pool(self, name: str) -> PoolSpec | None:
        """The pool of that name; None if ``name`` is not a pool (it may be a resource)."""
        return self._pools.get(name)

    def get(self, name: str) -> QuantumResource:
        resource = self._built.get(name)
        if resource is None:
            resource = build_resource(self.spec(name))
            self._built[name] = resource
        return resource

    def close(self) -> None:
        for resource in self._built.values():
            resource.close()
        self._built.clear()

    def __enter__(self) -> ResourceRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_registry(path: str | Path | None = None) -> ResourceRegistry:
    """Registry from ``path``, else ``$QHPC_CONFIG``, else the user's config file, else defaults."""
    chosen = path or os.environ.get(CONFIG_ENV) or None  # an empty variable means unset
    if chosen is None:
        from platformdirs import user_config_path

        user_file = user_config_path("qhpc") / "resources.toml"
        if user_file.exists():
            chosen = user_file
    if chosen is None:
        return ResourceRegistry(*parse_toml(DEFAULT_CONFIG, "built-in defaults"))
    return ResourceRegistry(*load_specs(Path(chosen)))


def load_specs(path: Path) -> tuple[list[ResourceSpec], list[PoolSpec]]:
    """The resources and pools a file defines (a QRMI ``.json`` file has no pools)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResourceConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if path.suffix == ".json":
        return parse_qrmi_json(text, str(path)), []
    return parse_toml(text, str(path), base=path.parent)


def parse_toml(
    text: str, source: str, base: Path | None = None
) -> tuple[list[ResourceSpec], list[PoolSpec]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ResourceConfigError(f"{source} is not valid TOML: {exc}") from None
    unknown = set(data) - {"resources", "pools", "qrmi_config"}
    if unknown:
        raise ResourceConfigError(
            f"{source}: unknown top-level key(s) {sorted(unknown)}; "
            "expected [resources.NAME] and [pools.NAME] tables and qrmi_config",
            key=sorted(unknown)[0],
        )
    tables = data.get("resources", {})
    if not isinstance(tables, dict):
        raise ResourceConfigError(f"{source}: 'resources' must be a table", key="resources")
    specs = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ResourceConfigError(f"{source}: must be a table", name)
        if "type" not in table:
            raise ResourceConfigError(f"{source}: missing 'type'", name, "type")
        options = {k: v for k, v in table.items() if k != "type"}
        spec = ResourceSpec(name=name, type=str(table["type"]), options=options, source=source)
        _check_spec(spec)
        specs.append(spec)
    if "qrmi_config" in data:
        qrmi_path = Path(str(data["qrmi_config"]))
        if base is not None and not qrmi_path.is_absolute():
            qrmi_path = base / qrmi_path
        try:
            qrmi_text = qrmi_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ResourceConfigError(
                f"{source}: cannot read qrmi_config {qrmi_path}: {exc.strerror}", key="qrmi_config"
            ) from None
        specs.extend(parse_qrmi_json(qrmi_text, str(qrmi_path)))
    return specs, parse_pools(data.get("pools", {}), source)


def parse_qrmi_json(text: str, source: str) -> list[ResourceSpec]:
    """Specs from IBM's ``qrmi_config.json``: ``{"resources": [{name, type, environment}]}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResourceConfigError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("resources"), list):
        raise ResourceConfigError(f'{source}: expected {{"resources": [...]}}', key="resources")
    specs = []
    for index, entry in enumerate(data["resources"]):
        label = entry.get("name") if isinstance(entry, dict) else None
        where = str(label) if label else f"resources[{index}]"
        if not isinstance(entry, dict):
            raise ResourceConfigError(f"{source}: each resource must be an object", where)
        for key in ("name", "type"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ResourceConfigError(f"{source}: missing or empty {key!r}", where, key)
        environment = entry.get("environment", {})
        if not isinstance(environment, dict) or not all(
            isinstance(v, str) for v in environment.values()
        ):
            raise ResourceConfigError(
                f"{source}: 'environment' must map names to strings", where, "environment"
            )
        spec = ResourceSpec(
            name=entry["name"],
            type=entry["type"],
            options={"environment": dict(environment)},
            source=source,
        )
        _check_spec(spec)
        specs.append(spec)
    return specs


# -- building adapters -------------------------------------------------------------

_OPTIONS: dict[str, set[str]] = {
    "aer": {"method", "device", "noise", "max_qubits", "max_shots", "seed"},
    "emulator": {
        "device",
        "noise",
        "time_scale",
        "seed",
        "timing",
        "calibration",
        "offline",
    },
    "qx": {"max_qubits", "max_shots", "seed"},
    "null": {"max_qubits", "max_shots"},
    "qdmi": {"device", "driver", "token_file", "max_shots", "max_circuits", "timeout"},
}
_QRMI_OPTIONS = {"environment", "num_qubits", "max_shots"}
#: options of every type, read by the broker rather than the adapter
_BROKER_OPTIONS = {"max_task_seconds", "proxy"}


def _qrmi_types() -> Mapping[str, object]:
    from qhpc.resources.qrmi import QRMI_TYPES

    types: Mapping[str, object] = QRMI_TYPES
    return types


@dataclass(frozen=True)
class ResourceType:
    """One kind of resource a resources file may name (``type = "<name>"``): what a
    package declares under the ``qhpc.resources`` entry-point group (types.py)."""

    name: str
    #: the options a resource of this type accepts (besides the broker's own)
    options: frozenset[str]
    build: Callable[[ResourceSpec], QuantumResource]
    #: checks a spec when the file is read, before its options are matched against
    #: ``options``: for errors that must say more than "unknown option" (an inline token)
    check: Callable[[ResourceSpec], None] | None = None


def resource_types() -> dict[str, ResourceType]:
    """Every type a resources file may name besides QRMI's: qhpc's and installed plugins'."""
    return plugin_types(BUILTIN_TYPES, ResourceType)


def _check_spec(spec: ResourceSpec) -> None:
    kind = resource_types().get(spec.type)
    allowed = None if kind is None else set(kind.options)
    if allowed is None:
        if spec.type not in _qrmi_types():
            known = sorted([*resource_types(), *_qrmi_types()])
            raise ResourceConfigError(
                f"{spec.source}: unknown type {spec.type!r}; known types: {', '.join(known)}",
                spec.name,
                "type",
            )
        allowed = _QRMI_OPTIONS
    elif kind is not None and kind.check is not None:
        kind.check(spec)
    allowed = allowed | _BROKER_OPTIONS
    spec.max_task_seconds  # noqa: B018 - validates the value now, not at the first task
    spec.proxy  # noqa: B018 - likewise the proxy table, at load rather than at serve
    for key in spec.options:
        if key not in allowed:
            raise ResourceConfigError(
                f"{spec.source}: unknown option for type {spec.type!r}; "
                f"allowed: {', '.join(sorted(allowed))}",
                spec.name,
                key,
            )


def build_resource(spec: ResourceSpec) -> QuantumResource:
    kind = resource_types().get(spec.type)
    builder = kind.build if kind is not None else _build_qrmi
    try:
        return builder(spec)
    except ResourceConfigError as exc:
        if exc.resource is None:
            raise ResourceConfigError(exc.detail, spec.name, exc.key) from None
        raise
    except (TypeError, ValueError) as exc:
        raise ResourceConfigError(f"{spec.source}: {exc}", spec.name) from None


def _get(spec: ResourceSpec, key: str, kind: type, default: Any) -> Any:
    value = spec.options.get(key, default)
    if value is default:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ResourceConfigError(
            f"{spec.source}: must be {kind.__name__}, got {value!r}", spec.name, key
        )
    return value


def _build_aer(spec: ResourceSpec) -> QuantumResource:
    from qhpc.resources.aer import AerResource

    device = _get(spec, "device", str, None)
    return AerResource(
        spec.name,
        method=_get(spec, "method", str, "automatic"),
        device=device_target(device) if device else None,
        noise=_get(spec, "noise", bool, False),
        max_qubits=_get(spec, "max_qubits", int, None),
        max_shots=_get(spec, "max_shots", int, 1_000_000),
        seed=_get(spec, "seed", int, None),
    )


def _build_emulator(spec: ResourceSpec) -> QuantumResource:
    from qhpc.resources.emulator import (
        CalibrationSchedule,
        EmulatorResource,
        ScaledClock,
        TimingModel,
        Window,
    )

    timing = _get(spec, "timing", dict, {})
    unknown = set(timing) - {"task_overhead", "circuit_overhead", "shot_time"}
    if unknown:
        raise ResourceConfigError(
            f"unknown timing option(s) {sorted(unknown)}", spec.name, "timing"
        )
    calibration = _get(spec, "calibration", dict, None)
    offline = _get(spec, "offline", list, [])
    try:
        windows = tuple(Window(float(a), float(b)) for a, b in offline)
    except (TypeError, ValueError):
        raise ResourceConfigError(
            "offline must be a list of [start, end] pairs in seconds", spec.name, "offline"
        ) from None
    return EmulatorResource(
        spec.name,
        device=device_target(_get(spec, "device", str, "line-5")),
        timing=TimingModel(**{k: float(v) for k, v in timing.items()}),
        calibration=CalibrationSchedule(**calibration) if calibration else None,
        offline=windows,
        noise=_get(spec, "noise", bool, True),
        clock=ScaledClock(_get(spec, "time_scale", float, 1.0)),
        seed=_get(spec, "seed", int, None),
    )


def _build_qx(spec: ResourceSpec) -> QuantumResource:
    from qhpc.resources.qx import QxResource

    return QxResource(
        spec.name,
        max_qubits=_get(spec, "max_qubits", int, 24),
        max_shots=_get(spec, "max_shots", int, 100_000),
        seed=_get(spec, "seed", int, None),
    )


def _build_qrmi(spec: ResourceSpec) -> QuantumResource:
    from qhpc.resources.qrmi import QrmiResource

    resource: QuantumResource = QrmiResource(
        spec.name,
        spec.type,
        dict(_get(spec, "environment", dict, {})),
        num_qubits=_get(spec, "num_qubits", int, None),
        max_shots=_get(spec, "max_shots", int, 100_000),
    )
    return resource


def _build_null(spec: ResourceSpec) -> QuantumResource:
    from qhpc.resources.null import NullResource

    return NullResource(
        spec.name,
        max_qubits=_get(spec, "max_qubits", int, 64),
        max_shots=_get(spec, "max_shots", int, 1_000_000),
    )


def _check_qdmi(spec: ResourceSpec) -> None:
    from qhpc.resources.qdmi_config import check_qdmi_options

    check_qdmi_options(spec.name, spec.options, spec.source)


def _build_qdmi(spec: ResourceSpec) -> QuantumResource:
    from qhpc.resources.qdmi import QdmiResource

    return QdmiResource(
        spec.name,
        _get(spec, "device", str, None),
        driver=_get(spec, "driver", str, None),
        token_file=_get(spec, "token_file", str, None),
        max_shots=_get(spec, "max_shots", int, 100_000),
        max_circuits=_get(spec, "max_circuits", int, 300),
        timeout=_get(spec, "timeout", float, 30.0),
    )


AER = ResourceType("aer", frozenset(_OPTIONS["aer"]), _build_aer)
EMULATOR = ResourceType("emulator", frozenset(_OPTIONS["emulator"]), _build_emulator)
QX = ResourceType("qx", frozenset(_OPTIONS["qx"]), _build_qx)
NULL = ResourceType("null", frozenset(_OPTIONS["null"]), _build_null)
QDMI = ResourceType("qdmi", frozenset(_OPTIONS["qdmi"]), _build_qdmi, _check_qdmi)
#: qhpc's own types, declared in its pyproject.toml like any plugin's (types.py)
BUILTIN_TYPES: dict[str, ResourceType] = {t.name: t for t in (NULL, AER, EMULATOR, QX, QDMI)}
