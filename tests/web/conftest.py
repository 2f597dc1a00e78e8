"""The browser of the console tests, and where their screenshots go.

Debian's Chromium (``scripts/browser.sh`` installs it; ``QHPC_TEST_BROWSER`` names
another) driven by Playwright for Python; never a browser Playwright downloads.
Without one the browser tests skip with the reason, except under CI=true, where that
is a failure (``make unit`` installs it there).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_BROWSER = "/usr/bin/chromium"
#: Chromium's flags on a closed network: without the background-networking ones its
#: connections (also to 127.0.0.1) are refused here
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium for the whole run (one per session: it takes a second to start)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed: pip install -e '.[dev]'")
    path = os.environ.get("QHPC_TEST_BROWSER") or DEFAULT_BROWSER
    if not os.access(path, os.X_OK):
        _missing(f"no browser at {path}: run scripts/browser.sh (installs Debian's chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=BROWSER_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``QHPC_TEST_ARTEFACTS``, else a pytest temporary directory."""
    named = os.environ.get("QHPC_TEST_ARTEFACTS")
    if named:
        path = Path(named)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("artefacts")
