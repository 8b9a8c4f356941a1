"""End-to-end fixtures: every service as its own process, a fake buyer on loopback."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from lx_devstack.infra import Infra
from lx_devstack.stack import SERVICES, Stack, StackLayout


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.e2e)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_floor() -> int:
    """Where the kernel starts handing out ports to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port_block(size: int) -> int:
    """A base port with ``size`` free ports after it (services need consecutive ports).

    Below the ephemeral range: a service restarted after kill -9 must find its port free,
    and an outgoing connection may take any ephemeral port the moment it is released.
    """
    ceiling = min(_ephemeral_floor(), 32_768) - size
    for _ in range(200):
        base = random.randrange(15_000, ceiling)
        if all(_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no block of free ports found")


def test_layout(tag: str, **overrides: object) -> StackLayout:
    base = free_port_block(len(SERVICES) + 1)
    layout = StackLayout(
        base_port=base, buyer_port=base + len(SERVICES), db_prefix=f"{tag}_", topic_prefix=f"{tag}."
    )
    layout.run_folder = layout.run_folder / tag
    layout.log_folder = layout.log_folder / tag
    for key, value in overrides.items():
        setattr(layout, key, value)
    return layout


@pytest.fixture(scope="module")
def stack(infra: Infra, isolation: str) -> Iterator[Stack]:
    running = Stack(infra, test_layout(isolation))
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()  # the isolation fixture then drops its databases and topics
