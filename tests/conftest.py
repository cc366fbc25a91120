"""Shared fixtures. Append new fixtures at the end; keep each one small."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
