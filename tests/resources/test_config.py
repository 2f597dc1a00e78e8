from __future__ import annotations

import json
from pathlib import Path

import pytest

from qhpc.resources import (
    AerResource,
    EmulatorResource,
    QxResource,
    ResourceConfigError,
    UnknownResourceError,
    load_registry,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QHPC_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with load_registry() as registry:
        assert registry.names() == ["aer", "emulator", "qx"]
        assert isinstance(registry.get("aer"), AerResource)
        assert isinstance(registry.get("emulator"), EmulatorResource)
        assert isinstance(registry.get("qx"), QxResource)
        assert registry.get("emulator").target().name == "line-5"


def test_toml_with_every_local_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "resources.toml",
        """
[resources.sim]
type = "aer"
method = "matrix_product_state"
max_qubits = 50

[resources.chip]
type = "emulator"
device = "heavy-hex-19"
time_scale = 1000
offline = [[10, 20]]
timing = { task_overhead = 0.1, shot_time = 1e-4 }
calibration = { every = 3600, duration = 300 }

[resources.quantum-inspire]
type = "qx"
max_qubits = 10
""",
    )
    with load_registry(path) as registry:
        assert registry.get("sim").target().num_qubits == 50
        chip = registry.get("chip")
        assert isinstance(chip, EmulatorResource)
        assert chip.target().num_qubits == 19
        assert chip.timing.task_overhead == 0.1
        assert chip.metadata()["time_scale"] == 1000
        assert registry.get("quantum-inspire").target().num_qubits == 10


@pytest.mark.parametrize(
    ("text", "resource", "key", "message"),
    [
        ("[resources.a]\nmethod = 'x'\n", "a", "type", "missing 'type'"),
        ("[resources.a]\ntype = 'warp-drive'\n", "a", "type", "unknown type 'warp-drive'"),
        ("[resources.a]\ntype = 'aer'\nshotz = 3\n", "a", "shotz", "unknown option"),
        ("[resources.a]\ntype = 'aer'\nmax_qubits = 'many'\n", "a", "max_qubits", "must be int"),
        ("[resources.a]\ntype = 'aer'\nmethod = 'tensor'\n", "a", "method", "method must be"),
        ("[resources.a]\ntype = 'emulator'\ndevice = 'line-99'\n", "a", "device", "2 to 32"),
        ("[resources.a]\ntype = 'emulator'\noffline = [[1]]\n", "a", "offline", "pairs"),
        ("[resources.a]\ntype = 'emulator'\ntime_scale = -1\n", "a", "time_scale", "positive"),
        ("[resourcez.a]\ntype = 'aer'\n", None, "resourcez", "unknown top-level"),
    ],
)
def test_config_errors_name_resource_and_key(
    tmp_path: Path, text: str, resource: str | None, key: str, message: str
) -> None:
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ResourceConfigError) as caught:
        registry = load_registry(path)
        for name in registry.names():
            registry.get(name)
    error = caught.value
    assert error.resource == resource
    assert error.key == key
    assert message in str(error)
    if resource:
        assert f"resource {resource!r}" in str(error)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ResourceConfigError, match="cannot read config file"):
        load_registry(tmp_path / "missing.toml")
    with pytest.raises(ResourceConfigError, match="not valid TOML"):
        load_registry(write(tmp_path, "x.toml", "[resources\n"))
    with pytest.raises(ResourceConfigError, match=r"not valid JSON: .* line 1"):
        load_registry(write(tmp_path, "x.json", "{"))
    with pytest.raises(ResourceConfigError, match="expected"):
        load_registry(write(tmp_path, "y.json", json.dumps({"things": []})))


def test_qrmi_json_is_read_as_is(tmp_path: Path) -> None:
    config = {
        "resources": [
            {
                "name": "ibm_fez",
                "type": "ibm-quantum-system",
                "environment": {"QRMI_IBM_QS_ENDPOINT": "https://127.0.0.1:9/api"},
            },
            {"name": "FRESNEL", "type": "pasqal-cloud", "environment": {}},
        ]
    }
    path = write(tmp_path, "qrmi_config.json", json.dumps(config))
    registry = load_registry(path)
    assert registry.names() == ["ibm_fez", "FRESNEL"]
    assert registry.spec("ibm_fez").public_options() == {"environment": ["QRMI_IBM_QS_ENDPOINT"]}
    bad = {"resources": [{"name": "x", "type": "quantum-toaster", "environment": {}}]}
    with pytest.raises(ResourceConfigError) as caught:
        load_registry(write(tmp_path, "bad.json", json.dumps(bad)))
    assert caught.value.resource == "x"
    assert caught.value.key == "type"
    missing = {"resources": [{"type": "pasqal-cloud"}]}
    with pytest.raises(ResourceConfigError, match="missing or empty 'name'"):
        load_registry(write(tmp_path, "missing.json", json.dumps(missing)))


def test_toml_can_include_a_qrmi_config(tmp_path: Path) -> None:
    write(
        tmp_path,
        "qrmi_config.json",
        json.dumps({"resources": [{"name": "FRESNEL", "type": "pasqal-cloud", "environment": {}}]}),
    )
    path = write(
        tmp_path, "r.toml", 'qrmi_config = "qrmi_config.json"\n[resources.sim]\ntype="aer"\n'
    )
    assert load_registry(path).names() == ["sim", "FRESNEL"]


def test_unknown_resource_lists_the_known_ones() -> None:
    registry = load_registry(None)
    with pytest.raises(
        UnknownResourceError, match="unknown resource 'nope'; configured resources: aer"
    ):
        registry.get("nope")


def test_duplicate_names_are_rejected(tmp_path: Path) -> None:
    write(
        tmp_path,
        "q.json",
        json.dumps({"resources": [{"name": "sim", "type": "pasqal-cloud", "environment": {}}]}),
    )
    path = write(tmp_path, "r.toml", 'qrmi_config = "q.json"\n[resources.sim]\ntype="aer"\n')
    with pytest.raises(ResourceConfigError, match="defined twice"):
        load_registry(path)


def test_null_resource_is_instant_and_configurable(tmp_path: Path) -> None:
    from qiskit.circuit import QuantumCircuit

    from qhpc.resources import NullResource, SamplerResult, SamplerTask

    path = write(tmp_path, "n.toml", '[resources.void]\ntype = "null"\nmax_qubits = 8\n')
    with load_registry(path) as registry:
        void = registry.get("void")
        assert isinstance(void, NullResource)
        circuit = QuantumCircuit(3, 3)
        circuit.measure_all(add_bits=False)
        result = void.run(SamplerTask((circuit,), shots=7))
        assert isinstance(result, SamplerResult)
        assert result.circuits[0].counts == {"000": 7}


@pytest.mark.parametrize("value", ["0", "-1", '"10"', "inf", "1e9", "true"])
def test_max_task_seconds_must_be_a_sane_number(tmp_path: Path, value: str) -> None:
    config = write(
        tmp_path, "r.toml", f'[resources.sim]\ntype = "aer"\nmax_task_seconds = {value}\n'
    )
    with pytest.raises(ResourceConfigError, match="max_task_seconds"):
        load_registry(config)


def test_max_task_seconds_is_an_option_of_every_type(tmp_path: Path) -> None:
    config = write(
        tmp_path, "r.toml",
        '[resources.sim]\ntype = "aer"\nmax_task_seconds = 30\n'
        '[resources.chip]\ntype = "emulator"\nmax_task_seconds = 2.5\n',
    )  # fmt: skip
    with load_registry(config) as registry:
        assert registry.spec("sim").max_task_seconds == 30.0
        assert registry.spec("chip").max_task_seconds == 2.5
