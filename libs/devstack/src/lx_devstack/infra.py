"""Kafka + PostgreSQL for ``make run`` and the test session: attached or started locally.

``LX_TEST_KAFKA_BOOTSTRAP`` and ``LX_TEST_PG_ADMIN_DSN`` (a role allowed to CREATE
DATABASE) attach to servers that are already running; whatever is not named there is
started locally from ``<root>/.local``. CLI: ``python -m lx_devstack.infra up|down|status``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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
    "private_infra",
    "start_infra",
    "start_private_infra",
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


# --- a private pair, for tests that stop and restart the servers themselves ----------


def _private_folder(folder: Path) -> Path:
    """``folder``, resolved, provided the shared servers' data is not in it."""
    folder = Path(folder).resolve()
    for shared in (local_kafka().data_dir, local_postgres().data_dir):
        if shared.is_relative_to(folder):
            raise ValueError(f"{folder} holds the shared servers' data ({shared})")
    return folder


def start_private_infra(
    folder: Path,
    *,
    kafka_port: int,
    kafka_controller_port: int,
    pg_port: int,
    kafka_heap: str = "512m",
    log_folder: Path | None = None,
) -> Infra:
    """A Kafka broker and a PostgreSQL server of their own, with their data in ``folder``.

    For fault tests that kill and restart the servers: the project's shared pair
    (``start_infra``) serves other test sessions meanwhile and is never touched. The
    ports must differ from the shared servers'; the jars are shared (read only).
    Stop and delete with :func:`destroy_private_infra` (or use :func:`private_infra`);
    the servers' logs go to ``log_folder`` (default ``folder``), which is kept.
    """
    folder = _private_folder(folder)
    shared_ports = {local_kafka().port, local_kafka().controller_port, local_postgres().port}
    if shared_ports & {kafka_port, kafka_controller_port, pg_port}:
        raise ValueError(f"ports {sorted(shared_ports)} belong to the shared servers")
    kafka = KafkaNode(
        folder / "kafka",
        port=kafka_port,
        controller_port=kafka_controller_port,
        heap=kafka_heap,
        log_file=(log_folder or folder) / "kafka.log",
        pid_file=folder / "kafka.pid",
    )
    pg = PostgresNode(folder / "pg", port=pg_port, log_file=(log_folder or folder) / "postgres.log")
    infra = Infra(
        kafka_bootstrap=kafka.bootstrap_servers, pg=pg, pg_admin_dsn=pg.admin_dsn, kafka=kafka
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(kafka.start), pool.submit(pg.start)]:
                started.result()
    except BaseException:
        destroy_private_infra(infra, folder)
        raise
    return infra


def destroy_private_infra(infra: Infra, folder: Path) -> None:
    """Kill a private pair (its data is about to go, so no clean shutdown) and delete it."""
    folder = _private_folder(folder)
    if infra.kafka is not None:
        with contextlib.suppress(Exception):
            infra.kafka.kill9()
    if infra.pg is not None:
        with contextlib.suppress(Exception):
            infra.pg.kill9()
        # Where PostgreSQL really kept its files (a /tmp fallback, a short socket dir).
        for extra in (infra.pg.base_dir, infra.pg.socket_dir):
            if not extra.is_relative_to(folder):
                shutil.rmtree(extra, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def private_infra(
    folder: Path,
    *,
    kafka_port: int,
    kafka_controller_port: int,
    pg_port: int,
    kafka_heap: str = "512m",
    log_folder: Path | None = None,
) -> Iterator[Infra]:
    """:func:`start_private_infra`, stopped and deleted on the way out, failures included."""
    infra = start_private_infra(
        folder,
        kafka_port=kafka_port,
        kafka_controller_port=kafka_controller_port,
        pg_port=pg_port,
        kafka_heap=kafka_heap,
        log_folder=log_folder,
    )
    try:
        yield infra
    finally:
        destroy_private_infra(infra, folder)


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
