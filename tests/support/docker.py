"""Testcontainers, used only where a Docker engine answers (never on the project's CI)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from lx_devstack.infra import Infra


def docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # no client library, no socket, no daemon: all mean "no Docker"
        return False


@contextlib.contextmanager
def docker_infra() -> Iterator[Infra | None]:
    """Kafka and PostgreSQL in containers when Docker answers; ``None`` otherwise."""
    if not docker_answers():
        yield None
        return
    from testcontainers.community.kafka import KafkaContainer  # type: ignore[import-untyped]
    from testcontainers.community.postgres import PostgresContainer  # type: ignore[import-untyped]

    # testcontainers' Kafka module drives Confluent's image (its start script and KRaft
    # check are written for it); cp-kafka 7.9 is Apache Kafka 3.9 in KRaft mode.
    with (
        KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft() as kafka,
        PostgresContainer("postgres:15", username="lx", password="lx", driver=None) as pg,
    ):
        yield Infra(
            kafka_bootstrap=kafka.get_bootstrap_server(),
            pg=None,
            pg_admin_dsn=pg.get_connection_url(),
        )
