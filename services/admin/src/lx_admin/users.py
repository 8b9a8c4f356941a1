"""People and automation of an account: users (argon2id passwords, TOTP second factor),
login sessions and API tokens. Every token is shown once and kept only as a hash."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from functools import cache
from typing import Annotated, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, Depends, HTTPException, Response, status
from lx_platform.http import admit_or_429, not_found
from lx_platform.limits import CredentialRateLimiter
from lx_platform.secrets import ConfigKeys
from lx_schemas.envelope import Frozen
from lx_schemas.integration import SealedSecret
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_admin import access, audit, store
from lx_admin.access import Permission, Principal, PrincipalKind, Role
from lx_admin.api import Rt, _current, config_keys
from lx_admin.auth import Authenticated, allow, forbidden

router = APIRouter(prefix="/v1", tags=["access"])
UserManager = Annotated[Principal, Depends(allow(Permission.USERS))]
TokenManager = Annotated[Principal, Depends(allow(Permission.API_TOKENS))]
Staff = Annotated[Principal, Depends(allow(Permission.PLATFORM))]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid credential"},
    403: {
        "description": "`forbidden`: the role lacks the permission;"
        " `role_not_grantable`: a role above the caller's"
    },
    404: {"description": "no such entity (or one of another account)"},
}
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]
# NIST SP 800-63B: length over composition rules; the upper bound keeps hashing cheap.
Password = Annotated[str, Field(min_length=12, max_length=256)]
TotpCode = Annotated[str, Field(pattern=r"^[0-9]{6}$")]
SESSION_TTL = dt.timedelta(minutes=30)


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with RFC 9106's low-memory parameters


@cache
def _decoy_hash() -> str:
    """A hash to verify against when no user has the address: a login for an unknown
    address takes as long as one with a wrong password."""
    return _hasher().hash("not anyone's password")


def _password_matches(hashed: str, password: str) -> bool:
    # Run in a thread: argon2id takes tens of milliseconds and 64 MiB by design.
    try:
        return _hasher().verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- login and the second factor -------------------------------------------------------------


class Login(Body):
    email: Email
    password: Annotated[str, Field(min_length=1, max_length=256)]
    totp: TotpCode | None = None  # required once the user has enrolled TOTP


class Session(Frozen):
    token: str  # lxss_..., shown once: the bearer credential until expires_at
    expires_at: dt.datetime
    # False: a password alone (no TOTP enrolled yet); the session may only enrol one.
    mfa: bool
    user_id: uuid.UUID
    account_id: uuid.UUID | None
    role: Role


def _refused(code: str, detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, {"code": code, "detail": detail})


def _open(keys: ConfigKeys, sealed: Any) -> str:
    return keys.open(SealedSecret.model_validate(sealed))


def _login_limiter(rt: Any) -> CredentialRateLimiter:
    """Attempts per e-mail address, known or not (so the limit tells nothing)."""
    limiter: CredentialRateLimiter | None = rt.extras.get("login_limiter")
    if limiter is None:
        limiter = rt.extras["login_limiter"] = CredentialRateLimiter(rt.settings.login_rate_limit)
    return limiter


@router.post(
    "/auth/login",
    response_model=Session,
    responses={
        401: {
            "description": "`invalid_credentials` (no such user, or a wrong password);"
            " `totp_required`; `invalid_totp` (wrong, expired, or used before)"
        }
    },
)
async def login(body: Login, rt: Rt) -> Session:
    """A session for a user: e-mail address, password and, once enrolled, a TOTP code
    (RFC 6238; each code is accepted once). Short-lived (30 minutes)."""
    await admit_or_429(
        _login_limiter(rt), body.email.strip().lower(), why="too many sign-in attempts"
    )
    async with rt.db.begin() as conn:
        user = await store.user_by_email(conn, body.email)
    hashed = user["password_hash"] if user else await asyncio.to_thread(_decoy_hash)
    if not await asyncio.to_thread(_password_matches, hashed, body.password):
        user = None
    if user is None:
        raise _refused("invalid_credentials", "wrong e-mail address or password")
    mfa = user["totp_secret"] is not None
    async with rt.db.begin() as conn:
        if mfa:
            if body.totp is None:
                raise _refused("totp_required", "this user signs in with a TOTP code")
            secret = _open(config_keys(rt), user["totp_secret"])
            step = access.totp_step(secret, body.totp, time.time(), user["totp_last_step"])
            if step is None or not await store.use_totp_step(conn, user["user_id"], step):
                raise _refused("invalid_totp", "wrong or expired TOTP code, or one used before")
        if _hasher().check_needs_rehash(user["password_hash"]):
            rehashed = await asyncio.to_thread(_hasher().hash, body.password)
            await store.set_password_hash(conn, user["user_id"], rehashed)
        token = access.new_session_token()
        expires = dt.datetime.now(dt.UTC) + SESSION_TTL
        await store.insert_session(
            conn,
            {
                "session_id": uuid.uuid4(),
                "user_id": user["user_id"],
                "token_sha256": access.token_sha256(token),
                "mfa": mfa,
                "expires_at": expires,
            },
        )
    return Session(
        token=token,
        expires_at=expires,
        mfa=mfa,
        user_id=user["user_id"],
        account_id=user["account_id"],
        role=Role(user["role"]),
    )


class Me(Frozen):
    kind: PrincipalKind
    id: str
    role: Role
    account_id: uuid.UUID | None
    mfa: bool
    permissions: list[Permission]


@router.get("/auth/me", response_model=Me, responses={401: ERRORS[401]})
async def me(who: Authenticated) -> Me:
    """Who the credential is, and what it may do."""
    return Me(
        kind=who.kind,
        id=who.id,
        role=who.role,
        account_id=who.account_id,
        mfa=who.mfa,
        permissions=sorted(access.ROLE_PERMISSIONS[who.role]),
    )


def _session_of(who: Principal) -> uuid.UUID:
    if who.kind is not PrincipalKind.USER or who.session_id is None:
        raise forbidden("only a user's login session may do this", "session_required")
    return who.session_id


@router.post("/auth/logout", status_code=204, responses=ERRORS)
async def logout(who: Authenticated, rt: Rt) -> Response:
    """End the session: its token answers 401 from now on."""
    session = _session_of(who)
    async with rt.db.begin() as conn:
        await store.revoke_session(conn, session)
    return Response(status_code=204)


class TotpEnrolment(Frozen):
    secret: str  # base32, shown once: for an authenticator app
    otpauth_uri: str  # the same as a provisioning URI (a QR code's content)


@router.post(
    "/auth/totp",
    status_code=201,
    response_model=TotpEnrolment,
    responses={**ERRORS, 409: {"description": "`totp_already_enrolled`"}},
)
async def enrol_totp(who: Authenticated, rt: Rt) -> TotpEnrolment:
    """Start enrolling a TOTP second factor; confirm with a code (``/auth/totp/confirm``)."""
    _session_of(who)
    secret = access.new_totp_secret()
    async with rt.db.begin() as conn:
        user = await store.user(conn, uuid.UUID(who.id))
        if user is None:
            raise not_found("user")
        if user["totp_secret"] is not None:
            raise HTTPException(
                409, {"code": "totp_already_enrolled", "detail": "this user has a TOTP factor"}
            )
        await store.set_totp_pending(
            conn, user["user_id"], config_keys(rt).seal(secret).model_dump_json()
        )
    return TotpEnrolment(secret=secret, otpauth_uri=access.totp_uri(secret, user["email"]))


class TotpConfirm(Body):
    code: TotpCode


class TotpConfirmed(Frozen):
    mfa: bool  # the session now counts as signed in with both factors


@router.post(
    "/auth/totp/confirm",
    response_model=TotpConfirmed,
    responses={
        **ERRORS,
        409: {"description": "`no_totp_pending`: enrol first"},
        422: {"description": "`invalid_totp`"},
    },
)
async def confirm_totp(body: TotpConfirm, who: Authenticated, rt: Rt) -> TotpConfirmed:
    """Confirm the TOTP enrolment with a code of the new secret: from now on every login
    needs a code."""
    session = _session_of(who)
    async with rt.db.begin() as conn:
        user = await store.user(conn, uuid.UUID(who.id))
        if user is None or user["totp_pending"] is None:
            raise HTTPException(409, {"code": "no_totp_pending", "detail": "enrol first"})
        secret = _open(config_keys(rt), user["totp_pending"])
        step = access.totp_step(secret, body.code, time.time(), None)
        if step is None:
            raise HTTPException(422, {"code": "invalid_totp", "detail": "wrong or expired code"})
        await store.confirm_totp(conn, user["user_id"], step)
        await store.upgrade_session(conn, session)
        await audit.record(
            conn,
            who,
            "user.totp_enrolled",
            account_id=user["account_id"],
            entity_kind="user",
            entity_id=user["user_id"],
        )
    return TotpConfirmed(mfa=True)


# --- users -----------------------------------------------------------------------------------


class UserCreate(Body):
    email: Email
    password: Password
    role: Role


class StaffCreate(Body):
    email: Email
    password: Password


class User(Frozen):
    user_id: uuid.UUID
    account_id: uuid.UUID | None
    email: str
    role: Role
    totp_enrolled: bool
    created_at: dt.datetime
    disabled_at: dt.datetime | None = None


def _user(row: dict[str, Any]) -> User:
    return User(
        user_id=row["user_id"],
        account_id=row["account_id"],
        email=row["email"],
        role=row["role"],
        totp_enrolled=row["totp_secret"] is not None,
        created_at=row["created_at"],
        disabled_at=row["disabled_at"],
    )


def _may_grant(who: Principal, role: Role) -> None:
    if role not in access.grantable(who.role):
        raise forbidden(
            f"the role {who.role.value} may not grant or take away {role.value}",
            "role_not_grantable",
        )


async def _add_user(
    conn: AsyncConnection,
    who: Principal,
    account_id: uuid.UUID | None,
    email: str,
    pw: str,
    role: Role,
) -> User:
    user_id = uuid.uuid4()
    row = {
        "user_id": user_id,
        "account_id": account_id,
        "email": email,
        "role": role.value,
        "password_hash": await asyncio.to_thread(_hasher().hash, pw),
    }
    if not await store.insert_user(conn, row):
        raise HTTPException(409, {"code": "email_taken", "detail": "a user has this address"})
    created = await store.user(conn, user_id)
    assert created is not None  # inserted just now, in this transaction
    user = _user(created)
    await audit.record(
        conn,
        who,
        "user.created",
        account_id=account_id,
        entity_kind="user",
        entity_id=user_id,
        after=user.model_dump(mode="json"),
    )
    return user


@router.post(
    "/accounts/{account_id}/users",
    status_code=201,
    response_model=User,
    responses={
        **ERRORS,
        409: {"description": "`email_taken`"},
        422: {"description": "`invalid_request`; `superuser_has_no_account`"},
    },
)
async def create_user(account_id: uuid.UUID, body: UserCreate, rt: Rt, who: UserManager) -> User:
    """A user of the account, with a role no higher than the caller's (an admin makes
    no owner). The user signs in with the password and then enrols TOTP."""
    _may_grant(who, body.role)
    if body.role is Role.SUPERUSER:
        raise HTTPException(
            422,
            {"code": "superuser_has_no_account", "detail": "staff are made by POST /v1/staff"},
        )
    async with rt.db.begin() as conn:
        await _current(conn, "account", account_id, who)
        return await _add_user(conn, who, account_id, body.email, body.password, body.role)


@router.post(
    "/staff",
    status_code=201,
    response_model=User,
    responses={**ERRORS, 409: {"description": "`email_taken`"}},
)
async def create_staff(body: StaffCreate, rt: Rt, who: Staff) -> User:
    """A user of the platform's own staff: a superuser, in no account."""
    async with rt.db.begin() as conn:
        return await _add_user(conn, who, None, body.email, body.password, Role.SUPERUSER)


@router.get("/accounts/{account_id}/users", response_model=list[User], responses=ERRORS)
async def list_users(account_id: uuid.UUID, rt: Rt, who: UserManager) -> list[User]:
    async with rt.db.begin() as conn:
        await _current(conn, "account", account_id, who)
        return [_user(r) for r in await store.users_of(conn, account_id)]


@router.delete("/users/{user_id}", status_code=204, responses=ERRORS)
async def disable_user(user_id: uuid.UUID, rt: Rt, who: UserManager) -> Response:
    """Disable a user: their sessions end now and they cannot sign in again."""
    async with rt.db.begin() as conn:
        row = await store.user(conn, user_id)
        if row is None or not who.sees(row["account_id"]):
            raise not_found("user")
        _may_grant(who, Role(row["role"]))
        await store.disable_user(conn, user_id)
        await audit.record(
            conn,
            who,
            "user.disabled",
            account_id=row["account_id"],
            entity_kind="user",
            entity_id=user_id,
            before=_user(row).model_dump(mode="json"),
        )
    return Response(status_code=204)


# --- API tokens ------------------------------------------------------------------------------


API_TOKEN_DAYS = 90  # a token's lifetime unless its creator says otherwise
API_TOKEN_MAX_DAYS = 365  # no token lives longer: automation rotates its credential yearly


class ApiTokenCreate(Body):
    name: Annotated[str, Field(min_length=1, max_length=200)] = "api token"
    role: Role
    # Past its expiry the token answers 401 ``token_expired``; beyond the maximum: 422.
    expires_in_days: Annotated[int, Field(ge=1, le=API_TOKEN_MAX_DAYS)] = API_TOKEN_DAYS


class ApiToken(Frozen):
    token_id: uuid.UUID
    account_id: uuid.UUID
    name: str
    role: Role
    token_prefix: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None = None


class ApiTokenCreated(ApiToken):
    token: str  # lxat_..., shown once; only its SHA-256 is kept


@router.post(
    "/accounts/{account_id}/api-tokens",
    status_code=201,
    response_model=ApiTokenCreated,
    responses={
        **ERRORS,
        422: {
            "description": "`superuser_has_no_account`; `invalid_request` (e.g."
            f" `expires_in_days` beyond {API_TOKEN_MAX_DAYS})"
        },
    },
)
async def create_api_token(
    account_id: uuid.UUID, body: ApiTokenCreate, rt: Rt, who: TokenManager
) -> ApiTokenCreated:
    """A token for automation acting in the account with a role (no higher than the
    caller's), shown once; it expires after ``expires_in_days`` (90 by default, 365 at
    most)."""
    _may_grant(who, body.role)
    if body.role is Role.SUPERUSER:
        raise HTTPException(
            422, {"code": "superuser_has_no_account", "detail": "an API token is an account's"}
        )
    token = access.new_api_token()
    async with rt.db.begin() as conn:
        await _current(conn, "account", account_id, who)
        created = ApiToken(
            **await store.insert_api_token(
                conn,
                {
                    "token_id": uuid.uuid4(),
                    "account_id": account_id,
                    "name": body.name,
                    "role": body.role.value,
                    "token_prefix": access.display_prefix(token),
                    "token_sha256": access.token_sha256(token),
                    "created_by": who.actor,
                    "expires_at": dt.datetime.now(dt.UTC) + dt.timedelta(days=body.expires_in_days),
                },
            )
        )
        await audit.record(
            conn,
            who,
            "api_token.created",
            account_id=account_id,
            entity_kind="api_token",
            entity_id=created.token_id,
            after=created.model_dump(mode="json"),
        )
    return ApiTokenCreated(**created.model_dump(), token=token)


@router.get("/accounts/{account_id}/api-tokens", response_model=list[ApiToken], responses=ERRORS)
async def list_api_tokens(account_id: uuid.UUID, rt: Rt, who: TokenManager) -> list[ApiToken]:
    async with rt.db.begin() as conn:
        await _current(conn, "account", account_id, who)
        return [ApiToken(**t) for t in await store.api_tokens_of(conn, account_id)]


@router.delete("/api-tokens/{token_id}", status_code=204, responses=ERRORS)
async def revoke_api_token(token_id: uuid.UUID, rt: Rt, who: TokenManager) -> Response:
    """Revoke an API token: from now on it answers 401."""
    async with rt.db.begin() as conn:
        row = await store.api_token(conn, token_id)
        if row is None or not who.sees(row["account_id"]):
            raise not_found("api_token")
        _may_grant(who, Role(row["role"]))
        await store.revoke_api_token(conn, token_id)
        await audit.record(
            conn,
            who,
            "api_token.revoked",
            account_id=row["account_id"],
            entity_kind="api_token",
            entity_id=token_id,
            before=ApiToken(**row).model_dump(mode="json"),
        )
    return Response(status_code=204)
