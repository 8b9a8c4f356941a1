"""The pure rules of data subjects' requests: the subject index's keyed hashes, the
normalisation of a requester's e-mail or phone, and when a request is overdue."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from lx_ingest import domain
from lx_ingest.domain import SubjectKind
from lx_schemas import events as ev

KEY = b"k" * 32
SPECS = (
    ev.FieldSpec(name="email", type=ev.FieldType.EMAIL, pii=True),
    ev.FieldSpec(name="work_email", type=ev.FieldType.EMAIL, pii=True),
    ev.FieldSpec(name="phone", type=ev.FieldType.PHONE, pii=True),
    ev.FieldSpec(name="state", type=ev.FieldType.US_STATE),
)


def normalised(data: dict[str, str]) -> domain.NormalisedLead:
    lead, errors = domain.normalise_lead(SPECS, data)
    assert lead is not None, errors
    return lead


def test_a_lead_is_indexed_by_each_email_and_phone_it_holds_as_keyed_hashes() -> None:
    account = uuid.uuid4()
    lead = normalised(
        {"email": "Ada@Example.com", "work_email": "ada@work.example", "phone": "(415) 555-0132"}
    )
    keys = domain.subject_keys(SPECS, lead, account_id=account, hash_key=KEY)
    assert sorted(k.kind for k in keys) == ["email", "email", "phone"]
    assert all(len(k.value_hash) == 32 for k in keys)
    assert not any(b"ada" in k.value_hash or b"4155550132" in k.value_hash for k in keys)
    # What a requester types, in any spelling, finds the same entries.
    for kind, typed in (
        (SubjectKind.EMAIL, " ADA@example.COM"),
        (SubjectKind.PHONE, "415.555.0132"),
    ):
        wanted = domain.subject_hash(KEY, account, kind, domain.normalise_subject(kind, typed))
        assert domain.SubjectKey(kind, wanted) in keys


def test_the_same_consumer_in_two_accounts_or_under_two_keys_is_unrelated() -> None:
    lead = normalised({"email": "ada@example.com"})
    a, b = uuid.uuid4(), uuid.uuid4()
    assert domain.subject_keys(SPECS, lead, account_id=a, hash_key=KEY) != domain.subject_keys(
        SPECS, lead, account_id=b, hash_key=KEY
    )
    assert domain.subject_keys(SPECS, lead, account_id=a, hash_key=KEY) != domain.subject_keys(
        SPECS, lead, account_id=a, hash_key=b"x" * 32
    )
    # And never the dedupe index's hash of the same value: the two cannot be joined.
    rule = ev.DedupeRule(fields=("email",), window_days=1, scope=ev.DedupeScope.ACCOUNT)
    (dedupe,) = domain.dedupe_keys(
        rule, SPECS, lead, campaign_id=uuid.uuid4(), account_id=a, hash_key=KEY
    )
    (subject,) = domain.subject_keys(SPECS, lead, account_id=a, hash_key=KEY)
    assert dedupe.value_hash != subject.value_hash


def test_a_lead_without_email_or_phone_is_not_indexed() -> None:
    lead = normalised({"state": "ca"})
    assert domain.subject_keys(SPECS, lead, account_id=uuid.uuid4(), hash_key=KEY) == []


@pytest.mark.parametrize(
    ("kind", "typed", "code"),
    [
        (SubjectKind.EMAIL, "no-at-sign", "invalid_email"),
        (SubjectKind.PHONE, "12", "invalid_phone"),
    ],
)
def test_a_requester_value_that_is_no_email_or_phone_is_refused_with_its_code(
    kind: SubjectKind, typed: str, code: str
) -> None:
    with pytest.raises(domain.Invalid) as refused:
        domain.normalise_subject(kind, typed)
    assert refused.value.code == code


def test_a_request_is_overdue_past_its_deadline_until_completed() -> None:
    received = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    due = received + domain.PRIVACY_DEADLINE
    assert due == dt.datetime(2025, 1, 31, tzinfo=dt.UTC)
    assert not domain.privacy_overdue("pending", due, due - dt.timedelta(seconds=1))
    assert domain.privacy_overdue("pending", due, due)
    assert not domain.privacy_overdue("completed", due, due + dt.timedelta(days=9))
