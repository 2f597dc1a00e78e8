"""The log formats and context ids (qhpc.logcontext), in process."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from qhpc.logcontext import (
    JsonFormatter,
    TextFormatter,
    bind,
    configure,
    current_ids,
    escape,
    fields,
    log_scope,
    redact,
    utc_timestamp,
)

TOKEN = "qhpc_" + "A1b2-C3_d4" * 5  # the shape of a real one: 43+ URL-safe characters


def record(
    msg: str = "hello %s",
    args: tuple[object, ...] = ("world",),
    extra: dict[str, object] | None = None,
    exc: bool = False,
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nINFO forged line")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.getLogger("qhpc.test").makeRecord(
        "qhpc.test", logging.WARNING, __file__, 1, msg, args, exc_info, extra=extra
    )
    made.created = 1_700_000_000.25
    return made


def test_timestamps_are_iso_utc_with_milliseconds() -> None:
    assert utc_timestamp(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert utc_timestamp(0.0) == "1970-01-01T00:00:00.000Z"


def test_json_records_carry_the_base_keys_the_scope_and_the_event_fields() -> None:
    with log_scope(request_id="r-1", user="alice"):
        line = JsonFormatter().format(record(extra=fields(event="job_submitted", tasks=3)))
    parsed = json.loads(line)
    assert parsed == {
        "ts": "2023-11-14T22:13:20.250Z", "level": "WARNING", "logger": "qhpc.test",
        "msg": "hello world", "request_id": "r-1", "user": "alice",
        "event": "job_submitted", "tasks": 3,
    }  # fmt: skip


def test_event_ids_win_over_the_scope_and_none_is_left_out() -> None:
    with log_scope(job_id="outer", resource="emu"):
        made = record(extra=fields(job_id="inner", session_id=None, msg="not the message"))
        parsed = json.loads(JsonFormatter().format(made))
    assert parsed["job_id"] == "inner" and parsed["resource"] == "emu"
    assert "session_id" not in parsed
    assert parsed["msg"] == "hello world"  # a field never overwrites a base key


def test_json_is_one_ascii_line_whatever_the_tenant_sent() -> None:
    hostile = 'a\nb\r\u2028c\u2029d\x85e\x1b[31m"}{'
    line = JsonFormatter().format(record(args=(hostile,), extra=fields(name=hostile), exc=True))
    assert "\n" not in line and line.isascii()
    assert line.splitlines() == [line]
    parsed = json.loads(line)
    assert parsed["msg"] == f"hello {hostile}" and parsed["name"] == hostile
    assert "ValueError: bad\nINFO forged line" in parsed["exc"]


def test_text_is_one_line_per_record_with_controls_escaped() -> None:
    hostile = "evil\n2023-11-14T22:13:20.250Z INFO qhpc.broker job finished\u2028x\x1b[2J"
    line = TextFormatter().format(record(args=(hostile,), extra=fields(name=hostile)))
    assert line.splitlines() == [line]
    assert "\\n2023-11-14" in line and "\\u2028" in line and "\\x1b[2J" in line
    assert line.startswith("2023-11-14T22:13:20.250Z WARNING qhpc.test hello evil\\n")
    assert ' name="evil\\n2023' in line


def test_text_values_are_plain_or_quoted() -> None:
    line = TextFormatter().format(
        record(extra=fields(job_id="ab12", name='my "big" job', path="a\\b", tasks=3, empty=""))
    )
    assert " job_id=ab12 " in line and " tasks=3" in line
    assert ' name="my \\"big\\" job"' in line and ' path="a\\\\b"' in line
    assert ' empty=""' in line


def test_a_traceback_is_indented_under_its_record() -> None:
    text = TextFormatter().format(record(exc=True))
    first, *rest = text.split("\n")
    assert first.startswith("2023-11-14T22:13:20.250Z WARNING") and rest
    assert all(line.startswith("    ") for line in rest)
    assert "    ValueError: bad" in rest and "    INFO forged line" in rest


def test_token_shaped_words_are_redacted_in_both_formats() -> None:
    assert redact(f"x {TOKEN} y") == "x qhpc_[redacted] y"
    assert redact("qhpc_short qhpc.broker") == "qhpc_short qhpc.broker"
    for formatter in (JsonFormatter(), TextFormatter()):
        out = formatter.format(record(args=(TOKEN,), extra=fields(secret=TOKEN)))
        assert TOKEN not in out and "qhpc_[redacted]" in out


def test_escape_leaves_ordinary_text_alone() -> None:
    assert escape("plain text, ünïcode ok: ∑") == "plain text, ünïcode ok: ∑"
    assert escape("\t\r\n\x00\x7f\x9f") == "\\t\\r\\n\\x00\\x7f\\x9f"


def test_scopes_nest_and_end() -> None:
    assert current_ids() == {}
    with log_scope(request_id="r"):
        with log_scope(job_id="j"):
            assert current_ids() == {"request_id": "r", "job_id": "j"}
        assert current_ids() == {"request_id": "r"}
    assert current_ids() == {}


def test_bind_reaches_every_thread_of_the_scope_and_not_beyond() -> None:
    seen: list[dict[str, str]] = []

    def handler() -> None:  # as FastAPI runs a dependency: in a copy of the context
        bind(user="alice")

    import contextvars

    with log_scope(request_id="r"):
        contextvars.copy_context().run(handler)
        thread = threading.Thread(target=lambda: seen.append(current_ids()))
        thread.start()
        thread.join()
        assert current_ids() == {"request_id": "r", "user": "alice"}
    assert seen == [{}]  # a plain thread starts with no scope
    assert current_ids() == {}


def test_unknown_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log context field"):
        bind(token="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown log context field"), log_scope(jobid="x"):
        pass


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    levels = {n: logging.getLogger(n).level for n in ("qhpc", "uvicorn")}
    try:
        yield
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_logging")
def test_configure_routes_qhpc_at_its_level_and_others_from_warning() -> None:
    stream = io.StringIO()
    configure("json", "debug", stream)
    configure("json", "debug", stream)  # a second call replaces, never doubles
    with log_scope(request_id="r-9"):
        logging.getLogger("qhpc.broker.x").debug("one")
    logging.getLogger("qiskit.passmanager").info("noise")
    logging.getLogger("qiskit.passmanager").warning("two")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["msg"], r.get("request_id")) for r in lines] == [("one", "r-9"), ("two", None)]


@pytest.mark.usefixtures("restore_logging")
def test_configure_refuses_unknown_format_and_level() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure("xml")
    with pytest.raises(ValueError, match="unknown log level"):
        configure("text", "loud")
