"""Who may do what in the admin API: credentials and the TOTP step rule. Pure: no I/O
(the clock is passed in). Roles, permissions and principals are every service's, in
``lx_platform.access``; they are re-exported here.

A principal belongs to one account (tenant) and sees nothing of another: an entity of
another account answers 404, as if it did not exist. The platform's own staff hold the
``superuser`` role and no account; the shared operator token is such a principal.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pyotp
from lx_platform.access import (
    ACCOUNT_ROLES,
    OPERATOR,
    ROLE_PERMISSIONS,
    Permission,
    Principal,
    PrincipalKind,
    Role,
    grantable,
)

__all__ = [
    "ACCOUNT_ROLES",
    "OPERATOR",
    "ROLE_PERMISSIONS",
    "Permission",
    "Principal",
    "PrincipalKind",
    "Role",
    "grantable",
]

SESSION_PREFIX = "lxss_"
API_TOKEN_PREFIX = "lxat_"  # noqa: S105 - a prefix, not a secret
TOTP_STEP_S = 30
TOTP_DIGITS = 6


# --- credentials ---------------------------------------------------------------------------


def new_session_token() -> str:
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    """Tokens carry 256 random bits: a fast hash suffices (a slow one guards guessable
    secrets such as passwords)."""
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    return token[: len(API_TOKEN_PREFIX) + 6]


# --- TOTP (RFC 6238) -----------------------------------------------------------------------


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name="LeadExchange")


def totp_code(secret: str, step: int) -> str:
    return pyotp.TOTP(secret).at(step * TOTP_STEP_S)


def totp_step(secret: str, code: str, now: float, last_step: int | None) -> int | None:
    """The time step ``code`` was made for, within one step of ``now`` (clock drift), or
    None: not a code of this secret then, or one of a step already used, or older than
    it (RFC 6238 5.2: a code is accepted once; the caller stores the step)."""
    current = int(now // TOTP_STEP_S)
    for step in (current, current - 1, current + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp_code(secret, step).encode(), code.encode()):
            return step
    return None
