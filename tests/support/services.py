"""Running one service in-process against real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from lx_devstack.infra import Infra
from lx_devstack.stack import access_token_key_pair
from lx_platform.access import AccessTokenSigner, Principal
from lx_platform.runtime import Runtime
from lx_platform.settings import KafkaSettings, PlatformSettings, ServiceSettings
from pydantic import SecretStr

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")
OPERATOR = {"authorization": "Bearer dev-operator-token"}
# This test session's access-token keys, as a dev stack makes its own: admin signs with
# the first, every service verifies with the second (see ``settings_for``).
ACCESS_SIGNING_KEY, ACCESS_PUBLIC_KEYS = access_token_key_pair("test1")


def access_header(who: Principal) -> dict[str, str]:
    """An Authorization header with an access token for ``who``, signed as admin would."""
    token = AccessTokenSigner.from_setting(ACCESS_SIGNING_KEY).mint(who).token
    return {"authorization": f"Bearer {token}"}


def settings_for(cls: type[S], infra: Infra, tag: str, service: str, **extra: Any) -> S:
    """Settings for a service in this test module: its own database and topic prefix."""
    database = f"{tag}_{service}"
    infra.create_database(database)
    # Access tokens work out of the box, as in `make run`: the session's keys, unless a
    # test names its own.
    platform = extra.get("platform") or PlatformSettings()
    if not platform.access_token_public_keys:
        extra["platform"] = platform.model_copy(
            update={"access_token_public_keys": ACCESS_PUBLIC_KEYS}
        )
    if "access_token_signing_key" in cls.model_fields:
        extra.setdefault("access_token_signing_key", SecretStr(ACCESS_SIGNING_KEY))
    return cls(
        database_url=infra.dsn(database),
        kafka=KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, topic_prefix=f"{tag}."),
        **extra,
    )


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """Start the service's lifespan (migrations, topics, consumers) and talk to it."""
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client, app.state.runtime


async def eventually(
    probe: Callable[[], Awaitable[T]], *, within: float = 20.0, what: str = "condition"
) -> T:
    """Await ``probe()`` until it returns something truthy; fail with the last value."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {within}s (last: {value!r})")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def hosted(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """``serving`` run inside one background task, so that a module fixture's setup and
    teardown (which pytest runs in different tasks) enter and leave it in the same task."""
    ready: asyncio.Future[tuple[httpx.AsyncClient, Runtime]] = asyncio.Future()
    stop = asyncio.Event()

    async def hold() -> None:
        try:
            async with serving(app) as running:
                ready.set_result(running)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    task = asyncio.create_task(hold())
    try:
        yield await ready
    finally:
        stop.set()
        await task
