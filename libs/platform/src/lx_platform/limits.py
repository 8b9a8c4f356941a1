"""Limits on hostile input every service applies (OWASP API4:2023, unrestricted resource
consumption): the size and the shape of a request body, and the rate of each operator
credential.

A body is refused before any JSON parser sees it: ``413 payload_too_large`` past
``max_body_bytes`` (whatever Content-Length says or omits), ``400 json_too_deep`` past
``max_json_depth`` nested arrays/objects (Python's ``json`` raises ``RecursionError`` at
about 1,000 levels, which would be a 500), ``413 json_too_many_items`` past
``max_json_items`` members and elements in all, ``400 invalid_character`` for the
escape of U+0000 or of a lone surrogate (no text can be stored with one: a 500 later).
Lengths of strings are the request models' business (``max_length``); the body's size
bounds them all.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lx_platform.http import problem

# A JSON string, escapes included (the unrolled form never backtracks).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# An escape (not an escaped backslash followed by "u...") of U+0000 or of a lone
# surrogate. I-JSON (RFC 7493, 2.1) forbids lone surrogates: UTF-8 cannot encode them, so
# neither PostgreSQL nor an event can hold one; nor can PostgreSQL's text and jsonb hold
# U+0000. Such a string could pass a model's checks and then fail to be stored: a 500.
_HIGH = rb"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW = rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_UNSTORABLE = re.compile(
    rb"(?<!\\)(?:\\\\)*(?:\\u0000|%s(?!%s)|(?<!%s)%s)" % (_HIGH, _LOW, _HIGH, _LOW)
)
# Every byte but the structural ones, deleted by ``bytes.translate``.
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b"[]{},")


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    max_json_items: int = 10_000


class BodyRefusedError(HTTPException):
    """A request body refused for its size or shape; rendered as the platform's error body
    by the app's HTTP-exception handler (or by ``RequestLimits`` if it escapes)."""

    def __init__(self, status_code: int, code: str, detail: str, **extra: Any) -> None:
        self.error: dict[str, Any] = {"code": code, "detail": detail, **extra}
        super().__init__(status_code, self.error)


def too_large(limit: int) -> BodyRefusedError:
    return BodyRefusedError(
        413, "payload_too_large", f"the body exceeds {limit} bytes", limit=limit
    )


def json_refusal(body: bytes, limits: BodyLimits) -> BodyRefusedError | None:
    """Why ``body`` is too deep or too big a JSON document to parse, or holds a text no
    service can store (U+0000, a lone surrogate), or ``None``.

    Only the structure is read, not validated: strings are cut out (their brackets do
    not count), then what is left of ``[]{},`` is counted. The heavy passes are C (a
    regex, ``translate``, ``count``); the loop in Python walks brackets only, at most
    twice the item limit of them (a document within that limit has no more).

    Hand-written: the parser in use (the stdlib's ``json``, under FastAPI and in ingest)
    takes no depth limit, and a second, limited parser would parse every body twice.
    """
    if b"\\u" in body and _UNSTORABLE.search(body):
        return BodyRefusedError(
            400,
            "invalid_character",
            "the body holds U+0000 or a lone surrogate (\\u0000, \\ud800...), which no"
            " text may contain",
        )
    if not any(c in body for c in b"[{"):
        return None
    structure = _STRING.sub(b"", body).translate(None, _NOT_STRUCTURAL)
    # Depth first, as the more telling reason, over no more brackets than a document
    # within the item limit can hold (which bounds the loop in Python).
    depth = 0
    for byte in structure.translate(None, b",")[: 2 * limits.max_json_items + 2]:
        if byte in b"[{":
            depth += 1
            if depth > limits.max_json_depth:
                return BodyRefusedError(
                    400,
                    "json_too_deep",
                    f"the body nests arrays and objects deeper than {limits.max_json_depth}",
                    limit=limits.max_json_depth,
                )
        else:
            depth = max(depth - 1, 0)
    items = structure.count(b",") + structure.count(b"[") + structure.count(b"{")
    if items > limits.max_json_items:
        return BodyRefusedError(
            413,
            "json_too_many_items",
            f"the body holds more than {limits.max_json_items} JSON members and elements",
            limit=limits.max_json_items,
        )
    return None


class RequestLimits:
    """ASGI middleware enforcing ``BodyLimits`` on every HTTP request.

    A declared Content-Length past the limit is refused at once, unread. Otherwise the
    body is read when the app first asks for it (so that a service may refuse on its
    headers first: ingest checks the API key and the source's rate before any body),
    counted while it streams in, checked for its JSON shape, then handed on whole.

    Written here rather than Starlette's ``RequestBodyLimitMiddleware`` because the body
    must be whole for its shape to be checked before a parser sees it, and because that
    one answers in plain text, where every refusal here is ``{"error": {"code", ...}}``.
    """

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _answer(too_large(limit), scope, receive, send)
            return

        delivered = False
        started = False
        refused: BodyRefusedError | None = None

        async def receive_checked() -> Message:
            nonlocal delivered, refused
            if refused is not None:  # asked again after a refusal: the same answer
                raise refused
            if delivered:
                return await receive()
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message  # the client left: let the app see it
                body += message.get("body", b"")
                if len(body) > limit:
                    refused = too_large(limit)
                    raise refused
                if not message.get("more_body", False):
                    break
            if refused := json_refusal(bytes(body), self.limits):
                raise refused
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive_checked, send_tracked)
        except BodyRefusedError as refusal:
            if started:
                raise
            await _answer(refusal, scope, receive, send)


async def _answer(refusal: BodyRefusedError, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem(refusal.status_code, **refusal.error)
    await response(scope, receive, send)


class CredentialRateLimiter:
    """Requests per credential, counted with the ``limits`` library.

    Counted **in memory, per process**: N replicas of a service admit up to N times the
    rate. The credential is kept only as its SHA-256, never in clear. It is a guard
    against a runaway script or a stolen token, not a quota; hence a generous default.
    """

    def __init__(self, spec: str) -> None:
        self.items: list[RateLimitItem] = parse_many(spec)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def admit(self, credential: str) -> int | None:
        """Count one request; ``None`` if admitted, else the seconds to wait."""
        ident = hashlib.sha256(credential.encode()).hexdigest()
        for item in self.items:
            if not await self._limiter.hit(item, "credential", ident):
                stats = await self._limiter.get_window_stats(item, "credential", ident)
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None
