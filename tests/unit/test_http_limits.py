"""The platform's limits on hostile input: body size, JSON shape, requests per credential."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from lx_platform.http import require_bearer
from lx_platform.limits import (
    BodyLimits,
    BodyRefusedError,
    CredentialRateLimiter,
    RequestLimits,
    json_refusal,
)
from lx_platform.runtime import install_error_handlers
from lx_platform.settings import PlatformSettings
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

LIMITS = BodyLimits(max_body_bytes=1000, max_json_depth=4, max_json_items=20)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def code_of(body: bytes, limits: BodyLimits = LIMITS) -> str | None:
    refusal = json_refusal(body, limits)
    return None if refusal is None else refusal.error["code"]


# --- the JSON shape --------------------------------------------------------------------------


def test_nesting_up_to_the_limit_passes_and_one_level_more_is_too_deep() -> None:
    assert code_of(nested(4)) is None
    assert code_of(b'{"a": {"b": [1, {"c": 2}]}}') is None
    assert code_of(nested(5)) == "json_too_deep"
    assert code_of(b'{"a": {"b": [1, {"c": [2]}]}}') == "json_too_deep"


def test_a_refusal_names_its_status_and_limit() -> None:
    refusal = json_refusal(nested(5), LIMITS)
    assert refusal is not None
    assert refusal.status_code == 400
    assert refusal.error["limit"] == 4
    assert "deeper than 4" in refusal.error["detail"]


def test_brackets_and_commas_inside_strings_do_not_count() -> None:
    inside = json.dumps({"note": "[[[[[[{{{{,,,,,,,,,,,,,,,,,,,,,,,,,", "q": 'say "[[[[[["'})
    assert code_of(inside.encode()) is None
    escaped = b'{"a": "\\\\", "b": [[["\\"[[[[["]]]}'  # a backslash, then an escaped quote
    assert code_of(escaped) is None


def test_more_members_and_elements_than_allowed_are_refused_whatever_the_depth() -> None:
    assert code_of(json.dumps(list(range(19))).encode()) is None
    flat = json.dumps(list(range(25))).encode()
    assert code_of(flat) == "json_too_many_items"
    refusal = json_refusal(flat, LIMITS)
    assert refusal is not None and refusal.status_code == 413
    many_keys = json.dumps({f"k{i}": i for i in range(25)}).encode()
    assert code_of(many_keys) == "json_too_many_items"


def test_scalars_and_bodies_that_are_not_json_pass_to_their_parser() -> None:
    for body in (b"", b"42", b'"[[[[[[[["', b"name=x&y=z", b"\xff\xfe"):
        assert code_of(body) is None


def test_escapes_of_text_no_store_can_hold_are_refused_and_lookalikes_are_not() -> None:
    refused = [
        b'{"name": "a\\u0000b"}',
        b'["\\\\\\u0000"]',  # an escaped backslash, then \u0000
        b'{"name": "\\ud800"}',  # a high surrogate alone
        b'{"name": "\\uDBFFx"}',
        b'{"name": "\\udc00"}',  # a low surrogate alone
        b'{"name": "\\ud83d\\ud83d\\ude00"}',  # the first high one is alone
    ]
    for body in refused:
        assert code_of(body) == "invalid_character", body
    passed = [
        b'{"name": "C:\\\\u0000"}',  # an escaped backslash, then the letters u0000
        b'{"name": "\\u00e9 \\u0001"}',
        b'{"name": "\\ud83d\\ude00"}',  # a pair: an emoji
        b'{"name": "\\uD83D\\uDE00"}',
    ]
    for body in passed:
        assert code_of(body) is None, body


def test_a_megabyte_of_open_brackets_is_refused_without_recursion() -> None:
    limits = BodyLimits(max_body_bytes=1 << 21, max_json_depth=32, max_json_items=10**7)
    assert code_of(b"[" * (1 << 20), limits) == "json_too_deep"
    assert code_of(b'{"a":' * 200_000, limits) == "json_too_deep"


# --- the middleware --------------------------------------------------------------------------


class Thing(BaseModel):
    name: str
    tags: list[Any] = []


def app_with_limits(limits: BodyLimits = LIMITS) -> FastAPI:
    app = FastAPI()

    @app.post("/things")
    async def create(thing: Thing) -> dict[str, Any]:
        return {"name": thing.name, "tags": len(thing.tags)}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"size": size}

    @app.post("/ignores-body")
    async def ignores_body() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(RequestLimits, limits=limits)
    install_error_handlers(app)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_with_limits())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


async def chunks(data: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def error(r: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = r.json()["error"]
    return body


async def test_a_body_within_the_limits_reaches_the_endpoint_whole(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/things", json={"name": "x" * 500, "tags": [[1, 2], [3]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "x" * 500, "tags": 2}
    body = json.dumps({"name": "y" * 900}).encode()
    r = await client.post("/raw", content=chunks(body))
    assert r.json() == {"size": len(body)}


async def test_a_declared_length_over_the_limit_is_refused_unread(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/ignores-body", content=b"x" * 1001)
    assert r.status_code == 413
    assert error(r)["code"] == "payload_too_large"
    assert error(r)["limit"] == 1000
    assert "1000 bytes" in error(r)["detail"]


async def test_a_streamed_body_is_counted_as_it_comes_whatever_it_declares(
    client: httpx.AsyncClient,
) -> None:
    body = json.dumps({"name": "z" * 2000}).encode()
    for path in ("/things", "/raw"):
        r = await client.post(path, content=chunks(body))
        assert r.status_code == 413, f"{path}: {r.text}"
        assert error(r)["code"] == "payload_too_large"
    # A Content-Length that understates the body does not let it through either.
    r = await client.post("/raw", content=chunks(body), headers={"content-length": "10"})
    assert r.status_code == 413


async def test_a_deep_or_crowded_body_never_reaches_the_parser(
    client: httpx.AsyncClient,
) -> None:
    deep = b'{"name": "x", "tags": [[[[1]]]]}'
    for path in ("/things", "/raw"):
        r = await client.post(path, content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400, f"{path}: {r.text}"
        assert error(r)["code"] == "json_too_deep"
        assert error(r)["limit"] == 4
    crowded = json.dumps({"name": "x", "tags": list(range(30))})
    r = await client.post("/things", content=crowded)
    assert r.status_code == 413
    assert error(r)["code"] == "json_too_many_items"


async def test_a_body_the_endpoint_never_reads_is_never_checked(
    client: httpx.AsyncClient,
) -> None:
    # A service may refuse on its headers (a key, a rate) before it reads any body.
    r = await client.post("/ignores-body", content=nested(50))
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_a_refusal_escaping_an_app_without_handlers_is_still_a_problem_body() -> None:
    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # raises the refusal; nothing here turns it into an answer
        raise AssertionError("the body should have been refused")

    app = RequestLimits(bare, LIMITS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/raw", content=nested(10))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "json_too_deep"


async def test_asking_again_after_a_refusal_gets_the_same_refusal_not_a_hang() -> None:
    seen: list[str] = []

    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        for _ in range(2):
            try:
                await receive()
            except BodyRefusedError as refusal:
                seen.append(refusal.error["code"])
        raise AssertionError(seen)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=RequestLimits(stubborn, LIMITS)), base_url="http://t"
    ) as c:
        with pytest.raises(AssertionError):
            await c.post("/raw", content=chunks(b"x" * 5000))
    assert seen == ["payload_too_large", "payload_too_large"]


# --- requests per credential -----------------------------------------------------------------


async def test_each_credential_has_its_own_count_and_a_refusal_says_how_long_to_wait() -> None:
    limiter = CredentialRateLimiter("2/minute")
    assert await limiter.admit("token-a") is None
    assert await limiter.admit("token-a") is None
    wait = await limiter.admit("token-a")
    assert wait is not None and 1 <= wait <= 60
    assert await limiter.admit("token-b") is None


async def test_every_rate_of_the_setting_holds() -> None:
    limiter = CredentialRateLimiter("100/second;3/hour")
    for _ in range(3):
        assert await limiter.admit("t") is None
    wait = await limiter.admit("t")
    assert wait is not None and wait > 60


async def test_the_limiter_keeps_a_hash_of_the_credential_never_the_credential() -> None:
    limiter = CredentialRateLimiter("5/minute")
    await limiter.admit("super-secret-operator-token")
    storage = limiter._limiter.storage
    assert "super-secret-operator-token" not in repr(vars(storage))


def operator_app(rate: str) -> FastAPI:
    app = FastAPI()
    guard = require_bearer(lambda _: "the-token")

    @app.get("/v1/things", dependencies=[Depends(guard)])
    async def things() -> list[str]:
        return []

    app.state.credential_limiter = CredentialRateLimiter(rate)
    install_error_handlers(app)
    return app


async def test_an_operator_over_its_rate_gets_429_rate_limited_with_retry_after() -> None:
    transport = httpx.ASGITransport(app=operator_app("2/minute"))
    good = {"authorization": "Bearer the-token"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/v1/things", headers=good)).status_code == 200
        assert (await c.get("/v1/things", headers=good)).status_code == 200
        r = await c.get("/v1/things", headers=good)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # A wrong token is refused for what it is, and is not counted.
        wrong = await c.get("/v1/things", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_the_rate_setting_must_be_a_rate() -> None:
    assert PlatformSettings(operator_rate_limit="10/second").operator_rate_limit == "10/second"
    with pytest.raises(ValidationError, match="operator_rate_limit"):
        PlatformSettings(operator_rate_limit="lots")


async def test_a_database_outage_answers_503_with_retry_after_and_a_bug_a_json_500() -> None:
    import httpx
    import sqlalchemy.exc
    from fastapi import FastAPI
    from lx_platform.runtime import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/down")
    async def down() -> None:
        raise sqlalchemy.exc.OperationalError("select 1", {}, OSError("connection refused"))

    @app.get("/bug")
    async def bug() -> None:
        raise KeyError("oops")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/down")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "service_unavailable"
        r = await client.get("/bug")
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
