"""``qhpc session``: a running session's own endpoints, started inside its job.

``qhpc session qi-endpoint`` serves Quantum Inspire's compute-runtime protocol for the
session this job holds (:class:`qhpc.session.QiEndpoint`): the session comes from the
environment (``QHPC_FASTPATH``, ``QHPC_SESSION``, ``QHPC_URL``, as qhpc's Slurm
TaskProlog sets them), never from an argument.

A TCP endpoint always has a token, since any user of the node reaches 127.0.0.1: from
``--token-file`` or ``QHPC_QI_TOKEN``, else a fresh one written to an owner-only file
(``--token-out``) whose path, never the token, is printed. The file appears only once
both sockets are bound, so a runtime that waits for it talks to this endpoint and not
to a program that took the port first; it is removed when the endpoint stops.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from qhpc.envvars import QI_TOKEN_ENV
from qhpc.files import write_private
from qhpc.logcontext import configure
from qhpc.session.qi_messages import PUBLISH_PORT, REQUEST_PORT, MessageLimits

from .options import secret_option
from .output import out

session_app = typer.Typer(
    help="Endpoints of the session this job holds (run inside the job).", no_args_is_help=True
)


@session_app.command("qi-endpoint")
def qi_endpoint(
    bind: Annotated[
        str, typer.Option(help="Where Quantum Inspire's runtime sends requests (ZeroMQ REP).")
    ] = f"tcp://127.0.0.1:{REQUEST_PORT}",
    publish: Annotated[
        str, typer.Option(help="Where the state is published (ZeroMQ PUB); '' for none.")
    ] = f"tcp://127.0.0.1:{PUBLISH_PORT}",
    resource: Annotated[
        str | None,
        typer.Option(help="Which of the job's QPUs (--qpu=a,b); default: $QHPC_RESOURCE."),
    ] = None,
    token: Annotated[
        str,
        secret_option(
            "--token-file", QI_TOKEN_ENV, "the token the runtime must send in initialize"
        ),
    ] = "",
    token_out: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Where a generated token goes (0600) when TCP is given none; default: "
            "qi-endpoint/SESSION_ID.token in the user data dir.",
        ),
    ] = None,
    heartbeat: Annotated[float, typer.Option(help="Seconds between published states.")] = 2.0,
    max_message_bytes: Annotated[
        int, typer.Option(help="Largest request answered; twice this drops the peer.")
    ] = MessageLimits().max_bytes,
    timeout: Annotated[float, typer.Option(help="Seconds one execute may take.")] = 600.0,
) -> None:
    """Serve Quantum Inspire's compute-runtime protocol for this job's session."""
    # here, not above: every other qhpc command would pay for loading them
    from qhpc.program import BrokerDevice
    from qhpc.session import EndpointConfig, QiEndpoint, channel_from_env
    from qhpc.session.quantuminspire import tokenless_refusal

    configure("text", "INFO")
    generate = not token and tokenless_refusal(bind) is not None
    config = EndpointConfig(
        bind=bind, publish=publish or None, heartbeat=heartbeat,
        token=secrets.token_urlsafe(32) if generate else token or None,
        limits=MessageLimits(max_bytes=max_message_bytes),
    )  # fmt: skip
    channel = channel_from_env(timeout=timeout, resource=resource)
    try:
        device = BrokerDevice.from_env(channel.resource)
        endpoint = QiEndpoint(channel, device, config)
    except BaseException:
        channel.close()
        raise
    token_file = None
    try:
        endpoint.start()
        if generate:
            token_file = token_out or _default_token_file(channel.session_id)
            _publish_token(token_file, config.token or "")
    except BaseException:
        endpoint.stop()
        device.close()
        channel.close()
        raise

    def stop(signum: int, frame: FrameType | None) -> None:  # scancel / the job's end
        endpoint.stop(timeout=0)

    signal.signal(signal.SIGTERM, stop)
    out.print(f"Quantum Inspire endpoint for session {channel.session_id} on {channel.resource}:")
    out.print(f"  requests on {endpoint.endpoint}, state on {endpoint.publish_endpoint or '-'}")
    if token_file is not None:
        out.print(f"  initialize needs payload.token: the token is in {token_file}")
    try:
        endpoint.wait()
    except KeyboardInterrupt:
        pass
    finally:
        endpoint.stop()
        device.close()
        channel.close()
        if token_file is not None:
            token_file.unlink(missing_ok=True)  # it opens nothing once the endpoint is gone


def _default_token_file(session_id: str) -> Path:
    from platformdirs import user_data_path

    return user_data_path("qhpc") / "qi-endpoint" / f"{session_id}.token"


def _publish_token(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` (0600, its directory created 0700) all at once: a
    runtime polling for the file never reads half of it."""
    partial = path.with_name(f".{path.name}.partial")
    write_private(partial, token + "\n")
    os.replace(partial, path)


__all__ = ["session_app"]
