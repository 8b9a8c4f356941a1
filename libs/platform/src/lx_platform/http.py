"""Health and readiness endpoints, the internal-call guard, and error bodies."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from lx_platform.limits import CredentialRateLimiter

Check = Callable[[], Awaitable[bool]]


def health_router(checks: Callable[[Request], dict[str, Check]]) -> APIRouter:
    """``/health/live`` answers while the process runs; ``/health/ready`` checks deps."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/health/ready", responses={503: {"description": "a dependency is down"}})
    async def ready(request: Request) -> JSONResponse:
        results = {name: await check() for name, check in checks(request).items()}
        ok = all(results.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": results},
            status_code=200 if ok else 503,
        )

    return router


def problem(status_code: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    """A machine-readable error body: ``{"error": {"code", "detail", ...}}``."""
    return JSONResponse(
        {"error": {"code": code, "detail": detail, **extra}}, status_code=status_code
    )


def require_internal(expected: Callable[[Request], str]) -> Callable[..., Awaitable[None]]:
    """A dependency admitting only calls that carry the platform's internal token."""

    async def guard(
        request: Request, x_lx_internal_token: Annotated[str | None, Header()] = None
    ) -> None:
        if not x_lx_internal_token or not hmac.compare_digest(
            x_lx_internal_token.encode(), expected(request).encode()
        ):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "internal token required")

    return guard


def require_bearer(expected: Callable[[Request], str]) -> Callable[..., Awaitable[None]]:
    """A dependency admitting requests with ``Authorization: Bearer <expected>``, at the
    rate the app's ``credential_limiter`` allows each token (429 ``rate_limited``)."""

    async def guard(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), expected(request).encode()
        ):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "operator token required")
        # Only a token that passed is counted: a wrong one costs a comparison, not a
        # counter (a flood of made-up tokens would otherwise fill the limiter's memory).
        await limit_credential(request, token)

    return guard


async def limit_credential(request: Request, credential: str) -> None:
    """Count a request of ``credential`` against the app's per-credential rate limit
    (``app.state.credential_limiter``, if set); 429 ``rate_limited`` with Retry-After."""
    limiter: CredentialRateLimiter | None = getattr(request.app.state, "credential_limiter", None)
    if limiter is None:
        return
    wait = await limiter.admit(credential)
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            {
                "code": "rate_limited",
                "detail": f"more requests with this credential than allowed; retry in {wait} s",
            },
            headers={"Retry-After": str(wait)},
        )


def operator_guard() -> Callable[..., Awaitable[None]]:
    return require_bearer(
        lambda r: r.app.state.runtime.settings.platform.operator_token.get_secret_value()
    )


def internal_guard() -> Callable[..., Awaitable[None]]:
    return require_internal(
        lambda r: r.app.state.runtime.settings.platform.internal_token.get_secret_value()
    )
