"""Every service as its own process, the fake buyer, and the demo seed.

Used by ``make run`` (ports 8000-8006, buyer 8090, databases ``lx_<service>``) and by
the end-to-end tests (other ports, databases and a topic prefix of their own, so a
running ``make run`` and a test session never meet).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lx_devstack.infra import Infra
from lx_devstack.paths import logs_dir, pid_alive, read_pidfile, run_dir

SERVICES = ("admin", "ingest", "router", "delivery", "billing", "analytics", "auction")
DEV_OPERATOR_TOKEN = "dev-operator-token"  # noqa: S105 - the development default, refused in production


def access_token_key_pair(kid: str = "dev1") -> tuple[str, str]:
    """A fresh Ed25519 pair for access tokens, as the settings take them:
    (``LX_ADMIN_ACCESS_TOKEN_SIGNING_KEY``, ``LX_PLATFORM_ACCESS_TOKEN_PUBLIC_KEYS``), each
    ``kid:<32 raw bytes, base64>``. Made per stack, never written to disk: production has
    none unless its operators configure a key (see docs/security.md)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return (
        f"{kid}:{base64.b64encode(private).decode()}",
        f"{kid}:{base64.b64encode(public).decode()}",
    )


@dataclass
class StackLayout:
    """Where one stack's pieces live: ports, database names, topic prefix, run folder."""

    base_port: int = 8000
    buyer_port: int = 8090
    db_prefix: str = "lx_"
    topic_prefix: str = ""
    run_folder: Path = field(default_factory=run_dir)
    log_folder: Path = field(default_factory=logs_dir)
    operator_token: str = DEV_OPERATOR_TOKEN
    # The fake buyer listens on loopback, which the egress policy refuses unless allowed
    # (LX_PLATFORM_EGRESS_ALLOW_CIDRS, empty in production): exactly its address.
    egress_allow_cidrs: str = "127.0.0.1/32"
    # (signing key, public keys) of this stack's access tokens: admin signs, all verify.
    access_token_keys: tuple[str, str] = field(default_factory=access_token_key_pair)
    extra_env: dict[str, str] = field(default_factory=dict)

    def port(self, service: str) -> int:
        return self.base_port + SERVICES.index(service)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port(service)}"

    @property
    def buyer_url(self) -> str:
        return f"http://127.0.0.1:{self.buyer_port}"

    def database(self, service: str) -> str:
        return f"{self.db_prefix}{service}"


def service_env(service: str, infra: Infra, layout: StackLayout) -> dict[str, str]:
    prefix = f"LX_{service.upper()}_"
    env = {
        "LX_KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "LX_KAFKA_TOPIC_PREFIX": layout.topic_prefix,
        "LX_PLATFORM_INGEST_URL": layout.url("ingest"),
        "LX_PLATFORM_DELIVERY_URL": layout.url("delivery"),
        "LX_PLATFORM_AUCTION_URL": layout.url("auction"),
        "LX_PLATFORM_OPERATOR_TOKEN": layout.operator_token,
        "LX_PLATFORM_EGRESS_ALLOW_CIDRS": layout.egress_allow_cidrs,
        "LX_PLATFORM_ACCESS_TOKEN_PUBLIC_KEYS": layout.access_token_keys[1],
        f"{prefix}DATABASE_URL": infra.dsn(layout.database(service)),
        f"{prefix}HTTP_PORT": str(layout.port(service)),
    }
    if service == "admin":
        env["LX_ADMIN_ACCESS_TOKEN_SIGNING_KEY"] = layout.access_token_keys[0]
    return {**env, **layout.extra_env}


class ManagedProcess:
    """A child process with a pidfile, so another command (``make stop``) can stop it."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], layout: StackLayout):
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **env}
        self.pidfile = layout.run_folder / f"{name}.pid"
        self.logfile = layout.log_folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pidfile.write_text(str(self.proc.pid))

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else read_pidfile(self.pidfile)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        pid = self.pid()
        return pid is not None and pid_alive(pid)

    def signal(self, sig: int) -> None:
        pid = self.pid()
        if pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, timeout: float = 35.0) -> None:
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.alive():
            self.kill9()
        self.pidfile.unlink(missing_ok=True)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_ready(url: str, proc: ManagedProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited while starting:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{proc.name} not ready at {url} after {timeout}s:\n{proc.log_tail()}")


class Stack:
    """The seven services and the fake buyer, started against one ``Infra``."""

    def __init__(self, infra: Infra, layout: StackLayout | None = None) -> None:
        self.infra = infra
        self.layout = layout or StackLayout()
        self.processes: dict[str, ManagedProcess] = {}
        for service in SERVICES:
            self.processes[service] = ManagedProcess(
                service,
                [sys.executable, "-m", f"lx_{service}"],
                service_env(service, infra, self.layout),
                self.layout,
            )
        self.processes["buyer"] = ManagedProcess(
            "buyer",
            [sys.executable, "-m", "lx_devstack.buyer", "--port", str(self.layout.buyer_port)],
            {},
            self.layout,
        )

    def health_url(self, name: str) -> str:
        if name == "buyer":
            return f"{self.layout.buyer_url}/health"
        return f"{self.layout.url(name)}/health/ready"

    def start(self, name: str) -> None:
        proc = self.processes[name]
        if name != "buyer":
            self.infra.create_database(self.layout.database(name))
        proc.start()
        wait_ready(self.health_url(name), proc)

    def start_all(self) -> None:
        """Start everything; admin first so topics exist before the others subscribe."""
        for name in ("buyer", "admin"):
            self.start(name)
        for name in SERVICES[1:]:
            proc = self.processes[name]
            self.infra.create_database(self.layout.database(name))
            proc.start()
        for name in SERVICES[1:]:
            wait_ready(self.health_url(name), self.processes[name])

    def stop_all(self) -> None:
        for proc in self.processes.values():
            proc.stop()

    def restart(self, name: str) -> None:
        self.processes[name].start()
        wait_ready(self.health_url(name), self.processes[name])


# --- the demo seed ------------------------------------------------------------------------

DEMO_FIELDS: list[dict[str, Any]] = [
    {"name": "first_name", "type": "text", "required": True, "pii": True},
    {"name": "last_name", "type": "text", "required": True, "pii": True},
    {"name": "email", "type": "email", "required": True, "pii": True},
    {"name": "phone", "type": "phone", "required": True, "pii": True},
    {"name": "state", "type": "us_state", "required": True},
    {"name": "zip", "type": "zip", "required": True},
    {"name": "loan_amount", "type": "integer"},
    {"name": "loan_purpose", "type": "enum", "options": ["purchase", "refinance"]},
]
DEMO_LEAD = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "phone": "+1 415 555 0132",
    "state": "CA",
    "zip": "94105",
    "loan_amount": 250000,
    "loan_purpose": "refinance",
}


@dataclass(frozen=True)
class Seeded:
    account_id: str
    campaign_id: str
    source_id: str
    api_key: str
    buyer_ids: list[str]


def wait_groups_caught_up(
    bootstrap: str, topic: str, groups: list[str], keys: set[str], timeout: float = 30.0
) -> None:
    """Until ``topic`` holds every key in ``keys`` and every group has consumed it all.

    Configuration is eventually consistent: admin answers once a change is in its outbox,
    and router and delivery learn a new buyer from ``config.changed`` on their own clock.
    Demos and tests wait for both before leads flow.
    """

    async def lagging() -> list[str]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await consumer.start()
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
            tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
            ends = await consumer.end_offsets(tps)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            seen: set[str] = set()
            pending = {tp for tp, end in ends.items() if end > 0}
            while pending:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    seen.update(r.key.decode() for r in records if r.key)
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
            if not keys <= seen:
                return ["(admin's outbox)"]
            behind = []
            for group in groups:
                committed = await admin.list_consumer_group_offsets(group)
                for tp, end in ends.items():
                    done = committed.get(tp)
                    if end > (done.offset if done is not None else 0):
                        behind.append(group)
                        break
            return behind
        finally:
            await consumer.stop()
            await admin.close()

    deadline = time.monotonic() + timeout
    while behind := asyncio.run(lagging()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumer groups {behind} did not catch up on {topic}")
        time.sleep(0.2)


def seed(
    admin_url: str,
    token: str,
    buyers: list[tuple[str, str, str, int]],
    *,
    name: str = "Demo Mortgage Co",
    wait_ingest_url: str | None = None,
    wait_for_groups: tuple[str, str, list[str]] | None = None,
) -> Seeded:
    """Create an account, a campaign, a source and buyers ``(name, url, price, priority)``."""
    with httpx.Client(
        base_url=admin_url, headers={"authorization": f"Bearer {token}"}, timeout=10
    ) as c:
        account = c.post("/v1/accounts", json={"name": name}).raise_for_status().json()
        campaign = (
            c.post(
                f"/v1/accounts/{account['account_id']}/campaigns",
                json={"name": "Mortgage refinance", "vertical": "mortgage", "fields": DEMO_FIELDS},
            )
            .raise_for_status()
            .json()
        )
        cid = campaign["campaign_id"]
        source = (
            c.post(
                f"/v1/campaigns/{cid}/sources", json={"name": "Demo affiliate", "payout": "12.00"}
            )
            .raise_for_status()
            .json()
        )
        buyer_ids = [
            c.post(
                f"/v1/campaigns/{cid}/buyers",
                json={"name": n, "endpoint_url": u, "price": p, "priority": pr, "timeout_ms": 2000},
            )
            .raise_for_status()
            .json()["buyer_id"]
            for n, u, p, pr in buyers
        ]
    seeded = Seeded(account["account_id"], cid, source["source_id"], source["api_key"], buyer_ids)
    if wait_ingest_url:
        wait_source_known(wait_ingest_url, seeded.api_key)
    if wait_for_groups:
        bootstrap, topic, groups = wait_for_groups
        entities = {seeded.account_id, seeded.campaign_id, seeded.source_id, *buyer_ids}
        wait_groups_caught_up(bootstrap, topic, groups, keys=entities)
    return seeded


def config_settled(layout: StackLayout, bootstrap: str) -> tuple[str, str, list[str]]:
    """What ``seed`` waits for: router, delivery and auction caught up on ``config.changed``."""
    prefix = layout.topic_prefix
    groups = [f"{prefix}router", f"{prefix}delivery", f"{prefix}auction"]
    return (bootstrap, f"{prefix}config.changed", groups)


def wait_source_known(ingest_url: str, api_key: str, timeout: float = 30.0) -> None:
    """Configuration reaches ingest through Kafka: wait until it knows the new key."""
    deadline = time.monotonic() + timeout
    probe = f"{ingest_url}/v1/leads/00000000-0000-0000-0000-000000000000"
    while time.monotonic() < deadline:
        status = httpx.get(probe, headers={"authorization": f"Bearer {api_key}"}, timeout=5)
        if status.status_code == 404:  # authenticated; the lead just does not exist
            return
        time.sleep(0.2)
    raise TimeoutError("ingest did not learn the new source key in time")


@contextlib.contextmanager
def running_stack(infra: Infra, layout: StackLayout) -> Iterator[Stack]:
    stack = Stack(infra, layout)
    try:
        stack.start_all()
        yield stack
    finally:
        stack.stop_all()


def demo_state_file() -> Path:
    return run_dir().parent / "demo.json"


def load_or_seed_demo(stack: Stack) -> Seeded:
    """A second ``make run`` reuses the demo it seeded before (the key is shown once)."""
    path = demo_state_file()
    layout = stack.layout
    if path.exists():
        data = json.loads(path.read_text())
        known = httpx.get(
            f"{layout.url('admin')}/v1/accounts/{data['account_id']}",
            headers={"authorization": f"Bearer {layout.operator_token}"},
            timeout=5,
        )
        if known.status_code == 200:
            wait_source_known(layout.url("ingest"), data["api_key"])
            return Seeded(**data)
    buyer = f"{layout.buyer_url}/buyers/demo-buyer/accept"
    seeded = seed(
        layout.url("admin"),
        layout.operator_token,
        [("Demo Lender", buyer, "35.00", 1)],
        wait_ingest_url=layout.url("ingest"),
        wait_for_groups=config_settled(layout, stack.infra.kafka_bootstrap),
    )
    path.write_text(json.dumps(seeded.__dict__, indent=2))
    path.chmod(0o600)
    return seeded
