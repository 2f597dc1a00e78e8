"""The ``[resources.NAME.proxy]`` table, its credential file and the proxy's rules, as
units: what a resources file may say (errors name the resource and the key), which
credential files are refused, which requests pass and what is read from answers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from qhpc.proxy import (
    BadProxyRequest,
    CredentialError,
    CredentialFile,
    Kind,
    check_submission,
    classify,
    job_id_of,
    usage_of,
)
from qhpc.resources import ProxySpec, ResourceConfigError, parse_proxy
from qhpc.resources.config import parse_toml

GOOD = """
[resources.heron]
type = "null"
[resources.heron.proxy]
base_url = "https://quantum.cloud.ibm.com/api/"
credential_file = "/etc/qhpc/vendor/heron.token"
headers = { "Service-CRN" = "crn:v1:x", "IBM-API-Version" = "2025-05-01" }
jobs = "/v1/jobs"
backend = "ibm_torino"
allow = ["GET /v1/backends/ibm_torino/**", "GET /v1/backends/*/status"]
"""


def spec(**table: Any) -> ProxySpec:
    base = {"base_url": "https://v.example/api", "credential_file": "/etc/c", "jobs": "/v1/jobs"}
    return parse_proxy("heron", {**base, **table}, "test.toml")


def test_a_resources_file_with_a_proxy_table_loads() -> None:
    (loaded,), _ = parse_toml(GOOD, "r.toml")
    proxy = loaded.proxy
    assert proxy is not None and proxy.base_url == "https://quantum.cloud.ibm.com/api"
    assert proxy.jobs == ("v1", "jobs") and proxy.backend == "ibm_torino"
    assert dict(proxy.headers)["Service-CRN"] == "crn:v1:x"
    assert proxy.auth_header_value("T") == "Bearer T"


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"base_url": "ftp://v/api"}, "proxy.base_url", "http(s) URL"),
        ({"base_url": "http://vendor.example/api"}, "proxy.base_url", "loopback"),
        ({"base_url": "https://u:p@v.example/api"}, "proxy.base_url", "credentials"),
        ({"credential_file": "relative/path"}, "proxy.credential_file", "absolute"),
        ({"token": "inline-secret"}, "proxy.token", "unknown key"),
        ({"auth_value": "Bearer"}, "proxy.auth_value", "{credential}"),
        ({"auth_value": "Bearer {credential}\r\nX: y"}, "proxy.auth_value", "control"),
        ({"headers": {"Host": "evil"}}, "proxy.headers", "one hop"),
        ({"headers": {"Authorization": "x"}}, "proxy.headers", "set by the proxy"),
        ({"headers": {"Service-CRN": "a\nb"}}, "proxy.headers", "without controls"),
        ({"pass_headers": ["authorization"]}, "proxy.pass_headers", "set by the proxy"),
        ({"pass_headers": ["cookie"]}, "proxy.pass_headers", "one hop"),
        ({"pass_headers": ["service-crn"], "headers": {"Service-CRN": "c"}},
         "proxy.pass_headers", "set by the proxy"),
        ({"allow": ["FETCH /x"]}, "proxy.allow", "METHOD"),
        ({"allow": ["GET /a/../b"]}, "proxy.allow", "not allowed"),
        ({"allow": ["GET /a/**/b"]}, "proxy.allow", "not allowed"),
        ({"jobs": "v1/jobs"}, "proxy.jobs", "start with '/'"),
        ({"max_request_bytes": 0}, "proxy.max_request_bytes", "between"),
        ({"timeout": True}, "proxy.timeout", "number"),
        ({"usage_field": "usage..x"}, "proxy.usage_field", "dotted"),
    ],
)  # fmt: skip
def test_bad_proxy_tables_name_resource_and_key(
    table: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ResourceConfigError) as caught:
        spec(**table)
    assert caught.value.resource == "heron" and caught.value.key == key
    assert words in str(caught.value)


def test_backend_needs_jobs_and_the_table_must_be_a_table() -> None:
    with pytest.raises(ResourceConfigError, match="needs 'jobs'"):
        parse_proxy("h", {"base_url": "https://v/a", "credential_file": "/c", "backend": "b"}, "t")
    with pytest.raises(ResourceConfigError, match="must be a table"):
        parse_toml('[resources.heron]\ntype = "null"\nproxy = 1\n', "r.toml")


# -- the credential file ----------------------------------------------------------------


def _file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "cred"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize(
    ("text", "mode", "words"),
    [
        ("secret", 0o640, "chmod 600"),
        ("secret", 0o604, "chmod 600"),
        ("", 0o600, "empty"),
        ("one\ntwo", 0o600, "more than one line"),
        ("x" * 20000, 0o600, "larger than"),
    ],
)
def test_unusable_credential_files_are_refused_without_their_contents(
    tmp_path: Path, text: str, mode: int, words: str
) -> None:
    credential = CredentialFile(_file(tmp_path, text, mode), "heron")
    with pytest.raises(CredentialError, match=words) as caught:
        credential.value()
    assert "secret" not in str(caught.value) and "two" not in str(caught.value)


def test_a_credential_is_reread_when_its_file_changes(tmp_path: Path) -> None:
    path = _file(tmp_path, "first\n")
    credential = CredentialFile(path, "heron")
    assert credential.value() == "first"
    Path(path).write_text("second-and-longer\n")
    assert credential.value() == "second-and-longer"
    with pytest.raises(CredentialError, match="not a regular file"):
        CredentialFile(str(tmp_path), "heron").value()


# -- rules --------------------------------------------------------------------------------


def test_requests_are_classified_and_odd_paths_refused() -> None:
    proxy = spec(backend="ibm_torino", allow=["GET /v1/backends/ibm_torino/**"])
    assert classify(proxy, "POST", "v1/jobs", "").kind is Kind.SUBMIT
    job = classify(proxy, "GET", "v1/jobs/cabc/results", "")
    assert (job.kind, job.job_id, job.path) == (Kind.JOB, "cabc", "/v1/jobs/cabc/results")
    assert classify(proxy, "GET", "v1/backends/ibm_torino", "").kind is Kind.ALLOWED
    assert classify(proxy, "GET", "v1/backends/ibm_torino/a/b", "").kind is Kind.ALLOWED
    for method, path in [
        ("GET", "v1/jobs"), ("PUT", "v1/jobs/cabc"), ("GET", "v1/backends/ibm_other"),
        ("GET", "v1/jobs/../x"), ("GET", "v1/./jobs"), ("GET", "v1//jobs"),
        ("GET", "v1/jobs/a b"), ("GET", "v1/jobs/%2e%2e"), ("GET", "x" * 2000),
    ]:  # fmt: skip
        with pytest.raises(BadProxyRequest):
            classify(proxy, method, path, "")


def test_submissions_ids_and_usage_are_read_within_bounds() -> None:
    proxy = spec(backend="ibm_torino")
    assert check_submission(proxy, b'{"backend": "ibm_torino"}') == {"backend": "ibm_torino"}
    for body in (b'{"backend": "ibm_x"}', b"{}", b"[]", b"nope", b"[" * 50000):
        with pytest.raises(BadProxyRequest):
            check_submission(proxy, body)
    assert job_id_of(proxy, b'{"id": "c1"}', None) == "c1"
    assert job_id_of(proxy, b"", {"id": "mine-1"}) == "mine-1"  # on-premises: the client's id
    assert job_id_of(proxy, b'{"id": "../x"}', None) is None
    assert job_id_of(proxy, b'{"id": 5}', {"id": "a/b"}) is None
    assert usage_of(proxy, b'{"usage": {"quantum_seconds": 2.5}}') == 2.5
    for figure in (b"-1", b"1e99", b"true", b'"3"'):
        assert usage_of(proxy, b'{"usage": {"quantum_seconds": ' + figure + b"}}") is None
    for answer in (b'{"usage": 3}', b"[]", b"x"):
        assert usage_of(proxy, answer) is None
