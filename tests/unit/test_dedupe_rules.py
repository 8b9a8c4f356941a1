"""Duplicate checks: the rule's shape, admin's validation of it against the campaign, and
the keyed hashes ingest puts in its index."""

import uuid

import pytest
from lx_admin.domain import CampaignCreate, dedupe_rule_errors
from lx_ingest.domain import (
    DedupeKey,
    dedupe_keys,
    duplicate_detail,
    first_duplicate,
    normalise_lead,
)
from lx_schemas.events import DedupeRule, DedupeScope, FieldSpec, FieldType
from pydantic import ValidationError

FIELDS = [
    FieldSpec(name="email", type=FieldType.EMAIL, required=True, pii=True),
    FieldSpec(name="phone", type=FieldType.PHONE, pii=True),
    FieldSpec(name="vin", type=FieldType.TEXT),
    FieldSpec(name="state", type=FieldType.US_STATE),
    FieldSpec(name="zip", type=FieldType.ZIP),
    FieldSpec(name="homeowner", type=FieldType.BOOLEAN),
    FieldSpec(name="purpose", type=FieldType.ENUM, options=("purchase", "refinance")),
]
KEY = b"k" * 32
CAMPAIGN, OTHER_CAMPAIGN = uuid.uuid4(), uuid.uuid4()
ACCOUNT, OTHER_ACCOUNT = uuid.uuid4(), uuid.uuid4()


def keys_of(
    rule: DedupeRule,
    body: dict[str, str],
    *,
    campaign: uuid.UUID = CAMPAIGN,
    account: uuid.UUID = ACCOUNT,
    key: bytes = KEY,
) -> list[DedupeKey]:
    lead, errors = normalise_lead(FIELDS, body)
    assert lead is not None, errors
    return dedupe_keys(rule, FIELDS, lead, campaign_id=campaign, account_id=account, hash_key=key)


# --- the rule -------------------------------------------------------------------------------


def test_a_rule_names_distinct_fields_and_a_window_of_1_to_365_days() -> None:
    rule = DedupeRule(fields=("email", "phone"), window_days=30)
    assert rule.scope is DedupeScope.CAMPAIGN
    for bad in (
        {"fields": (), "window_days": 30},
        {"fields": ("email", "email"), "window_days": 30},
        {"fields": ("email",), "window_days": 0},
        {"fields": ("email",), "window_days": 366},
        {"fields": ("email",), "window_days": 30, "scope": "buyer"},  # routing's business
    ):
        with pytest.raises(ValidationError):
            DedupeRule.model_validate(bad)


def test_admin_accepts_a_rule_on_email_phone_or_text_fields() -> None:
    rule = DedupeRule(fields=("email", "phone", "vin"), window_days=45, scope="account")
    assert dedupe_rule_errors(FIELDS, rule) == []
    assert dedupe_rule_errors(FIELDS, None) == []
    body = CampaignCreate.model_validate(
        {
            "name": "Auto",
            "vertical": "auto_insurance",
            "fields": [f.model_dump() for f in FIELDS],
            "dedupe": {"fields": ["email"], "window_days": 30},
        }
    )
    assert body.dedupe == DedupeRule(fields=("email",), window_days=30)
    assert CampaignCreate(name="A", vertical="v", fields=FIELDS).dedupe is None


def test_admin_refuses_a_rule_on_an_unknown_field_or_one_most_leads_share() -> None:
    rule = DedupeRule(
        fields=("email", "mail", "state", "zip", "homeowner", "purpose"), window_days=7
    )
    errors = dedupe_rule_errors(FIELDS, rule)
    assert [(e["field"], e["code"]) for e in errors] == [
        ("dedupe.fields.1", "unknown_dedupe_field"),
        ("dedupe.fields.2", "dedupe_field_not_matchable"),
        ("dedupe.fields.3", "dedupe_field_not_matchable"),
        ("dedupe.fields.4", "dedupe_field_not_matchable"),
        ("dedupe.fields.5", "dedupe_field_not_matchable"),
    ]
    assert "'state' is a us_state field" in errors[1]["detail"]


# --- the index keys -------------------------------------------------------------------------

RULE = DedupeRule(fields=("email", "phone", "vin"), window_days=30)


def test_the_same_consumer_in_any_spelling_gets_the_same_keys() -> None:
    a = keys_of(
        RULE, {"email": "Ada@Example.COM", "phone": "(415) 555-0132", "vin": "1HGCM 82633a"}
    )
    b = keys_of(
        RULE, {"email": " ada@example.com ", "phone": "+1 415-555-0132", "vin": "1hgcm   82633A"}
    )
    assert a == b
    assert [k.field for k in a] == ["email", "phone", "vin"]
    other = keys_of(RULE, {"email": "ada2@example.com", "phone": "4155550133", "vin": "X"})
    assert not {k.value_hash for k in a} & {k.value_hash for k in other}


def test_the_index_holds_keyed_hashes_never_the_values() -> None:
    (key,) = keys_of(DedupeRule(fields=("email",), window_days=1), {"email": "ada@example.com"})
    assert len(key.value_hash) == 32  # HMAC-SHA256
    assert b"ada" not in key.value_hash
    (rekeyed,) = keys_of(
        DedupeRule(fields=("email",), window_days=1), {"email": "ada@example.com"}, key=b"x" * 32
    )
    assert rekeyed.value_hash != key.value_hash  # without the secret, no dictionary attack


def test_campaign_scope_is_per_campaign_and_account_scope_spans_the_account() -> None:
    body = {"email": "ada@example.com"}
    per_campaign = DedupeRule(fields=("email",), window_days=30)
    per_account = DedupeRule(fields=("email",), window_days=30, scope="account")

    (c1,) = keys_of(per_campaign, body)
    (c2,) = keys_of(per_campaign, body, campaign=OTHER_CAMPAIGN)
    assert (c1.scope, c1.scope_id) == (DedupeScope.CAMPAIGN, CAMPAIGN)
    assert c1 != c2 and c1.value_hash != c2.value_hash

    (a1,) = keys_of(per_account, body)
    (a2,) = keys_of(per_account, body, campaign=OTHER_CAMPAIGN)
    assert a1 == a2 and (a1.scope, a1.scope_id) == (DedupeScope.ACCOUNT, ACCOUNT)
    # Another customer of the platform: unrelated hashes, so the index cannot link them.
    (other,) = keys_of(per_account, body, account=OTHER_ACCOUNT)
    assert other.value_hash != a1.value_hash


def test_an_empty_field_matches_nothing_and_keys_come_in_lock_order() -> None:
    assert [k.field for k in keys_of(RULE, {"email": "ada@example.com"})] == ["email"]
    reversed_rule = DedupeRule(fields=("vin", "phone", "email"), window_days=30)
    body = {"email": "ada@example.com", "phone": "4155550132", "vin": "v1"}
    assert keys_of(reversed_rule, body) == keys_of(RULE, body) == sorted(keys_of(RULE, body))


def test_a_stale_rule_on_a_missing_or_unmatchable_field_is_ignored() -> None:
    stale = DedupeRule(fields=("gone", "state", "email"), window_days=30)
    keys = keys_of(stale, {"email": "ada@example.com", "state": "CA"})
    assert [k.field for k in keys] == ["email"]


def test_the_answer_names_the_first_matching_field_of_the_rule_and_nothing_else() -> None:
    assert first_duplicate(RULE, {"vin", "phone"}) == "phone"
    assert first_duplicate(RULE, set()) is None
    assert duplicate_detail(RULE, "phone") == (
        "a lead with the same phone was accepted in this campaign within the last 30 days"
    )
    one_day = DedupeRule(fields=("email",), window_days=1, scope="account")
    assert duplicate_detail(one_day, "email").endswith("in this account within the last day")
