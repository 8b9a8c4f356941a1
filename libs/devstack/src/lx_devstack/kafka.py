"""A real single-node Apache Kafka broker (KRaft, combined broker+controller), no Docker.

The jars come from Maven Central through ``deploy/kafka/pom.xml``; the broker runs as
a detached ``java kafka.Kafka`` process whose pid is kept in a pidfile, so any process
can find, reuse or stop it.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from lx_devstack.paths import (
    file_lock,
    kafka_dir,
    pid_alive,
    port_open,
    process_cmdline,
    project_root,
    read_pidfile,
)

log = logging.getLogger(__name__)

_MARKER = ".complete.json"

# JVM flags of Kafka's own kafka-run-class.sh (KAFKA_JVM_PERFORMANCE_OPTS).
_G1_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
)

# log4j2 in the properties format: needs no YAML/Jackson on the classpath. Everything
# goes to stderr (redirected to the log file); WARN and up, plus the "started" line.
_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
"""


def pom_path() -> Path:
    """The pom that lists the broker's runtime jars."""
    return project_root() / "deploy" / "kafka" / "pom.xml"


def jars_dir() -> Path:
    """Where :func:`ensure_kafka_jars` puts the jars."""
    return kafka_dir() / "libs"


def _jars_complete(libs: Path, pom_hash: str) -> bool:
    try:
        marker = json.loads((libs / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    jars = marker.get("jars") or []
    return (
        marker.get("pom_sha256") == pom_hash
        and any(name.startswith("kafka_2.13-") for name in jars)
        and all((libs / name).is_file() for name in jars)
    )


def ensure_kafka_jars() -> Path:
    """Fetch the broker's jars with Maven unless already there for this pom; return their dir.

    A marker holds the pom's hash and the jar list, so a changed pom or a half-deleted
    folder refetches. Jars are fetched into a scratch folder and swapped in whole.
    """
    pom = pom_path()
    pom_hash = hashlib.sha256(pom.read_bytes()).hexdigest()
    libs = jars_dir()
    if _jars_complete(libs, pom_hash):
        return libs
    with file_lock(libs.parent / "libs.lock"):
        if _jars_complete(libs, pom_hash):  # another process fetched them meanwhile
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars; install it")
        log.info("fetching Kafka jars from Maven Central into %s", libs)
        started = time.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
        try:
            result = subprocess.run(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-Dstyle.color=never",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={scratch}",
                    "-DincludeScope=runtime",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"mvn failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                )
            jars = sorted(p.name for p in scratch.glob("*.jar"))
            marker = {"pom_sha256": pom_hash, "jars": jars}
            (scratch / _MARKER).write_text(json.dumps(marker, indent=1))
            if libs.exists():
                shutil.rmtree(libs)
            scratch.rename(libs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("fetched %d jars in %.1fs", len(jars), time.monotonic() - started)
        return libs


def random_cluster_id() -> str:
    """A cluster id encoded like Kafka's ``Uuid.toString()`` (url-safe base64, no padding)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's own randomUuid() avoids a leading "-": the CLI would read it as an option.
        if not text.startswith("-"):
            return text


def _size_bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    size = size.strip().lower()
    if size[-1:] in units:
        return int(size[:-1]) * units[size[-1]]
    return int(size)


async def _probe(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        # A broker appears in metadata only once it is registered and unfenced.
        return bool(cluster.get("brokers"))
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def broker_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """True if a Kafka admin metadata call to ``bootstrap`` succeeds within ``timeout``.

    Runs on its own thread and event loop, so it works from sync code and from inside
    a running loop (async pytest fixtures) alike.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            probe = asyncio.wait_for(_probe(bootstrap), timeout)
            return pool.submit(asyncio.run, probe).result()
        except Exception:  # a readiness probe: any failure means "not ready"
            return False


START_LAUNCHES = 3


class BrokerExitedError(RuntimeError):
    """The broker process ended before it served requests."""


class KafkaNode:
    """One combined broker+controller on 127.0.0.1, its config and data in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 19092,
        controller_port: int = 19093,
        heap: str = "1g",
        *,
        libs_dir: Path | None = None,
        log_file: Path | None = None,
        pid_file: Path | None = None,
    ) -> None:
        """``libs_dir`` defaults to :func:`ensure_kafka_jars`; log and pidfile to ``data_dir``."""
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.libs_dir = libs_dir
        self.log_file = log_file or self.data_dir / "kafka.log"
        self.pid_file = pid_file or self.data_dir / "kafka.pid"
        self.config_file = self.data_dir / "server.properties"
        self.log_dirs = self.data_dir / "data"

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"KafkaNode({str(self.data_dir)!r}, port={self.port})"

    # --- state -------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The broker's pid if it is running (checked against its command line)."""
        pid = read_pidfile(self.pid_file)
        if pid is None or not pid_alive(pid):
            return None
        cmdline = process_cmdline(pid) or ""
        # Guard against a recycled pid: it must be a broker on *our* config file.
        if "kafka.Kafka" not in cmdline or str(self.config_file) not in cmdline:
            return None
        return pid

    def is_running(self) -> bool:
        """True while the broker process from the pidfile is alive."""
        return self.pid() is not None

    # --- start -------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        """Start the broker (or reuse a running one) and wait until it serves requests."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir / ".lock"):
            deadline = time.monotonic() + timeout
            if self.is_running():
                log.info("reusing Kafka broker pid %s on %s", self.pid(), self.bootstrap_servers)
                self._wait_ready(deadline)
                return
            if port_open(self.port) or port_open(self.controller_port):
                raise RuntimeError(
                    f"port {self.port} or {self.controller_port} is taken by another process "
                    f"(not the broker of {self.data_dir})"
                )
            libs = self.libs_dir or ensure_kafka_jars()
            self._write_config()
            self._format_storage(libs)
            # A broker that really exits during start-up (a KRaft node restarted right
            # after a kill -9, under load) is launched again; one that keeps exiting
            # fails after the last launch.
            for launch in range(1, START_LAUNCHES + 1):
                self._launch(libs)
                try:
                    self._wait_ready(deadline)
                    return
                except BrokerExitedError:
                    if launch == START_LAUNCHES or time.monotonic() > deadline:
                        raise
                    log.warning("Kafka broker exited during start-up; launching again")
                    time.sleep(1.0)

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").is_file():
            return str(Path(java_home) / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java (17+) is needed to run the Kafka broker; install a JDK")
        return java

    def _jvm(self, libs: Path, heap: str, *, xms: str | None = None) -> list[str]:
        cmd = [self._java()]
        if xms:
            cmd.append(f"-Xms{xms}")
        # No shell runs this, so "libs/*" reaches the JVM verbatim: Java expands it.
        return [
            *cmd,
            f"-Xmx{heap}",
            *_G1_FLAGS,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            str(libs / "*"),
        ]

    def _write_config(self) -> None:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Dynamic quorum (KIP-853): formatted with --standalone, as Kafka 4.x's own
            # config/server.properties does.
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            # One node: everything replicated once, and internal topics kept small
            # (the defaults of 50 partitions each slow the first group/transaction use).
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            # No 3 s wait before the first rebalance of a new consumer group.
            "group.initial.rebalance.delay.ms": "0",
            "group.streams.initial.rebalance.delay.ms": "0",
            # Topics are created explicitly, with their own retention; a typo must fail.
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            # After a crash (kill9) the restarted broker cannot register until the old
            # incarnation's session expires (DUPLICATE_BROKER_REGISTRATION): 9 s by
            # default. 4 s halves crash-restart time yet tolerates a stalled heartbeat.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
        }
        body = "".join(f"{key}={value}\n" for key, value in settings.items())
        self.config_file.write_text("# written by lx_devstack.kafka on every start\n" + body)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)

    def _format_storage(self, libs: Path) -> None:
        if (self.log_dirs / "meta.properties").is_file():
            return  # formatted before: keep the cluster id and the data
        if self.log_dirs.exists():
            # Without meta.properties the broker refuses the dir: a format cut short.
            log.warning("removing unformatted Kafka log dir %s", self.log_dirs)
            shutil.rmtree(self.log_dirs)
        cluster_id = random_cluster_id()
        log.info("formatting Kafka storage in %s (cluster id %s)", self.log_dirs, cluster_id)
        # StorageTool ends with System.exit, so it runs as its own JVM.
        result = subprocess.run(
            [
                *self._jvm(libs, "256m"),
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self.config_file),
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.data_dir,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kafka storage format failed:\n{result.stdout}\n{result.stderr}")

    def _launch(self, libs: Path) -> None:
        xms = self.heap if _size_bytes(self.heap) < _size_bytes("256m") else "256m"
        cmd = [*self._jvm(libs, self.heap, xms=xms), "kafka.Kafka", str(self.config_file)]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log_out:
            log_out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting broker\n".encode())
            log_out.flush()
            # Started through a shell that exits at once: the broker is re-parented away
            # from us, so it outlives this process (reuse by the next run) and is never
            # our zombie. start_new_session keeps Ctrl-C in our terminal away from it.
            # The shell's stdout is the pipe that returns the pid; the broker's stdout
            # goes to the log (>&2), or reading the pipe would wait for the broker's exit.
            launcher = subprocess.run(
                ["/bin/sh", "-c", '"$@" >&2 & echo $!', "sh", *cmd],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_out,
                cwd=self.data_dir,
                start_new_session=True,
                check=True,
                text=False,
            )
        pid = int(launcher.stdout.split()[0])
        self.pid_file.write_text(f"{pid}\n")
        log.info("started Kafka broker pid %s, log %s", pid, self.log_file)

    def _wait_ready(self, deadline: float) -> None:
        while True:
            # The launched process itself, not pid(): between the fork and the exec of
            # java its command line is still the shell's, which pid() does not take for
            # a broker — on a loaded machine that window is long enough to be seen.
            launched = read_pidfile(self.pid_file)
            if launched is None or not pid_alive(launched):
                raise BrokerExitedError(f"Kafka broker exited during start-up:\n{self._log_tail()}")
            # The client port opens only when request processing starts; then ask for
            # metadata to be sure the broker is registered and unfenced.
            if port_open(self.port) and broker_answers(self.bootstrap_servers):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Kafka broker not ready on {self.bootstrap_servers}:\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- stop --------------------------------------------------------------------------

    def stop(self, timeout: float = 30) -> None:
        """Shut down cleanly (SIGTERM), SIGKILL after ``timeout`` seconds."""
        with file_lock(self.data_dir / ".lock"):
            pid = self.pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if not _wait_gone(pid, timeout):
                    log.warning(
                        "Kafka broker pid %s ignored SIGTERM for %ss: killing", pid, timeout
                    )
                    self._kill(pid)
            self.pid_file.unlink(missing_ok=True)

    def kill9(self) -> None:
        """SIGKILL the broker, as in a crash; the next start recovers its logs."""
        pid = self.pid()
        if pid is not None:
            self._kill(pid)
            # The JVM's main thread shows as a zombie while its other threads are still
            # torn down, and the sockets close only after the last one: until then a
            # start() would find the ports taken.
            deadline = time.monotonic() + 10
            while port_open(self.port) or port_open(self.controller_port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kafka broker pid {pid} still holds its ports")
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    @staticmethod
    def _kill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 10):
            raise RuntimeError(f"Kafka broker pid {pid} survived SIGKILL")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
