"""A real local PostgreSQL 15 server run with initdb/pg_ctl, no Docker.

The server is initialised once (UTF8, trust auth, 127.0.0.1 only) and kept between
runs; a login role ``lx``/``lx`` with CREATEDB is what services and tests use.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import errors, sql

from lx_devstack.paths import (
    child_pids,
    file_lock,
    pid_alive,
    pid_zombie,
    port_open,
    process_cmdline,
    read_pidfile,
)

log = logging.getLogger(__name__)

ROLE = "lx"
PASSWORD = "lx"  # noqa: S105 - local trust-auth dev server, bound to 127.0.0.1
SUPERUSER = "postgres"
_PG_USER = "postgres"  # the OS user that runs initdb/pg_ctl when we are root
_CONF = "lx_devstack.conf"
# sun_path holds 108 bytes; keep room for "/.s.PGSQL.NNNNN" and the ".lock" file.
_MAX_SOCKET_DIR = 80


def pg_bindir() -> Path:
    """The PostgreSQL server binaries: ``$LX_PG_BINDIR``, Debian's 15, or ``pg_config``."""
    candidates: list[Path] = []
    if env := os.environ.get("LX_PG_BINDIR"):
        candidates.append(Path(env))
    candidates.append(Path("/usr/lib/postgresql/15/bin"))
    if pg_config := shutil.which("pg_config"):
        # On Debian pg_config may describe another version's client-only install.
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql-15)")


def libpq_dsn(dsn: str) -> str:
    """``postgresql+psycopg://…`` (SQLAlchemy) → ``postgresql://…`` (libpq/psycopg)."""
    return re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", dsn)


def create_database(admin_dsn: str, name: str, *, exist_ok: bool = True) -> None:
    """Create database ``name`` as the role of ``admin_dsn`` (needs CREATEDB)."""
    with psycopg.connect(libpq_dsn(admin_dsn), autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if exists:
            if exist_ok:
                return
            raise errors.DuplicateDatabase(f"database {name!r} already exists")
        try:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        except errors.DuplicateDatabase:
            # Another process created it between our check and our CREATE.
            if not exist_ok:
                raise


def drop_database(admin_dsn: str, name: str, attempts: int = 20) -> None:
    """Drop database ``name`` if it exists, disconnecting its sessions first.

    ``WITH (FORCE)`` cannot end a superuser's backend, and on PostgreSQL 15 an autovacuum
    worker busy in the database is one: such a refusal is retried until it has moved on.
    """
    statement = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
    for attempt in range(attempts):
        try:
            with psycopg.connect(libpq_dsn(admin_dsn), autocommit=True, connect_timeout=10) as c:
                c.execute(statement)
            return
        except psycopg.errors.InsufficientPrivilege:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def _conf_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresNode:
    """One PostgreSQL server on ``127.0.0.1:<port>`` with its files in ``data_dir``.

    Inside ``data_dir``: ``data/`` (PGDATA), ``run/`` (unix socket) and, unless
    ``log_file`` is given, ``postgres.log``. When we are root, initdb and pg_ctl run as
    the ``postgres`` OS user; if that user cannot reach ``data_dir``, the files move to
    ``/tmp/lx-pg-<hash of data_dir>`` instead.
    """

    def __init__(self, data_dir: Path, port: int = 25432, *, log_file: Path | None = None) -> None:
        """Nothing is created or started until :meth:`start`."""
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self._log_file = log_file
        self._base: Path | None = None

    def __repr__(self) -> str:
        return f"PostgresNode({str(self.base_dir)!r}, port={self.port})"

    # --- locations ---------------------------------------------------------------------

    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def base_dir(self) -> Path:
        """Where the files really are: ``data_dir`` or its ``/tmp`` fallback (see class doc)."""
        if self._base is None:
            self._base = self.data_dir
            if self._as_root and not self._pg_user_reaches(self.data_dir):
                digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:10]
                self._base = Path(tempfile.gettempdir()) / f"lx-pg-{digest}"
                log.warning(
                    "OS user %r cannot reach %s: PostgreSQL data goes to %s instead",
                    _PG_USER,
                    self.data_dir,
                    self._base,
                )
        return self._base

    @property
    def pgdata(self) -> Path:
        """The cluster directory (PGDATA)."""
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The unix socket directory; moved under /tmp when the path is too long for one."""
        run = self.base_dir / "run"
        if len(str(run)) <= _MAX_SOCKET_DIR:
            return run
        digest = hashlib.sha256(str(run).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"lx-pg-{digest}-run"

    @property
    def _socket_lock(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}.lock"

    @property
    def log_file(self) -> Path:
        """The server log (pg_ctl -l)."""
        if self._log_file is not None and self.base_dir == self.data_dir:
            return self._log_file
        return self.base_dir / "postgres.log"

    # --- DSNs --------------------------------------------------------------------------

    def dsn(self, dbname: str) -> str:
        """SQLAlchemy URL of database ``dbname`` as role ``lx``."""
        return f"postgresql+psycopg://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    @property
    def admin_dsn(self) -> str:
        """libpq DSN of role ``lx`` (CREATEDB) on the ``postgres`` database."""
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str, exist_ok: bool = True) -> None:
        """Create database ``name`` owned by ``lx``."""
        create_database(self.admin_dsn, name, exist_ok=exist_ok)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists."""
        drop_database(self.admin_dsn, name)

    # --- state -------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from ``postmaster.pid``)."""
        pid = read_pidfile(self.pgdata / "postmaster.pid")
        if pid is None or not pid_alive(pid):
            return None
        # Guard against a recycled pid.
        return pid if "postgres" in (process_cmdline(pid) or "") else None

    def is_running(self) -> bool:
        """True while the postmaster of this data directory is alive."""
        return self.pid() is not None

    # --- start / stop ------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start the server (initdb on first use) or reuse a running one; wait until ready."""
        self._prepare_dirs()
        with file_lock(self.base_dir / ".lock"):
            deadline = time.monotonic() + timeout
            if self.is_running():
                log.info("reusing PostgreSQL pid %s on port %s", self.pid(), self.port)
            else:
                if port_open(self.port):
                    raise RuntimeError(
                        f"port {self.port} is taken by another process (not {self.pgdata})"
                    )
                if not (self.pgdata / "PG_VERSION").is_file():
                    self._initdb()
                self._remove_zombie_lockfiles()
                self._write_conf()
                self._pg_ctl(
                    "start",
                    "-w",
                    "-t",
                    str(max(1, int(timeout))),
                    "-l",
                    str(self.log_file),
                )
                log.info("started PostgreSQL on port %s, log %s", self.port, self.log_file)
            self._wait_ready(deadline)
            self._ensure_role()

    def stop(self, timeout: float = 60) -> None:
        """Fast shutdown (rolls back open transactions); SIGKILL if it hangs."""
        if not self.is_running():
            return
        result = self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(timeout)), check=False)
        if result.returncode != 0 and self.is_running():
            log.warning("pg_ctl stop failed (%s): killing PostgreSQL", result.stderr.strip())
            self.kill9()

    def kill9(self) -> None:
        """SIGKILL the postmaster and its backends, as in a crash; the next start recovers."""
        pid = self.pid()
        if pid is None:
            return
        # Every backend calls setsid(), so no process group holds them all: list the
        # children first (they are re-parented once the postmaster dies), kill it (no new
        # forks), then them. Leftover backends would keep the shared memory attached and
        # make the next start refuse with "pre-existing shared memory block".
        children = child_pids(pid)
        for victim in (pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in (pid, *children)) or port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL pid {pid} survived SIGKILL")
            time.sleep(0.05)

    # --- internals ---------------------------------------------------------------------

    def _remove_zombie_lockfiles(self) -> None:
        # A killed postmaster whose parent never reaps it (PID 1 in many containers)
        # stays a zombie; kill(pid, 0) still succeeds on it, so PostgreSQL would refuse
        # to start: 'lock file "postmaster.pid" already exists' (and the same for the
        # socket's lock file). That postmaster is dead: drop its lock files.
        for lockfile in (self.pgdata / "postmaster.pid", self._socket_lock):
            pid = read_pidfile(lockfile)
            if pid is not None and pid_zombie(pid):
                log.info("removing %s of dead (zombie) postmaster %s", lockfile.name, pid)
                lockfile.unlink(missing_ok=True)

    def _pg_user_reaches(self, directory: Path) -> bool:
        # The postgres user needs search permission on every ancestor of the data dir.
        directory.parent.mkdir(parents=True, exist_ok=True)
        probe = ["runuser", "-u", _PG_USER, "--", "test", "-x", str(directory.parent)]
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0

    def _chown(self, path: Path) -> None:
        if self._as_root:
            user = pwd.getpwnam(_PG_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _prepare_dirs(self) -> None:
        for directory in (self.base_dir, self.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
            self._chown(directory)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        # pg_ctl, running as the postgres user, appends to it.
        self._chown(self.log_file)

    def _run(self, cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        # initdb and pg_ctl refuse to run as root.
        full = ["runuser", "-u", _PG_USER, "--", *cmd] if self._as_root else cmd
        # cwd: the postgres user may not be able to enter our working directory.
        result = subprocess.run(
            full,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{Path(cmd[0]).name} failed ({result.returncode}): {' '.join(full)}\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(pg_bindir() / "pg_ctl"), *args, "-D", str(self.pgdata)]
        # start_new_session is not needed: pg_ctl itself detaches the postmaster (setsid).
        return self._run(cmd, check=check)

    def _initdb(self) -> None:
        if self.pgdata.exists():
            # initdb refuses a non-empty dir; one without PG_VERSION is an aborted initdb.
            log.warning("removing incomplete PostgreSQL data dir %s", self.pgdata)
            shutil.rmtree(self.pgdata)
        log.info("initdb %s", self.pgdata)
        self._run(
            [
                str(pg_bindir() / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                *self._locale_args(),
            ]
        )

    @staticmethod
    def _locale_args() -> list[str]:
        # C.UTF-8: byte-order collation (fast, the same everywhere) yet Unicode-aware
        # upper()/lower(); plain C where the OS lacks it (e.g. macOS).
        try:
            names = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False)
        except OSError:
            return ["--no-locale"]
        available = {n.lower().replace("-", "") for n in names.stdout.split()}
        return ["--locale=C.UTF-8"] if "c.utf8" in available else ["--no-locale"]

    def _write_conf(self) -> None:
        settings = {
            "listen_addresses": _conf_str("127.0.0.1"),
            "port": str(self.port),
            "unix_socket_directories": _conf_str(str(self.socket_dir)),
            # Every service keeps a pool; e2e runs all of them at once.
            "max_connections": "200",
            "shared_buffers": "256MB",
            # Durability stays real: crash tests (kill9) must see what production would.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "timezone": _conf_str("UTC"),
            "log_timezone": _conf_str("UTC"),
        }
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        conf = self.pgdata / _CONF
        conf.write_text("# written by lx_devstack.postgres on every start\n" + body)
        self._chown(conf)
        main = self.pgdata / "postgresql.conf"
        include = f"include_if_exists = '{_CONF}'"
        if include not in main.read_text():
            with main.open("a") as handle:
                handle.write(f"\n{include}\n")

    def _connect_superuser(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
        )

    def _wait_ready(self, deadline: float) -> None:
        while True:
            try:
                with self._connect_superuser() as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError as exc:
                if not self.is_running():
                    raise RuntimeError(f"PostgreSQL is not running:\n{self._log_tail()}") from exc
                if time.monotonic() > deadline:
                    raise TimeoutError(f"PostgreSQL not ready:\n{self._log_tail()}") from exc
            time.sleep(0.1)

    def _ensure_role(self) -> None:
        with self._connect_superuser() as conn:
            found = conn.execute("select 1 from pg_roles where rolname = %s", (ROLE,)).fetchone()
            if not found:
                conn.execute(
                    sql.SQL("create role {} login createdb password {}").format(
                        sql.Identifier(ROLE), sql.Literal(PASSWORD)
                    )
                )
                log.info("created login role %r", ROLE)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
