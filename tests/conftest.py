"""Session fixtures: real Kafka and PostgreSQL from the project's own launcher.

Set ``LX_TEST_KAFKA_BOOTSTRAP`` / ``LX_TEST_PG_ADMIN_DSN`` to attach to running
servers; otherwise the local ones are started (and stopped at the end if this
session started them). Each test module gets databases and a topic prefix of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from lx_devstack.infra import Infra, KAFKA_ENV, PG_ENV, local_kafka, local_postgres, start_infra
from tests.support.docker import docker_infra


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with docker_infra() as attached:
        if attached is not None:
            yield attached
            return
        was_running = {
            "kafka": bool(os.environ.get(KAFKA_ENV)) or local_kafka().is_running(),
            "pg": bool(os.environ.get(PG_ENV)) or local_postgres().is_running(),
        }
        started = start_infra()
        yield started
        # Leave alone what was already running (a `make run` next door, or CI's servers).
        if started.kafka is not None and not was_running["kafka"]:
            started.kafka.stop()
        if started.pg is not None and not was_running["pg"]:
            started.pg.stop()


@pytest.fixture(scope="module")
def isolation() -> str:
    """A short tag for this module's databases and topic prefix."""
    return f"t{uuid.uuid4().hex[:8]}"
