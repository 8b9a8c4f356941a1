"""Kafka + PostgreSQL for ``make run`` and the test session: attached or started locally.

``LX_TEST_KAFKA_BOOTSTRAP`` and ``LX_TEST_PG_ADMIN_DSN`` (a role allowed to CREATE
DATABASE) attach to servers that are already running; whatever is not named there is
started locally from ``<root>/.local``. CLI: ``python -m lx_devstack.infra up|down|status``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from lx_devstack.kafka import KafkaNode, broker_answers
from lx_devstack.paths import kafka_dir, logs_dir, pg_dir, run_dir
from lx_devstack.postgres import PostgresNode, create_database, drop_database, libpq_dsn

__all__ = [
    "Infra",
    "create_database",
    "drop_database",
    "local_kafka",
    "local_postgres",
    "main",
    "start_infra",
]

log = logging.getLogger(__name__)

KAFKA_ENV = "LX_TEST_KAFKA_BOOTSTRAP"
PG_ENV = "LX_TEST_PG_ADMIN_DSN"


def local_kafka() -> KafkaNode:
    """The project's local broker (``.local/kafka/broker``, port 19092)."""
    return KafkaNode(
        kafka_dir() / "broker",
        log_file=logs_dir() / "kafka.log",
        pid_file=run_dir() / "kafka.pid",
    )


def local_postgres() -> PostgresNode:
    """The project's local PostgreSQL (``.local/pg``, port 25432)."""
    return PostgresNode(pg_dir(), log_file=logs_dir() / "postgres.log")


@dataclass
class Infra:
    """Where Kafka and PostgreSQL are; ``pg``/``kafka`` are set only when started locally."""

    kafka_bootstrap: str
    pg: PostgresNode | None
    pg_admin_dsn: str
    kafka: KafkaNode | None = None

    def dsn(self, dbname: str) -> str:
        """SQLAlchemy URL (``postgresql+psycopg://``) of ``dbname`` as the admin DSN's role."""
        if self.pg is not None:
            return self.pg.dsn(dbname)
        parts = urlsplit(libpq_dsn(self.pg_admin_dsn))
        return urlunsplit(("postgresql+psycopg", parts.netloc, f"/{dbname}", parts.query, ""))

    def create_database(self, name: str, exist_ok: bool = True) -> None:
        """Create database ``name`` (no error if it exists, unless ``exist_ok`` is false)."""
        create_database(self.pg_admin_dsn, name, exist_ok=exist_ok)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists."""
        drop_database(self.pg_admin_dsn, name)

    def stop(self) -> None:
        """Stop the locally started servers; attached ones are left alone."""
        if self.kafka is not None:
            self.kafka.stop()
        if self.pg is not None:
            self.pg.stop()


def _start_kafka() -> KafkaNode:
    node = local_kafka()
    node.start()  # fetches the jars first when they are missing or the pom changed
    return node


def _start_postgres() -> PostgresNode:
    node = local_postgres()
    node.start()
    return node


def start_infra() -> Infra:
    """Attach to the servers named in the environment, start the others locally.

    The two local servers start in parallel: the JVM start-up dominates and overlaps
    with initdb/pg_ctl.
    """
    bootstrap = os.environ.get(KAFKA_ENV, "").strip()
    admin_dsn = os.environ.get(PG_ENV, "").strip()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        kafka_future = None if bootstrap else pool.submit(_start_kafka)
        pg_future = None if admin_dsn else pool.submit(_start_postgres)
        if bootstrap and not broker_answers(bootstrap, timeout=10):
            raise RuntimeError(f"{KAFKA_ENV}={bootstrap}: no Kafka broker answers there")
        kafka = kafka_future.result() if kafka_future else None
        pg = pg_future.result() if pg_future else None
    if kafka is not None:
        bootstrap = kafka.bootstrap_servers
    if pg is not None:
        admin_dsn = pg.admin_dsn
    return Infra(kafka_bootstrap=bootstrap, pg=pg, pg_admin_dsn=libpq_dsn(admin_dsn), kafka=kafka)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    """``up`` starts (or reuses) both servers, ``down`` stops them, ``status`` reports."""
    parser = argparse.ArgumentParser(prog="python -m lx_devstack.infra", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.command == "up":
        started = time.monotonic()
        infra = start_infra()
        _out(f"KAFKA_BOOTSTRAP_SERVERS={infra.kafka_bootstrap}")
        _out(f"PG_ADMIN_DSN={infra.pg_admin_dsn}")
        _out(f"# ready in {time.monotonic() - started:.1f}s")
        return 0

    kafka, pg = local_kafka(), local_postgres()
    if args.command == "down":
        kafka.stop()
        pg.stop()
        _out("stopped")
        return 0

    kafka_up, pg_up = kafka.is_running(), pg.is_running()
    _out(
        f"kafka     {'running' if kafka_up else 'stopped'}  {kafka.bootstrap_servers}"
        f"  (pid {kafka.pid()}, log {kafka.log_file})"
    )
    _out(
        f"postgres  {'running' if pg_up else 'stopped'}  {pg.admin_dsn}"
        f"  (pid {pg.pid()}, data {pg.pgdata})"
    )
    return 0 if kafka_up and pg_up else 1


if __name__ == "__main__":
    sys.exit(main())
