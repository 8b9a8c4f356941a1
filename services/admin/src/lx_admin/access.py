"""Who may do what in the admin API: roles, their permissions, principals, credentials
and the TOTP step rule. Pure: no I/O (the clock is passed in).

A principal belongs to one account (tenant) and sees nothing of another: an entity of
another account answers 404, as if it did not exist. The platform's own staff hold the
``superuser`` role and no account; the shared operator token is such a principal.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

import pyotp

SESSION_PREFIX = "lxss_"
API_TOKEN_PREFIX = "lxat_"  # noqa: S105 - a prefix, not a secret
TOTP_STEP_S = 30
TOTP_DIGITS = 6


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    OPERATOR = "operator"
    ANALYST = "analyst"
    BILLING = "billing"
    READ_ONLY = "read_only"
    SUPERUSER = "superuser"  # the platform's staff: every account, platform operations


ACCOUNT_ROLES = tuple(r for r in Role if r is not Role.SUPERUSER)


class Permission(enum.StrEnum):
    CONFIG_READ = "config:read"  # accounts, campaigns, sources, buyers
    CONFIG_WRITE = "config:write"  # create and change campaigns, sources, buyers
    BUYER_TOKENS = "buyer_tokens:manage"
    RETURNS = "returns:write"  # return a sold lead on a buyer's behalf
    TRACE_READ = "trace:read"  # a lead's events (no PII)
    PII_READ = "pii:read"  # the trace's request and response logs (delivery's)
    USERS = "users:manage"
    API_TOKENS = "api_tokens:manage"
    AUDIT_READ = "audit:read"
    PLATFORM = "platform:manage"  # new accounts, config key rotation: staff only


P = Permission
_READ_ONLY = frozenset({P.CONFIG_READ})
_OPERATOR = frozenset({P.CONFIG_READ, P.CONFIG_WRITE, P.BUYER_TOKENS, P.RETURNS, P.TRACE_READ})
_ADMIN = _OPERATOR | {P.USERS, P.API_TOKENS, P.AUDIT_READ}
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.READ_ONLY: _READ_ONLY,
    Role.ANALYST: _READ_ONLY | {P.TRACE_READ},
    # Returns are money: billing may credit a buyer and claw a payout back.
    Role.BILLING: _READ_ONLY | {P.RETURNS},
    Role.OPERATOR: _OPERATOR,
    Role.ADMIN: _ADMIN,
    # Everything in its account; reading the payloads sent to buyers is the owner's alone.
    Role.OWNER: _ADMIN | {P.PII_READ},
    Role.SUPERUSER: frozenset(Permission),
}


def grantable(role: Role) -> frozenset[Role]:
    """The roles a principal of ``role`` may give to a user or an API token (and so also
    take away): never more than it holds; an admin makes no owner."""
    if role is Role.SUPERUSER:
        return frozenset(Role)
    if role is Role.OWNER:
        return frozenset(ACCOUNT_ROLES)
    if role is Role.ADMIN:
        return frozenset(ACCOUNT_ROLES) - {Role.OWNER}
    return frozenset()


class PrincipalKind(enum.StrEnum):
    OPERATOR_TOKEN = "operator_token"  # noqa: S105 - a kind of credential, not one
    USER = "user"
    API_TOKEN = "api_token"  # noqa: S105 - a kind of credential, not one


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    id: str
    role: Role
    account_id: uuid.UUID | None  # None: platform staff
    # A user's session from a password alone (no TOTP enrolled yet) may only enrol one.
    mfa: bool = True
    session_id: uuid.UUID | None = None

    @property
    def actor(self) -> str:
        """Who did it, as the audit log names them."""
        return f"{self.kind.value}:{self.id}"

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    def sees(self, account_id: uuid.UUID | str | None) -> bool:
        """Whether an entity of ``account_id`` exists for this principal."""
        if self.role is Role.SUPERUSER:
            return True
        return account_id is not None and str(account_id) == str(self.account_id)


OPERATOR = Principal(PrincipalKind.OPERATOR_TOKEN, "operator", Role.SUPERUSER, None)


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
