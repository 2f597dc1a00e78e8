"""Where the ``qhpc`` command prints: results to stdout, progress and errors to stderr.

One pair of consoles for every verb group, so ``--json`` output on stdout is
never mixed with a progress line. Rich reads ``sys.stdout`` at each print, so
tests that capture it see everything.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (dates and the like as strings)."""
    out.print_json(json.dumps(data, default=str))


def fail(message: str) -> int:
    """Print ``error: MESSAGE`` on stderr; the exit code to end with."""
    err.print(f"[red]error:[/] {message}")
    return 1
