"""Access tokens: admin mints, the services verify; every wrong token is refused."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from lx_admin.settings import AdminSettings
from lx_platform import access
from lx_platform.access import (
    AccessTokenError,
    AccessTokenSigner,
    AccessTokenVerifier,
    Permission,
    Principal,
    PrincipalKind,
    Role,
)
from lx_platform.settings import PlatformSettings
from pydantic import SecretStr, ValidationError

P = Permission
ACCOUNT = uuid.uuid4()
ANALYST = Principal(PrincipalKind.API_TOKEN, str(uuid.uuid4()), Role.ANALYST, ACCOUNT)
SIGNING, PUBLIC = access.new_key_pair("k1")
SIGNER = AccessTokenSigner.from_setting(SIGNING)
VERIFIER = AccessTokenVerifier.from_setting(PUBLIC)


def refusal(token: str, audience: str = "billing", verifier: AccessTokenVerifier = VERIFIER) -> str:
    with pytest.raises(AccessTokenError) as refused:
        verifier.verify(token, audience)
    return refused.value.code


def test_a_minted_token_gives_back_its_principal_to_every_service_it_names() -> None:
    minted = SIGNER.mint(ANALYST)
    assert minted.expires_in == access.DEFAULT_TTL_S
    for service in access.AUDIENCES:
        assert VERIFIER.verify(minted.token, service) == ANALYST
    header = jwt.get_unverified_header(minted.token)
    assert header["alg"] == "EdDSA" and header["kid"] == "k1"


def test_staff_tokens_carry_no_account() -> None:
    staff = Principal(PrincipalKind.USER, "u1", Role.SUPERUSER, None)
    assert VERIFIER.verify(SIGNER.mint(staff).token, "ingest") == staff


def test_an_expired_token_is_refused() -> None:
    old = SIGNER.mint(ANALYST, now=time.time() - access.DEFAULT_TTL_S - access.LEEWAY_S - 1)
    assert refusal(old.token) == "token_expired"


def test_a_token_for_another_audience_is_refused() -> None:
    assert refusal(SIGNER.mint(ANALYST).token, audience="delivery") == "invalid_token"


def test_a_tampered_token_is_refused() -> None:
    head, body, signature = SIGNER.mint(ANALYST).token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["role"] = "owner"  # an analyst promoting itself
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert refusal(f"{head}.{forged}.{signature}") == "invalid_token"


def test_a_token_of_another_key_or_an_unknown_kid_is_refused() -> None:
    stranger = AccessTokenSigner("k1", Ed25519PrivateKey.generate())  # same kid, wrong key
    assert refusal(stranger.mint(ANALYST).token) == "invalid_token"
    unknown = AccessTokenSigner("k9", SIGNER.key)
    assert refusal(unknown.mint(ANALYST).token) == "invalid_token"


def test_unsigned_and_hmac_tokens_are_refused() -> None:
    claims = {
        "iss": access.ISSUER,
        "sub": "x",
        "aud": list(access.AUDIENCES),
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
        "kind": "api_token",
        "role": "owner",
        "account_id": str(ACCOUNT),
    }
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": "k1"})
    assert refusal(unsigned) == "invalid_token"
    # An HMAC keyed with the public key: the algorithm-confusion attack.
    public = PUBLIC.split(":", 1)[1].encode()
    hmac = jwt.encode(claims, public, algorithm="HS256", headers={"kid": "k1"})
    assert refusal(hmac) == "invalid_token"


def test_several_keys_verify_during_a_rotation_and_none_means_disabled() -> None:
    new_signing, new_public = access.new_key_pair("k2")
    both = AccessTokenVerifier.from_setting(f"{PUBLIC},{new_public}")
    assert both.verify(SIGNER.mint(ANALYST).token, "analytics") == ANALYST
    fresh = AccessTokenSigner.from_setting(new_signing).mint(ANALYST).token
    assert both.verify(fresh, "analytics") == ANALYST
    assert refusal(fresh) == "invalid_token"  # k2 not yet known to the old verifier
    assert refusal(fresh, verifier=AccessTokenVerifier.from_setting("")) == (
        "access_tokens_disabled"
    )


def test_keys_are_read_as_raw_base64_or_pem_and_bad_ones_fail_at_start() -> None:
    from cryptography.hazmat.primitives import serialization

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    token = AccessTokenSigner.from_setting(f"p1:{pem}").mint(ANALYST).token
    assert AccessTokenVerifier.from_setting(f"p1:{public_pem}").verify(token, "ingest") == ANALYST
    assert PlatformSettings(access_token_public_keys=PUBLIC).access_token_public_keys == PUBLIC
    for bad in ("no-kid", "k1:not base64!", "k1:" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValidationError):
            PlatformSettings(access_token_public_keys=bad)
        with pytest.raises(ValidationError):
            AdminSettings(access_token_signing_key=SecretStr(bad))
    # Nothing configured by default: production mints and accepts no access tokens.
    assert AdminSettings().access_token_signing_key.get_secret_value() == ""
    assert PlatformSettings().access_token_public_keys == ""


def test_a_principal_with_a_role_but_no_account_is_refused() -> None:
    forged = Principal(PrincipalKind.API_TOKEN, "t", Role.OWNER, None)  # admin never mints it
    assert refusal(SIGNER.mint(forged).token) == "invalid_token"


# --- the permission table -----------------------------------------------------------------

EXPECTED_NEW = {
    Role.READ_ONLY: {P.REPORTS_READ},
    Role.ANALYST: {P.REPORTS_READ, P.EXPORTS},
    Role.BILLING: {P.REPORTS_READ, P.BILLING_READ, P.BILLING_WRITE},
    Role.OPERATOR: {P.REPORTS_READ},
    Role.ADMIN: {P.REPORTS_READ, P.EXPORTS, P.BILLING_READ, P.BILLING_WRITE, P.PRIVACY},
    Role.OWNER: {P.REPORTS_READ, P.EXPORTS, P.BILLING_READ, P.BILLING_WRITE, P.PRIVACY},
    Role.SUPERUSER: {P.REPORTS_READ, P.EXPORTS, P.BILLING_READ, P.BILLING_WRITE, P.PRIVACY},
}
NEW = {P.REPORTS_READ, P.EXPORTS, P.BILLING_READ, P.BILLING_WRITE, P.PRIVACY}


def test_the_services_permissions_are_held_as_docs_security_md_says() -> None:
    assert {r: set(p) & NEW for r, p in access.ROLE_PERMISSIONS.items()} == EXPECTED_NEW


def test_admin_re_exports_the_shared_roles() -> None:
    from lx_admin import access as admin_access

    assert admin_access.ROLE_PERMISSIONS is access.ROLE_PERMISSIONS
    assert admin_access.Principal is access.Principal
