"""Unit tests are pure: a socket opened here is a bug in the test or the code."""

import base64
import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not open sockets")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield


@pytest.fixture(autouse=True)
def _real_config_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production refuses the development config key; tests of other production checks
    run with a real one (test_settings checks the refusal itself)."""
    monkeypatch.setenv("LX_PLATFORM_CONFIG_KEYS", "unit1:" + base64.b64encode(b"u" * 32).decode())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.unit)
