"""Calls into vendor libraries, bounded in time.

A vendor library (QRMI's Rust core, a QDMI device behind a C driver) may talk to a
remote endpoint inside any call and hang there with no timeout of its own. qhpc must
not hang with it, nor be kept from exiting: the call runs in a daemon thread and the
caller waits at most ``timeout`` seconds. A call that times out is abandoned, not
stopped (no library offers that); the vendor may still act on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def bounded_call(
    call: Callable[..., Any], args: tuple[Any, ...], timeout: float, name: str = "vendor-call"
) -> Any:
    """``call(*args)`` in a daemon thread; its result, its exception, or ``TimeoutError``."""
    box: list[tuple[bool, Any]] = []

    def work() -> None:
        try:
            box.append((True, call(*args)))
        except Exception as exc:
            box.append((False, exc))

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        raise TimeoutError(f"no answer within {timeout:g} s")
    ok, value = box.pop()
    if ok:
        return value
    try:
        raise value
    finally:
        # The traceback holds this frame: drop the frame's own reference to the error,
        # or error -> traceback -> frame -> error is a cycle that keeps the call's
        # arguments (a device, a session) alive until the next full collection.
        value = None
