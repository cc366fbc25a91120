"""Shared fixtures. Append new fixtures at the end; keep each one small."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class OutboundRequestRefused(AssertionError):
    """A test tried to reach a host that is not on this machine (no real model calls)."""


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _refuse_outbound_http() -> Iterator[None]:
    """Every httpx request of the test session must go to loopback (pydantic-ai's
    ``ALLOW_MODEL_REQUESTS`` idea, enforced at the transport): no real model calls."""
    try:
        import httpx
    except ImportError:  # the [openai] extra is not installed: nothing can call out
        yield
        return
    real = httpx.AsyncHTTPTransport.handle_async_request

    async def guarded(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> Any:
        if not _is_loopback(request.url.host):
            raise OutboundRequestRefused(
                f"tests may only call loopback servers, not {request.url.host!r}"
            )
        return await real(self, request)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", guarded)
        yield


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's default database lives under a temporary data dir, never the user's."""
    data_home = tmp_path_factory.mktemp("xdg-data")
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    monkeypatch.setenv("RXINVOKE_DB", str(data_home / "rxinvoke" / "rxinvoke.db"))
