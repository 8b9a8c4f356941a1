"""docker-compose.yml and the Dockerfile agree with the code they run.

No Docker engine is needed: the files are read and checked against the services'
settings classes, the service packages on disk and the PostgreSQL init script.
"""

import ipaddress
import os
import re
from typing import Any

import pytest
import yaml
from lx_devstack.apidocs import settings_class
from lx_devstack.paths import project_root
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from sqlalchemy import make_url

ROOT = project_root()
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES_ON_DISK = sorted(
    p.name.removeprefix("lx_") for p in ROOT.glob("services/*/src/lx_*") if p.is_dir()
)
INFRASTRUCTURE = {"kafka", "postgres", "buyer"}
INIT_SQL = ROOT / "deploy/postgres/init-databases.sql"
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The variables a settings class reads; nested settings read their own prefix."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
            names |= env_names(field.annotation)
        elif isinstance(field.validation_alias, str):
            names.add(field.validation_alias.upper())
        elif isinstance(field.validation_alias, AliasChoices):
            names |= {c.upper() for c in field.validation_alias.choices if isinstance(c, str)}
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def service(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = COMPOSE["services"][name]
    return spec


def environment(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (service(name).get("environment") or {}).items()}


def published(name: str) -> list[tuple[str, int, int]]:
    """``(host ip, host port, container port)`` of each ``ip:host:container`` entry."""
    result = []
    for entry in service(name).get("ports", []):
        match = re.fullmatch(r"([\d.]+):(\d+):(\d+)", str(entry))
        assert match, f"{name}: write ports as 'ip:host:container', got {entry!r}"
        result.append((match[1], int(match[2]), int(match[3])))
    return result


@pytest.fixture
def compose_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment holding no LX_* variable but those a test sets."""
    for key in [k for k in os.environ if k.startswith("LX_")]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_compose_runs_exactly_the_service_packages_found_under_services() -> None:
    assert len(SERVICES_ON_DISK) == 7
    assert set(COMPOSE["services"]) == set(SERVICES_ON_DISK) | INFRASTRUCTURE
    for name in SERVICES_ON_DISK:
        assert service(name)["build"] == "."
        assert service(name)["command"] == ["python", "-m", f"lx_{name}"]


@pytest.mark.parametrize("name", SERVICES_ON_DISK)
def test_every_lx_variable_is_a_field_of_that_services_settings(name: str) -> None:
    known = env_names(settings_class(name))
    unknown = {k for k in environment(name) if k.startswith("LX_")} - known
    assert not unknown, f"{name} sets variables no settings field reads: {sorted(unknown)}"


def test_the_env_names_walk_sees_prefixes_nesting_and_aliases() -> None:
    names = env_names(settings_class("ingest"))
    assert {
        "LX_INGEST_DATABASE_URL",
        "LX_INGEST_VAULT_KEKS",
        "LX_KAFKA_BOOTSTRAP_SERVERS",
        "LX_PLATFORM_INGEST_URL",
        "LX_LOG_LEVEL",
        "LX_LOG_JSON",
    } <= names
    assert "LX_LOG_JSON_OUTPUT" not in names
    assert "LX_INGEST_KAFKA" not in names


def test_the_images_lx_variables_are_settings_fields_too() -> None:
    known = set().union(*(env_names(settings_class(n)) for n in SERVICES_ON_DISK))
    assert set(re.findall(r"\bLX_[A-Z0-9_]+", DOCKERFILE)) <= known


@pytest.mark.parametrize("name", SERVICES_ON_DISK)
def test_the_compose_environment_loads_into_the_settings_it_targets(
    name: str, compose_env: pytest.MonkeyPatch
) -> None:
    for key, value in environment(name).items():
        compose_env.setenv(key, value)
    settings = settings_class(name)()
    port = settings.http_port
    # Compose keeps the ports `make run` uses, so URLs in docs and scripts hold for both.
    assert port == settings_class(name).model_fields["http_port"].default
    assert settings.http_host == "0.0.0.0"
    assert published(name) == [("127.0.0.1", port, port)]
    assert f"http://127.0.0.1:{port}/health/ready" in " ".join(service(name)["healthcheck"]["test"])
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    dsn = make_url(settings.database_url)
    assert (dsn.host, dsn.port, dsn.database) == ("postgres", 5432, f"lx_{name}")


def test_services_call_each_other_on_their_compose_names_and_ports() -> None:
    ports = {n: int(environment(n)[f"LX_{n.upper()}_HTTP_PORT"]) for n in SERVICES_ON_DISK}
    for name in SERVICES_ON_DISK:
        env = environment(name)
        assert env["LX_PLATFORM_INGEST_URL"] == f"http://ingest:{ports['ingest']}"
        assert env["LX_PLATFORM_DELIVERY_URL"] == f"http://delivery:{ports['delivery']}"
        assert env["LX_PLATFORM_AUCTION_URL"] == f"http://auction:{ports['auction']}"
    assert sorted(ports.values()) == list(range(8000, 8007))


def test_every_service_waits_for_healthy_kafka_and_postgres() -> None:
    for name in SERVICES_ON_DISK:
        depends = service(name)["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"


def test_every_container_has_a_healthcheck() -> None:
    for name, spec in COMPOSE["services"].items():
        assert spec["healthcheck"]["test"], name


def test_every_port_is_published_on_loopback_only() -> None:
    for name in COMPOSE["services"]:
        for host_ip, _, _ in published(name):
            assert host_ip == "127.0.0.1", name


def test_infrastructure_comes_from_the_official_images() -> None:
    kafka, postgres = service("kafka")["image"], service("postgres")["image"]
    assert kafka.split(":")[0] == "apache/kafka" and kafka.split(":")[1].startswith("4.")
    assert postgres.split(":")[0] == "postgres" and postgres.split(":")[1] == "15"


def test_kafka_is_a_single_kraft_node_that_the_services_can_reach() -> None:
    env = environment("kafka")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    single_replica = (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_DEFAULT_REPLICATION_FACTOR",
    )
    for key in single_replica:
        assert env[key] == "1", key
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    for name in SERVICES_ON_DISK:
        bootstrap = environment(name)["LX_KAFKA_BOOTSTRAP_SERVERS"]
        assert any(listener.endswith(f"://{bootstrap}") for listener in advertised)
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in " ".join(
        service("kafka")["healthcheck"]["test"]
    )


def test_postgres_creates_every_database_the_services_name() -> None:
    env = environment("postgres")
    created = set(re.findall(r"(?im)^\s*CREATE\s+DATABASE\s+\"?(\w+)\"?", INIT_SQL.read_text()))
    mount = f"./{INIT_SQL.relative_to(ROOT)}:/docker-entrypoint-initdb.d/{INIT_SQL.name}:ro"
    assert mount in service("postgres")["volumes"]
    for name in SERVICES_ON_DISK:
        dsn = make_url(environment(name)[f"LX_{name.upper()}_DATABASE_URL"])
        assert dsn.database in created, f"{dsn.database} is not created by {INIT_SQL.name}"
        assert (dsn.username, dsn.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert "pg_isready" in service("postgres")["healthcheck"]["test"]


def test_the_demo_buyer_listens_on_all_interfaces_of_its_container() -> None:
    command = service("buyer")["command"]
    assert command[:3] == ["python", "-m", "lx_devstack.buyer"]
    port = int(command[command.index("--port") + 1])
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert published("buyer") == [("127.0.0.1", port, port)]


def test_only_the_demo_buyers_fixed_address_is_open_to_buyer_endpoints(
    compose_env: pytest.MonkeyPatch,
) -> None:
    """The egress policy refuses private addresses; compose opens exactly its buyer's."""
    subnet = ipaddress.ip_network(COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"])
    dynamic = ipaddress.ip_network(COMPOSE["networks"]["default"]["ipam"]["config"][0]["ip_range"])
    buyer = ipaddress.ip_address(service("buyer")["networks"]["default"]["ipv4_address"])
    assert buyer in subnet and buyer not in dynamic  # no other container can get it
    for name in SERVICES_ON_DISK:
        settings = settings_class(name)()
        allowed = environment(name)["LX_PLATFORM_EGRESS_ALLOW_CIDRS"]
        assert [ipaddress.ip_network(c) for c in allowed.split(",")] == [
            ipaddress.ip_network(f"{buyer}/32")
        ]
        assert settings.platform.egress_allow_cidrs == ()  # the code's default stays empty


def test_dockerfile_pins_the_makefiles_uv_and_runs_as_a_non_root_user() -> None:
    makefile_uv = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    dockerfile_uv = re.search(r"^ARG UV_VERSION=(\S+)", DOCKERFILE, re.M)
    assert makefile_uv and dockerfile_uv and dockerfile_uv[1] == makefile_uv[1]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", DOCKERFILE, re.M)
    assert "uv sync --frozen --all-packages --no-dev" in DOCKERFILE
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    exposed = re.search(r"^EXPOSE (\d+)-(\d+)$", DOCKERFILE, re.M)
    assert exposed
    for name in SERVICES_ON_DISK:
        port = settings_class(name).model_fields["http_port"].default
        assert int(exposed[1]) <= port <= int(exposed[2])
