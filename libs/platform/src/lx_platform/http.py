"""Health and readiness endpoints, the internal-call and operator guards, the principal
guard (operator token or access token, with a permission), and error bodies."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.responses import JSONResponse

from lx_platform.access import (
    OPERATOR,
    AccessTokenError,
    AccessTokenVerifier,
    Permission,
    Principal,
    looks_like_jwt,
)

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
    if limiter is not None:
        await admit_or_429(limiter, credential)


async def admit_or_429(
    limiter: CredentialRateLimiter,
    credential: str,
    *,
    why: str = "more requests with this credential than allowed",
) -> None:
    """Count a request of ``credential``; over the limit, 429 ``rate_limited`` with
    Retry-After, the detail saying ``why``."""
    wait = await limiter.admit(credential)
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            {"code": "rate_limited", "detail": f"{why}; retry in {wait} s"},
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


# --- principals: the operator token or an access token -------------------------------------


def _refused(code: str, detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        {"code": code, "detail": detail},
        headers={"WWW-Authenticate": "Bearer"},
    )


def access_token_verifier(request: Request) -> AccessTokenVerifier:
    """The app's verifier, built once from ``LX_PLATFORM_ACCESS_TOKEN_PUBLIC_KEYS``."""
    verifier: AccessTokenVerifier | None = getattr(request.app.state, "access_tokens", None)
    if verifier is None:
        keys = request.app.state.runtime.settings.platform.access_token_public_keys
        verifier = request.app.state.access_tokens = AccessTokenVerifier.from_setting(keys)
    return verifier


async def authenticate_principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The request's principal: the operator token (staff) or an access token minted by
    admin for this service; 401 otherwise. Then counted against its credential's rate."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _refused("unauthorized", "an operator token or an access token is required")
    rt = request.app.state.runtime
    expected = rt.settings.platform.operator_token.get_secret_value()
    if hmac.compare_digest(token.encode(), expected.encode()):
        await limit_credential(request, token)
        request.state.principal = OPERATOR  # for whoever records the request's actor
        return OPERATOR
    if not looks_like_jwt(token):
        raise _refused("unauthorized", "an operator token or an access token is required")
    try:
        who = access_token_verifier(request).verify(token, audience=rt.name)
    except AccessTokenError as exc:
        raise _refused(exc.code, exc.detail) from None
    # Per principal, not per token: minting a new token every minute resets nothing.
    await limit_credential(request, who.actor)
    request.state.principal = who  # for whoever records the request's actor
    return who


# The answers of principal_guard, for the ``responses`` of the routes it guards.
GUARD_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "`unauthorized`, `invalid_token`, `token_expired`: no valid operator"
        " token or access token"
    },
    403: {"description": "`forbidden`: the caller's role lacks the permission"},
}


def principal_guard(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting the operator token and access tokens whose role holds
    ``permission``: 401 without a valid credential, 403 ``forbidden`` without the
    permission (whatever the entity: a refusal tells nothing of what exists). Returns
    the principal; the route then hides other accounts' entities (``require_visible``)."""

    async def guard(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Principal:
        who = await authenticate_principal(request, authorization)
        if not who.can(permission):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                {
                    "code": "forbidden",
                    "detail": f"the role {who.role.value} may not {permission.value}",
                },
            )
        return who

    guard.permission = permission  # type: ignore[attr-defined]  # for route tables and docs
    return guard


def not_found(kind: str) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND, {"code": f"{kind}_not_found", "detail": f"no such {kind}"}
    )


def require_visible(who: Principal, account_id: Any, kind: str) -> None:
    """404 ``<kind>_not_found`` for an entity of another account: it does not exist for
    this principal (``account_id`` None: unknown, so not the principal's either)."""
    if not who.sees(account_id):
        raise not_found(kind)
