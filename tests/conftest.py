"""Shared fixtures. Append new fixtures at the end; keep each one small."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import tests_support_servers as servers
from tests_support_servers import PostgresServer, RedisServer

from rxinvoke import MemoryStore, PostgresStore, SqliteStore, Store
from rxinvoke.testing import refuse_outbound_http


@pytest.fixture(autouse=True, scope="session")
def _refuse_outbound_http() -> Iterator[None]:
    """Every httpx request of the test session must go to loopback: no real model calls
    (the guard of the rxinvoke.testing kit, for the whole session)."""
    with refuse_outbound_http():
        yield


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's default database lives under a temporary data dir, never the user's."""
    data_home = tmp_path_factory.mktemp("xdg-data")
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    monkeypatch.setenv("RXINVOKE_DB", str(data_home / "rxinvoke" / "rxinvoke.db"))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster on 127.0.0.1 for this test session (tests/tests_support_servers.py)."""
    with servers.postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on 127.0.0.1 for this test session (tests/tests_support_servers.py)."""
    with servers.redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store of the conformance suite (tests/test_store.py, tests/test_replay.py): a
    MemoryStore, a SqliteStore file, a PostgresStore in a schema of its own."""
    made: Store
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        made = PostgresStore(server.dsn, schema=f"t_{uuid.uuid4().hex[:12]}")
    elif request.param == "sqlite":
        made = SqliteStore(tmp_path / "store.db")
    else:
        made = MemoryStore()
    yield made
    await made.close()
