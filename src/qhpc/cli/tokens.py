"""``qhpc token create|revoke``: broker tokens (admin).

A new token's secret is shown once: on stdout, or written owner-only to
``--out``; the caller's own token comes from ``--token-file`` or the
environment, never an argument.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from qhpc.cli.options import DEFAULT_URL, TokenOption, UrlOption
from qhpc.cli.output import err, out
from qhpc.client import connect

token_app = typer.Typer(help="Create, list and revoke broker tokens (admin).")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin, centre or user.")],
    subject: Annotated[str, typer.Option(help="User or centre name.")],
    account: Annotated[str | None, typer.Option()] = None,
    centre: Annotated[str | None, typer.Option()] = None,
    ttl: Annotated[float | None, typer.Option(help="Lifetime in seconds.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    out_file: Annotated[
        Path | None,
        typer.Option("--out", metavar="PATH", help="Write the secret here (0600), not stdout."),
    ] = None,
) -> None:
    """Issue a token; the secret is printed once, on stdout (or written to --out)."""
    from qhpc.files import write_private

    with connect(url, token) as client:
        created = client.create_token(role, subject, account, centre, ttl)
    err.print(f"token {created.get('token_id')} for {subject} ({role})")
    if out_file is None:
        sys.stdout.write(created["token"] + "\n")
        return
    write_private(out_file, created["token"] + "\n")
    err.print(f"secret written to {out_file}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument()],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """Revoke a token by id."""
    with connect(url, token) as client:
        client.revoke_token(token_id)
    out.print(f"token {token_id} revoked")
