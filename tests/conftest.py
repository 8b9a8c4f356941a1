"""Session fixtures: real Kafka and PostgreSQL from the project's own launcher.

Set ``LX_TEST_KAFKA_BOOTSTRAP`` / ``LX_TEST_PG_ADMIN_DSN`` to attach to running
servers; otherwise the local ones are started, or reused if running. They are left
running afterwards, as by ``make run``: another session (a ``make run`` next door, a
second test run) may share them; ``make stop`` stops them. Each test module gets
databases, topics and consumer groups of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from lx_devstack.infra import Infra, start_infra

from tests.support.cleanup import drop_test_state
from tests.support.docker import docker_infra


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with docker_infra() as attached:
        if attached is not None:
            yield attached
            return
        yield start_infra()


@pytest.fixture(scope="module")
def isolation(infra: Infra) -> Iterator[str]:
    """A short tag for this module's databases, topic prefix and consumer groups; what
    the module created under it is removed when it ends."""
    tag = f"t{uuid.uuid4().hex[:8]}"
    yield tag
    drop_test_state(infra, tag)
