"""Admin's access rules, pure: the role -> permission table, who may grant what, tenant
visibility, TOTP codes accepted once per step, and the audit log's hash chain."""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from typing import Any

import pyotp
import pytest
from lx_admin import access, audit
from lx_admin.access import Permission as P
from lx_admin.access import Principal, PrincipalKind, Role

A, B = uuid.uuid4(), uuid.uuid4()

# The table as the product describes it; the code's table must say the same.
# (billing, analytics and ingest's permissions: tests/unit/test_access_tokens.py)
EXPECTED = {
    Role.READ_ONLY: {P.CONFIG_READ, P.REPORTS_READ},
    Role.ANALYST: {P.CONFIG_READ, P.TRACE_READ, P.REPORTS_READ, P.EXPORTS},
    Role.BILLING: {P.CONFIG_READ, P.RETURNS, P.REPORTS_READ, P.BILLING_READ, P.BILLING_WRITE},
    Role.OPERATOR: {
        *(P.CONFIG_READ, P.CONFIG_WRITE, P.BUYER_TOKENS, P.RETURNS, P.TRACE_READ),
        P.REPORTS_READ,
    },
    Role.ADMIN: {
        *(P.CONFIG_READ, P.CONFIG_WRITE, P.BUYER_TOKENS, P.RETURNS, P.TRACE_READ),
        *(P.USERS, P.API_TOKENS, P.AUDIT_READ),
        *(P.REPORTS_READ, P.EXPORTS, P.BILLING_READ, P.BILLING_WRITE, P.PRIVACY),
    },
    Role.OWNER: set(P) - {P.PLATFORM},
    Role.SUPERUSER: set(P),
}


def test_each_role_holds_exactly_the_permissions_of_the_table() -> None:
    assert {r: set(p) for r, p in access.ROLE_PERMISSIONS.items()} == EXPECTED


def test_pii_and_platform_operations_are_held_by_few() -> None:
    assert {r for r, p in access.ROLE_PERMISSIONS.items() if P.PII_READ in p} == {
        Role.OWNER,
        Role.SUPERUSER,
    }
    assert {r for r, p in access.ROLE_PERMISSIONS.items() if P.PLATFORM in p} == {Role.SUPERUSER}


def test_nobody_grants_a_role_above_their_own() -> None:
    assert Role.OWNER not in access.grantable(Role.ADMIN)
    assert Role.SUPERUSER not in access.grantable(Role.OWNER)
    assert access.grantable(Role.OPERATOR) == frozenset()
    for role in Role:
        for granted in access.grantable(role):
            assert access.ROLE_PERMISSIONS[granted] <= access.ROLE_PERMISSIONS[role], (
                role,
                granted,
            )


def test_a_principal_sees_only_its_own_account_and_staff_see_all() -> None:
    owner = Principal(PrincipalKind.USER, "u", Role.OWNER, A)
    assert owner.sees(A) and owner.sees(str(A))
    assert not owner.sees(B) and not owner.sees(None)
    assert access.OPERATOR.sees(A) and access.OPERATOR.sees(B)
    assert access.OPERATOR.actor == "operator_token:operator"


# --- TOTP -------------------------------------------------------------------------------------

SECRET = pyotp.random_base32()
NOW = 1_800_000_015.0  # 15 s into a step
STEP = int(NOW // 30)


def test_a_code_is_accepted_in_its_step_and_one_step_either_side() -> None:
    for step in (STEP - 1, STEP, STEP + 1):
        assert access.totp_step(SECRET, access.totp_code(SECRET, step), NOW, None) == step
    assert access.totp_step(SECRET, access.totp_code(SECRET, STEP - 2), NOW, None) is None
    assert access.totp_step(SECRET, access.totp_code(SECRET, STEP), NOW, None) == STEP
    assert access.totp_code(SECRET, STEP) == pyotp.TOTP(SECRET).at(NOW)


def test_a_code_reused_in_its_step_is_refused_and_so_is_an_older_one() -> None:
    code = access.totp_code(SECRET, STEP)
    used = access.totp_step(SECRET, code, NOW, None)
    assert used == STEP
    assert access.totp_step(SECRET, code, NOW, used) is None  # the replay
    assert access.totp_step(SECRET, code, NOW + 10, used) is None  # still in its step
    older = access.totp_code(SECRET, STEP - 1)
    assert access.totp_step(SECRET, older, NOW, used) is None
    # The next step's code is new, and accepted.
    assert access.totp_step(SECRET, access.totp_code(SECRET, STEP + 1), NOW + 30, used) == STEP + 1


def test_a_wrong_code_is_refused() -> None:
    right = access.totp_code(SECRET, STEP)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    assert access.totp_step(SECRET, wrong, NOW, None) is None


# --- the audit chain ----------------------------------------------------------------------------


def _rows(n: int) -> list[dict[str, Any]]:
    rows, prev = [], audit.GENESIS
    for i in range(n):
        row: dict[str, Any] = {
            "seq": i + 1,
            "audit_id": uuid.uuid4(),
            "at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i),
            "account_id": A,
            "actor": "operator_token:operator",
            "action": "campaign.updated",
            "entity_kind": "campaign",
            "entity_id": uuid.uuid4(),
            "before": {"status": "active", "n": i},
            "after": {"status": "paused", "n": i},
            "prev_hash": prev,
        }
        row["hash"] = audit.link(prev, row)
        prev = row["hash"]
        rows.append(row)
    return rows


def test_an_intact_chain_verifies() -> None:
    assert audit.first_broken(_rows(5)) is None
    assert audit.first_broken([]) is None


@pytest.mark.parametrize("field", ["after", "actor", "at", "account_id"])
def test_a_changed_row_is_named(field: str) -> None:
    rows = _rows(5)
    changed = copy.deepcopy(rows)
    value = changed[2][field]
    changed[2][field] = (
        {"status": "active"}
        if field == "after"
        else value + dt.timedelta(seconds=1)
        if field == "at"
        else uuid.uuid4()
        if field == "account_id"
        else "user:someone-else"
    )
    broken = audit.first_broken(changed)
    assert broken is not None and broken[0] == 3


def test_a_removed_row_or_a_rehashed_one_breaks_the_next_link() -> None:
    rows = _rows(5)
    broken = audit.first_broken(rows[:2] + rows[3:])
    assert broken is not None and broken[0] == 4
    rehashed = copy.deepcopy(rows)
    rehashed[1]["after"] = {"status": "deleted"}
    rehashed[1]["hash"] = audit.link(rehashed[1]["prev_hash"], rehashed[1])
    broken = audit.first_broken(rehashed)
    assert broken is not None and broken[0] == 3


def test_the_audit_shows_no_secret_in_clear() -> None:
    state = {
        "name": "Acme",
        "api_key_sha256": "ab" * 32,
        "signing_secret": {"key_id": "k1", "nonce": "bm9uY2U=", "ciphertext": "Y3Q="},
        "integration": {"auth": {"kind": "basic", "username": "u", "password": "hunter2"}},
    }
    scrubbed = audit.scrub(state)
    assert scrubbed["api_key_sha256"] == audit.SECRET
    assert scrubbed["integration"]["auth"]["password"] == audit.SECRET
    assert "ciphertext" not in str(scrubbed) and "hunter2" not in str(scrubbed)
    assert scrubbed["name"] == "Acme"
