"""Serving the API: uvicorn in-process, first admin token, the ``python -m qhpc.api`` entry."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from qhpc.api.app import create_app
from qhpc.api.transport import ServerLimits, server_config
from qhpc.broker import Broker, BrokerConfig
from qhpc.resources import load_registry
from qhpc.security import Role
from qhpc.store import Store

log = logging.getLogger(__name__)


def run_server(
    broker: Broker,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: ServerLimits | None = None,
) -> None:
    """Serve the API for ``broker`` until SIGINT/SIGTERM, then return normally.

    The broker is expected to be started by the caller, who also stops it after.
    ``limits`` bound slow and numerous clients (see ``transport.py``).
    """
    limits = limits or ServerLimits()
    app = create_app(broker, body_timeout=limits.body_timeout)
    server = uvicorn.Server(server_config(app, host, port, limits))
    with _signals_stop(server):
        server.run()


@contextlib.contextmanager
def _signals_stop(server: uvicorn.Server) -> Iterator[None]:
    """While serving, SIGINT/SIGTERM end the server instead of the process.

    uvicorn shuts down gracefully on a signal and then re-raises it against the
    handler that was installed before it started; with the default handler the
    process would die right there, before the caller could stop the broker (stop
    running tasks, close the store). This handler only asks the server to exit,
    which also covers a signal that arrives before uvicorn installs its own.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled in the main thread
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def bootstrap_admin_token(broker: Broker) -> str | None:
    """Issue an admin token if the store holds no usable one; returns the secret once.

    Revoked and expired admin tokens do not count, so an operator who locked
    themselves out gets back in by restarting the server on the same store.
    """
    now = broker.clock()
    for token in broker.store.list_tokens(include_revoked=False):
        if token.role == str(Role.ADMIN) and (token.expires_at is None or token.expires_at > now):
            return None
    _, secret = broker.access.issue(Role.ADMIN, "admin")
    return secret


def write_secret(path: Path, secret: str) -> None:
    # Created 0600 from the start: the secret must never be readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qhpc.api", description="serve the qhpc API")
    parser.add_argument("--db", default="qhpc.db", help="store: SQLite path or PostgreSQL URL")
    parser.add_argument("--config", default=None, help="resources TOML or qrmi_config.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--policy", default="fairshare", help="scheduling policy")
    parser.add_argument(
        "--admin-token-file", type=Path, default=None,
        help="write a newly bootstrapped admin token here (mode 0600) instead of stderr",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    store = Store.open(args.db)
    registry = load_registry(args.config)
    broker = Broker(store, registry, BrokerConfig(policy=args.policy))
    secret = bootstrap_admin_token(broker)
    if secret is not None:
        if args.admin_token_file is not None:
            write_secret(args.admin_token_file, secret)
            print(f"qhpc: admin token written to {args.admin_token_file}", file=sys.stderr)
        else:
            print(f"qhpc: admin token (shown once): {secret}", file=sys.stderr)
    broker.start()
    try:
        run_server(broker, args.host, args.port)
    finally:
        broker.stop()
        registry.close()
        store.close()
    return 0
