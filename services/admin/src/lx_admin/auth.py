"""Who is calling: the bearer credential of a request made a ``Principal``, and the
dependency that lets a route's permission through.

Credentials: the platform's operator token (a superuser, as before users existed), a
login session (``lxss_``) or an API token (``lxat_``). A buyer token (``lxbt_``) opens
only the buyer's own routes (returns.buyer), never these. A session or an API token may
be exchanged for a short-lived access token that the other services verify on their own
(``mint_access_token``; see ``lx_platform.access``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import Depends, Header, HTTPException, Request, status
from lx_platform.access import AccessTokenSigner
from lx_platform.http import limit_credential
from lx_platform.runtime import Runtime
from lx_schemas.envelope import Frozen

from lx_admin import store
from lx_admin.access import (
    API_TOKEN_PREFIX,
    OPERATOR,
    SESSION_PREFIX,
    Permission,
    Principal,
    PrincipalKind,
    Role,
    token_sha256,
)
from lx_admin.settings import AdminSettings


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        {
            "code": "unauthorized",
            "detail": "a valid operator token, session token or API token is required",
        },
    )


async def _principal(rt: Runtime, token: str) -> Principal | None:
    expected = rt.settings.platform.operator_token.get_secret_value()
    if hmac.compare_digest(token.encode(), expected.encode()):
        return OPERATOR
    if token.startswith(SESSION_PREFIX):
        async with rt.db.begin() as conn:
            row = await store.session_principal(conn, token_sha256(token))
        if row is None:
            return None
        return Principal(
            PrincipalKind.USER,
            str(row["user_id"]),
            Role(row["role"]),
            row["account_id"],
            mfa=row["mfa"],
            session_id=row["session_id"],
        )
    if token.startswith(API_TOKEN_PREFIX):
        async with rt.db.begin() as conn:
            row = await store.api_token_principal(conn, token_sha256(token))
        if row is None:
            return None
        if row["expired"]:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                {"code": "token_expired", "detail": "this API token has expired; make a new one"},
            )
        return Principal(
            PrincipalKind.API_TOKEN, str(row["token_id"]), Role(row["role"]), row["account_id"]
        )
    return None


async def authenticate(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The request's principal, or 401; then counted against its credential's rate."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized()
    rt: Runtime = request.app.state.runtime
    who = await _principal(rt, token)
    if who is None:
        raise _unauthorized()
    await limit_credential(request, token)
    return who


Authenticated = Annotated[Principal, Depends(authenticate)]


def forbidden(detail: str, code: str = "forbidden") -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, {"code": code, "detail": detail})


def allow(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting principals whose role holds ``permission`` (403 otherwise,
    whatever the entity: a refusal tells nothing of what exists)."""

    async def check(who: Authenticated) -> Principal:
        if not who.mfa:
            raise forbidden(
                "enrol a second factor first: POST /v1/auth/totp", "totp_enrolment_required"
            )
        if not who.can(permission):
            raise forbidden(f"the role {who.role.value} may not {permission.value}")
        return who

    check.permission = permission  # type: ignore[attr-defined]  # read by the route audit
    return check


# --- access tokens for the other services ------------------------------------------------------


class AccessToken(Frozen):
    access_token: str  # a JWT (EdDSA), for billing, analytics and ingest's privacy API
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the scheme, not a secret
    expires_in: int  # seconds


def _signer(rt: Runtime) -> AccessTokenSigner | None:
    signer: AccessTokenSigner | None = rt.extras.get("access_token_signer")
    if signer is None:
        settings = rt.settings
        assert isinstance(settings, AdminSettings)
        key = settings.access_token_signing_key.get_secret_value()
        if not key:
            return None
        signer = rt.extras["access_token_signer"] = AccessTokenSigner.from_setting(
            key, settings.access_token_ttl_s
        )
    return signer


def mint_access_token(who: Principal, rt: Runtime) -> AccessToken:
    """A short-lived access token for ``who``, who signed in with both factors (or holds
    an API token). Each call checks the credential anew (``authenticate``): a revoked
    API token or an ended session mints no more; a token minted before lives out its
    time to live, at most ``LX_ADMIN_ACCESS_TOKEN_TTL_S``."""
    if who.kind is PrincipalKind.OPERATOR_TOKEN:
        raise forbidden(
            "the operator token is accepted by every service as it is",
            "operator_token_not_exchangeable",
        )
    if not who.mfa:
        raise forbidden(
            "enrol a second factor first: POST /v1/auth/totp", "totp_enrolment_required"
        )
    signer = _signer(rt)
    if signer is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            {
                "code": "access_tokens_disabled",
                "detail": "no signing key is configured (LX_ADMIN_ACCESS_TOKEN_SIGNING_KEY)",
            },
        )
    minted = signer.mint(who)
    return AccessToken(access_token=minted.token, expires_in=minted.expires_in)
