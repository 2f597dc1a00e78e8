"""The store under test on SQLite and on PostgreSQL, for every store test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import postgres_schema_url
from qhpc.store import Store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
    else:
        yield from postgres_schema_url("qhpc_test")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as opened:
        yield opened
