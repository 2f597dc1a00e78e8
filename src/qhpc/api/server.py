"""Serving the API: uvicorn in-process, the metrics listener, first admin token, the
``python -m qhpc.api`` entry."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from qhpc.api.app import create_app
from qhpc.api.transport import ServerLimits, server_config
from qhpc.broker import Broker, BrokerConfig
from qhpc.files import NotPrivateError, private_dir, write_private
from qhpc.logcontext import configure
from qhpc.resources import load_registry
from qhpc.security import Role
from qhpc.store import Store
from qhpc.web import metrics_app
from qhpc.web import read_metrics_token as read_metrics_token  # re-exported: qhpc.api's name

log = logging.getLogger(__name__)


def run_server(
    broker: Broker,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: ServerLimits | None = None,
    metrics_token: str | None = None,
) -> None:
    """Serve the API for ``broker`` until SIGINT/SIGTERM, then return normally.

    The broker is expected to be started by the caller, who also stops it after.
    ``limits`` bound slow and numerous clients (see ``transport.py``); ``/metrics``
    answers admin tokens and ``metrics_token``.
    """
    limits = limits or ServerLimits()
    app = create_app(broker, body_timeout=limits.body_timeout, metrics_token=metrics_token)
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


class MetricsListener:
    """``GET /metrics`` alone, without a token, on its own address (a thread of its own).

    For a private scrape network (``qhpc serve --metrics-bind``). The socket is bound
    here, on the caller's thread, so an address in use fails the start at once with
    an OSError, instead of a log line from a thread nobody watches.
    """

    def __init__(
        self, broker: Broker, host: str, port: int, limits: ServerLimits | None = None
    ) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]  # fmt: skip
        self.socket = socket.socket(family, kind, proto)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(64)
        except OSError:
            self.socket.close()
            raise
        self.host, self.port = self.socket.getsockname()[:2]
        config = server_config(metrics_app(broker), host, self.port, limits or ServerLimits())
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True,
            name="qhpc-metrics",
        )  # fmt: skip

    def start(self) -> MetricsListener:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.socket.close()


def bootstrap_admin_token(broker: Broker) -> str | None:
    """Issue an admin token if the store holds no usable one; returns the secret once.

    Revoked and expired admin tokens do not count, so an operator who locked
    themselves out gets back in by restarting the server on the same store.
    """
    now = broker.clock()
    for token in broker.records.tokens(include_revoked=False):
        if token.role == str(Role.ADMIN) and (token.expires_at is None or token.expires_at > now):
            return None
    _, secret = broker.access.issue(Role.ADMIN, "admin")
    return secret


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``: created 0600 (a looser existing file is tightened,
    one owned by someone else or a symlink refused), never readable by others."""
    write_private(path, secret + "\n")


def private_state(db: str) -> None:
    """Before a server opens its store: files it creates are private whatever the umask
    it was started with, and the SQLite store's directory is private: made 0700,
    tightened with a warning when this process owns it, else refused
    (:class:`~qhpc.files.NotPrivateError`; the rules are in :mod:`qhpc.files`)."""
    # Second line of defence: every file qhpc writes is created 0600 explicitly, but
    # a library writing a file of its own would otherwise follow the inherited umask.
    os.umask(0o077)
    path = sqlite_path(db)
    if path is not None:
        private_dir(path.parent)


def sqlite_path(db: str) -> Path | None:
    """The file of an SQLite store URL or path; None for PostgreSQL or in memory."""
    if db in ("", ":memory:", "sqlite://", "sqlite:///:memory:"):
        return None
    if db.startswith(("sqlite:///", "sqlite+pysqlite:///")):
        return Path(db.split(":///", 1)[1]).expanduser()
    return None if "://" in db else Path(db).expanduser()


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
    configure("text", "info")
    try:
        private_state(args.db)
    except NotPrivateError as error:
        print(f"qhpc: {error}", file=sys.stderr)
        return 2
    store = Store.open(args.db)
    registry = load_registry(args.config)
    broker = Broker(store, registry, BrokerConfig(policy=args.policy))
    secret = bootstrap_admin_token(broker)
    if secret is not None:
        if args.admin_token_file is not None:
            write_secret(args.admin_token_file, secret)
            print(f"qhpc: admin token written to {args.admin_token_file}", file=sys.stderr)
        else:
            print(f"qhpc: admin token (shown once): {secret}")  # stdout: never in the log
    broker.start()
    try:
        run_server(broker, args.host, args.port)
    finally:
        broker.stop()
        registry.close()
        store.close()
    return 0
