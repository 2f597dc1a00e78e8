"""``qhpc session``: a running session's own endpoints, started inside its job.

``qhpc session qi-endpoint`` serves Quantum Inspire's compute-runtime protocol for the
session this job holds (:class:`qhpc.session.QiEndpoint`): the session comes from the
environment (``QHPC_FASTPATH``, ``QHPC_SESSION``, ``QHPC_URL``, as qhpc's Slurm
TaskProlog sets them), never from an argument.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated

import typer

from qhpc.envvars import QI_TOKEN_ENV
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

    configure("text", "INFO")
    config = EndpointConfig(
        bind=bind, publish=publish or None, heartbeat=heartbeat, token=token or None,
        limits=MessageLimits(max_bytes=max_message_bytes),
    )  # fmt: skip
    channel = channel_from_env(timeout=timeout, resource=resource)
    try:
        device = BrokerDevice.from_env(channel.resource)
    except BaseException:
        channel.close()
        raise
    endpoint = QiEndpoint(channel, device, config).start()

    def stop(signum: int, frame: FrameType | None) -> None:  # scancel / the job's end
        endpoint.stop(timeout=0)

    signal.signal(signal.SIGTERM, stop)
    out.print(f"Quantum Inspire endpoint for session {channel.session_id} on {channel.resource}:")
    out.print(f"  requests on {endpoint.endpoint}, state on {endpoint.publish_endpoint or '-'}")
    try:
        endpoint.wait()
    except KeyboardInterrupt:
        pass
    finally:
        endpoint.stop()
        device.close()
        channel.close()


__all__ = ["session_app"]
