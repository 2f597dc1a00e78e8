"""``qhpc serve``: run the broker (REST API and ZeroMQ fast path) in this process.

The command assembles what :mod:`qhpc.api` serves — store, resource registry,
broker settings — from its options, writes the first admin token where asked,
and stops everything in order when the server returns. Its log goes to stderr, as
text or JSON lines (``--log-format``, docs/logging.md); a first admin token, which
must never be in a log, is written to a file or shown once on stdout. ``/metrics`` is
served on the REST port for admin tokens and the metrics token (``--metrics-token-file``),
and, with ``--metrics-bind``, also on an address of its own without a token.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from qhpc.cli.options import DEFAULT_KEEP_DAYS, DbOption, KeepDaysOption, store_url
from qhpc.cli.output import err, out
from qhpc.resources import DecodeLimits
from qhpc.session.direct import split_host_port

T = TypeVar("T")
log = logging.getLogger(__name__)


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _decode_limits(items: list[str] | None) -> DecodeLimits:
    from dataclasses import fields

    from qhpc.resources import DEFAULT_LIMITS

    known = {f.name: f.type for f in fields(DecodeLimits)}
    changes: dict[str, Any] = {}
    for item in items or []:
        name, _, text = item.partition("=")
        if name not in known:
            raise typer.BadParameter(
                f"unknown decode limit {name!r}; known: {', '.join(sorted(known))}"
            )
        try:
            value: float | int = float(text) if known[name] == "float" else int(text)
        except ValueError:
            raise typer.BadParameter(f"{name} needs a number, got {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise typer.BadParameter(f"{name} must be a positive finite number")
        changes[name] = value
    return replace(DEFAULT_LIMITS, **changes)


def _finite(value: float) -> float:
    if value != value:  # nan passes every range check
        raise typer.BadParameter("needs a number")
    return value


def bind_address(text: str | None, option: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) of an extra listener; None: off."""
    if text is None:
        return None
    try:
        return split_host_port(text)
    except ValueError:
        raise typer.BadParameter(
            "expected HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:9464",
            param_hint=option,
        ) from None


def _listen(make: Callable[[], T], option: str, text: str | None, *opened: Any) -> T:
    """``make()`` an extra listener now: an address in use ends the start here, before
    anything runs, closing ``opened`` (the registry and the store)."""
    try:
        return make()
    except OSError as error:
        reason = error.strerror or str(error)
        err.print(f"qhpc serve: {option} {text}: {reason}", markup=False)
        for thing in opened:
            thing.close()
        raise typer.Exit(2) from None


def serve(
    db: DbOption = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="QHPC_CONFIG")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="REST port.")] = 8080,
    fastpath: Annotated[
        str, typer.Option(help="ZeroMQ fast-path endpoint for session tasks.")
    ] = "tcp://127.0.0.1:5555",
    policy: Annotated[str, typer.Option(help="fifo, priority or fairshare.")] = "fairshare",
    admin_token_file: Annotated[
        Path | None, typer.Option(help="Write a first admin token here (mode 0600).")
    ] = None,
    runtime_pool_size: Annotated[
        int, typer.Option(min=1, help="Warm spare processes for hybrid programs.")
    ] = 2,
    program_output_limit: Annotated[
        int | None,
        typer.Option(
            min=1024,  # qhpc.broker.MIN_OUTPUT_LIMIT, which the broker checks again
            help="Bytes kept of each of a hybrid program's stdout and stderr, truncation "
            "marker included; the rest is dropped (default 4 MiB).",
        ),
    ] = None,
    chunk_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Run batch tasks longer than this (estimated device seconds) as shot chunks, "
            "letting session tasks in between; 0 runs them whole.",
        ),
    ] = 0.1,
    max_task_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Stop and fail a task that runs longer than this on a resource whose "
            "config sets no max_task_seconds; 0: no limit.",
        ),
    ] = 600.0,
    decode_limit: Annotated[
        list[str] | None,
        typer.Option(
            help="A decoding budget, NAME=VALUE (repeatable), e.g. max_operations=2000000; "
            "see docs/security.md for the names and defaults.",
        ),
    ] = None,
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a client may take to send request headers.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a client may take to send a request body.")
    ] = 30.0,
    keep_alive_timeout: Annotated[
        int, typer.Option(min=1, help="Seconds an idle keep-alive connection stays open.")
    ] = 5,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections beyond this are answered 503.")
    ] = 256,
    max_header_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest request head (request line + headers).")
    ] = 16384,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            case_sensitive=False,
            help="The log on stderr: text (one line per record) or json (one JSON object "
            "per line); see docs/logging.md.",
        ),
    ] = LogFormat.TEXT,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            case_sensitive=False, help="Least severe record logged; debug adds one per task."
        ),
    ] = LogLevel.INFO,
    keep_results_days: KeepDaysOption = DEFAULT_KEEP_DAYS,
    purge_interval: Annotated[
        float,
        typer.Option(
            min=1.0,
            max=7 * 86400.0,
            callback=_finite,
            help="Seconds between two purges of results past --keep-results-days.",
        ),
    ] = 3600.0,
    metrics_token_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="File holding the secret that may read /metrics on the REST port (besides "
            "admin tokens); not readable by every user. Never pass the secret itself.",
        ),
    ] = None,
    metrics_bind: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Also serve /metrics alone, WITHOUT a token, on this address: for a "
            "private scrape network only (docs/monitoring.md). Default: off.",
        ),
    ] = None,
    direct_bind: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Also serve session tasks over the direct channel on TCP (direct://HOST:PORT: "
            "the fast path's job without ZeroMQ's I/O threads; plain text like the fast "
            "path, for a private cluster network; docs/runtime.md). Default: off.",
        ),
    ] = None,
) -> None:
    """Run the broker: REST API + ZeroMQ fast path over the configured resources."""

    from qhpc.logcontext import configure

    configure(str(log_format), str(log_level))

    from qhpc.api import (
        FastPathServer,
        MetricsListener,
        ServerLimits,
        bootstrap_admin_token,
        private_state,
        read_metrics_token,
        run_server,
        write_secret,
    )
    from qhpc.broker import Broker, BrokerConfig, DirectDispatcher, Retention
    from qhpc.files import NotPrivateError
    from qhpc.resources import load_registry
    from qhpc.store import Store

    limits = ServerLimits(
        header_timeout=header_timeout, body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout, max_connections=max_connections,
        max_header_bytes=max_header_bytes,
    )  # fmt: skip
    db = store_url(db)
    metrics_at = bind_address(metrics_bind, "--metrics-bind")
    direct_at = bind_address(direct_bind, "--direct-bind")
    metrics_token = None
    if metrics_token_file is not None:
        try:
            metrics_token = read_metrics_token(metrics_token_file)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--metrics-token-file") from None
    try:
        private_state(db)  # the data dir 0700 (or refused), umask 077, before the store opens
    except NotPrivateError as error:
        log.error("qhpc serve: %s", error)
        raise typer.Exit(2) from None
    store = Store.open(db)
    registry = load_registry(config)
    chunks = chunk_seconds if chunk_seconds > 0 else None
    settings = BrokerConfig(
        policy=policy, runtime_pool_size=runtime_pool_size, chunk_seconds=chunks,
        max_task_seconds=max_task_seconds or None, decode_limits=_decode_limits(decode_limit),
        retention=Retention(keep_days=keep_results_days or None, interval=purge_interval),
    )  # fmt: skip
    if program_output_limit is not None:
        settings = replace(settings, program_output_limit=program_output_limit)
    broker = Broker(store, registry, settings)
    metrics = None
    if metrics_at is not None:
        at = metrics_at
        metrics = _listen(
            lambda: MetricsListener(broker, *at, limits), "--metrics-bind", metrics_bind,
            registry, store,
        )  # fmt: skip
    broker.decoder.start()  # the decoding workers, before the first request waits for them
    broker.programs.rest_url = local_rest_url(host, port)  # co-located programs' QHPC_URL
    secret = bootstrap_admin_token(broker)
    if secret is not None:
        if admin_token_file is not None:
            write_secret(admin_token_file, secret)
            log.info("admin token written to %s", admin_token_file)
        else:
            # stdout, not the log on stderr: a log is kept and shipped, a token must not be
            out.print(f"admin token (shown once): {secret}", markup=False, highlight=False)
            log.info("admin token issued and shown once on stdout")
    direct = None
    if direct_at is not None:
        tcp = direct_at
        direct = _listen(
            lambda: DirectDispatcher(broker, tcp=tcp, unix=False), "--direct-bind", direct_bind,
            registry, store,
        )  # fmt: skip
    broker.start()
    fast = FastPathServer(broker, fastpath).start()
    log.info(
        "qhpc broker: REST http://%s:%s/v1, fast path %s%s, store %s",
        host, port, fast.endpoint,
        "" if direct is None else f" and {direct.tcp_endpoint}", store.url,
    )  # fmt: skip
    if metrics is not None:
        metrics.start()
        log.info("metrics without a token: http://%s/metrics", metrics_bind)
    try:
        run_server(broker, host, port, limits, metrics_token=metrics_token)
    finally:
        if metrics is not None:
            metrics.stop()
        fast.stop()
        if direct is not None:
            direct.stop()
        broker.stop()
        registry.close()
        store.close()
        log.info("qhpc broker stopped")


def local_rest_url(host: str, port: int) -> str:
    """The REST API as a process on the broker's own host reaches it."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
