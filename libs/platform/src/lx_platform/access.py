"""Who may do what, in every service: roles, their permissions, principals, and the
short-lived signed access tokens that carry a principal from admin to the others.

A principal belongs to one account (tenant) and sees nothing of another: an entity of
another account answers 404, as if it did not exist. The platform's own staff hold the
``superuser`` role and no account; the shared operator token is such a principal.

Admin knows the users, sessions and API tokens; billing, analytics and ingest do not,
and do not ask admin per request. Admin mints an **access token** for an authenticated
principal instead: a JWT (RFC 7519) signed with Ed25519 (EdDSA, RFC 8037), naming the
principal's kind, id, role and account, valid for minutes. The services verify it with
admin's public keys (by ``kid``), so a revoked API token or an ended session stops
minting at once, and a token minted before lives at most its time to live. PyJWT with
``cryptography`` does the JOSE work: hand-written JWT code is where ``alg: none`` and
algorithm-confusion bugs come from.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


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
    # Billing (the own account's): statements, balances, invoices, ledger totals, limit,
    # subscriptions, prepaid buyers' funds.
    BILLING_READ = "billing:read"
    # Billing commands about the own account's buyers: deposits, credit limits.
    BILLING_WRITE = "billing:write"
    REPORTS_READ = "reports:read"  # analytics' reports and hourly stats
    EXPORTS = "exports:manage"  # analytics' scheduled exports and their runs
    PRIVACY = "privacy:manage"  # subjects' access exports, erasure, requests, retention
    # New accounts, config key rotation, plans, subscriptions, payments, invoices, the
    # ledger check: staff only.
    PLATFORM = "platform:manage"


P = Permission
_READ_ONLY = frozenset({P.CONFIG_READ, P.REPORTS_READ})
_OPERATOR = frozenset(
    {P.CONFIG_READ, P.CONFIG_WRITE, P.BUYER_TOKENS, P.RETURNS, P.TRACE_READ, P.REPORTS_READ}
)
_ADMIN = _OPERATOR | {
    *(P.USERS, P.API_TOKENS, P.AUDIT_READ),
    *(P.BILLING_READ, P.BILLING_WRITE, P.EXPORTS, P.PRIVACY),
}
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.READ_ONLY: _READ_ONLY,
    Role.ANALYST: _READ_ONLY | {P.TRACE_READ, P.EXPORTS},
    # Returns are money: billing may credit a buyer and claw a payout back.
    Role.BILLING: _READ_ONLY | {P.RETURNS, P.BILLING_READ, P.BILLING_WRITE},
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

    @property
    def staff(self) -> bool:
        return self.role is Role.SUPERUSER

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    def sees(self, account_id: uuid.UUID | str | None) -> bool:
        """Whether an entity of ``account_id`` exists for this principal."""
        if self.role is Role.SUPERUSER:
            return True
        return account_id is not None and str(account_id) == str(self.account_id)


OPERATOR = Principal(PrincipalKind.OPERATOR_TOKEN, "operator", Role.SUPERUSER, None)


# --- access tokens -----------------------------------------------------------------------------

# The services that accept access tokens: each checks that its own name is in ``aud``.
AUDIENCES = ("billing", "analytics", "ingest")
ISSUER = "lx-admin"
ALGORITHM = "EdDSA"  # the only one accepted: never "none", never an HMAC with a public key
DEFAULT_TTL_S = 300
# Clock skew allowed between admin and a service when checking exp and iat.
LEEWAY_S = 5
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyFormatError(ValueError):
    """An access-token key setting that is not ``kid:key`` with an Ed25519 key."""


def _split_kid(entry: str) -> tuple[str, str]:
    kid, sep, material = entry.strip().partition(":")
    if not sep or not _KID.match(kid) or not material.strip():
        raise KeyFormatError("expected 'kid:key' (kid of letters, digits, '.', '_', '-')")
    return kid, material.strip()


def _raw(material: str) -> bytes:
    try:
        raw = base64.b64decode(material, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("not base64 nor PEM") from None
    if len(raw) != 32:
        raise KeyFormatError("a raw Ed25519 key is 32 bytes")
    return raw


def parse_signing_key(setting: str) -> tuple[str, Ed25519PrivateKey]:
    """``kid:key``: the key as a PKCS#8 PEM or as its 32 raw bytes in base64."""
    kid, material = _split_kid(setting)
    if "-----BEGIN" in material:
        try:
            key = serialization.load_pem_private_key(material.encode(), password=None)
        except ValueError as exc:
            raise KeyFormatError(f"unreadable PEM: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError("the PEM key is not an Ed25519 key")
        return kid, key
    return kid, Ed25519PrivateKey.from_private_bytes(_raw(material))


def parse_public_keys(setting: str) -> dict[str, Ed25519PublicKey]:
    """``kid:key,kid:key``: several during a rotation; each a PEM (SubjectPublicKeyInfo)
    or its 32 raw bytes in base64. Empty: access tokens are not accepted."""
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in setting.split(","):
        if not entry.strip():
            continue
        kid, material = _split_kid(entry)
        if kid in keys:
            raise KeyFormatError(f"kid {kid!r} is named twice")
        if "-----BEGIN" in material:
            try:
                key = serialization.load_pem_public_key(material.encode())
            except ValueError as exc:
                raise KeyFormatError(f"unreadable PEM: {exc}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise KeyFormatError("the PEM key is not an Ed25519 key")
            keys[kid] = key
        else:
            keys[kid] = Ed25519PublicKey.from_public_bytes(_raw(material))
    return keys


def raw_private(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def raw_public(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def new_key_pair(kid: str) -> tuple[str, str]:
    """A fresh (signing key setting, public keys setting) pair, for development stacks
    and tests: ``kid:<raw private, base64>``, ``kid:<raw public, base64>``."""
    key = Ed25519PrivateKey.generate()
    return f"{kid}:{raw_private(key)}", f"{kid}:{raw_public(key.public_key())}"


@dataclass(frozen=True)
class Minted:
    token: str
    expires_in: int


@dataclass(frozen=True)
class AccessTokenSigner:
    kid: str
    key: Ed25519PrivateKey
    ttl_s: int = DEFAULT_TTL_S

    @classmethod
    def from_setting(cls, setting: str, ttl_s: int = DEFAULT_TTL_S) -> AccessTokenSigner:
        kid, key = parse_signing_key(setting)
        return cls(kid, key, ttl_s)

    def mint(self, who: Principal, now: float | None = None) -> Minted:
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": ISSUER,
            "sub": who.id,
            "aud": list(AUDIENCES),
            "iat": issued,
            "exp": issued + self.ttl_s,
            "jti": str(uuid.uuid4()),
            "kind": who.kind.value,
            "role": who.role.value,
            "account_id": None if who.account_id is None else str(who.account_id),
        }
        token = jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})
        return Minted(token, self.ttl_s)


class AccessTokenError(Exception):
    """Why an access token is refused: ``code`` is the answer's machine-readable code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def looks_like_jwt(token: str) -> bool:
    """A compact JWS: three base64url parts, the header a JSON object (``eyJ``)."""
    return token.startswith("eyJ") and token.count(".") == 2


@dataclass(frozen=True)
class AccessTokenVerifier:
    keys: Mapping[str, Ed25519PublicKey]

    @classmethod
    def from_setting(cls, setting: str) -> AccessTokenVerifier:
        return cls(parse_public_keys(setting))

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def verify(self, token: str, audience: str) -> Principal:
        """The principal the token names, or ``AccessTokenError``: expired, a bad
        signature, an unknown kid, another audience, another algorithm, a bad claim."""
        if not self.keys:
            raise AccessTokenError(
                "access_tokens_disabled", "this service accepts no access tokens"
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AccessTokenError("invalid_token", "not a signed access token") from None
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise AccessTokenError("invalid_token", "the token's key id is not known here")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AccessTokenError("token_expired", "the access token has expired") from None
        except jwt.InvalidAudienceError:
            raise AccessTokenError(
                "invalid_token", f"the access token is not meant for {audience}"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise AccessTokenError("invalid_token", f"invalid access token: {exc}") from None
        return _principal(claims)


def _principal(claims: Mapping[str, Any]) -> Principal:
    try:
        kind = PrincipalKind(claims["kind"])
        role = Role(claims["role"])
        account = claims.get("account_id")
        account_id = None if account is None else uuid.UUID(str(account))
        subject = str(claims["sub"])
    except (KeyError, ValueError, TypeError):
        raise AccessTokenError("invalid_token", "the access token's claims are malformed") from None
    # Signed by admin, so these hold; checked anyway, as a principal's scope rests on them.
    if (account_id is None) != (role is Role.SUPERUSER):
        raise AccessTokenError("invalid_token", "the token's role and account do not agree")
    return Principal(kind, subject, role, account_id)
