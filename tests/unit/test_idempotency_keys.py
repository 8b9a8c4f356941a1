"""Idempotency-Key: what a key may look like, what "the same request" means, what a key
seen before gets, and which answers are remembered."""

import datetime as dt

import pytest
from lx_ingest.domain import (
    KeyVerdict,
    StoredKey,
    judge_key,
    remembers,
    request_fingerprint,
    valid_idempotency_key,
)
from lx_ingest.settings import IngestSettings
from pydantic import ValidationError

KEY = b"k" * 32
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(hours=24)
BODY = {"email": "ada@example.com", "state": "CA", "loan_amount": 250000}


def test_a_key_is_1_to_255_printable_characters_without_spaces() -> None:
    for good in ("a", "3f7a0c2e-6a1b-4a43-9c1e-2f5a8b7c9d10", "order#42/retry", "x" * 255):
        assert valid_idempotency_key(good), good
    for bad in ("", " ", "two words", "x" * 256, "tab\there", "é"):
        assert not valid_idempotency_key(bad), bad


def test_the_same_json_object_is_the_same_request_whatever_its_key_order() -> None:
    reordered = {"loan_amount": 250000, "state": "CA", "email": "ada@example.com"}
    assert request_fingerprint(KEY, BODY) == request_fingerprint(KEY, reordered)
    assert request_fingerprint(KEY, BODY) != request_fingerprint(KEY, {**BODY, "state": "NY"})
    assert request_fingerprint(KEY, BODY) != request_fingerprint(b"x" * 32, BODY)  # keyed
    assert b"ada" not in request_fingerprint(KEY, BODY)


def stored(**changes: object) -> StoredKey:
    base: dict[str, object] = {
        "fingerprint": request_fingerprint(KEY, BODY),
        "created_at": NOW - dt.timedelta(minutes=1),
        "lease_until": NOW + dt.timedelta(seconds=30),
        "status_code": None,
        "lead_id": None,
    }
    return StoredKey(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("row", "body", "verdict"),
    [
        (stored(), BODY, KeyVerdict.IN_FLIGHT),
        (stored(status_code=202, lease_until=None), BODY, KeyVerdict.REPLAY),
        (stored(status_code=422, lease_until=None), BODY, KeyVerdict.REPLAY),
        (stored(status_code=202, lease_until=None), {**BODY, "state": "NY"}, KeyVerdict.REUSED),
        # Another body is refused even while the first request still runs.
        (stored(), {**BODY, "state": "NY"}, KeyVerdict.REUSED),
        # The request holding the key died (its lease ran out): a retry continues.
        (stored(lease_until=NOW - dt.timedelta(seconds=1)), BODY, KeyVerdict.TAKE_OVER),
        # Expired keys count as unknown, whatever they held and whatever the body.
        (stored(created_at=NOW - TTL, status_code=202), BODY, KeyVerdict.NEW),
        (stored(created_at=NOW - TTL), {"other": "body"}, KeyVerdict.NEW),
    ],
)
def test_a_key_seen_before(row: StoredKey, body: dict[str, object], verdict: KeyVerdict) -> None:
    assert judge_key(row, request_fingerprint(KEY, body), now=NOW, ttl=TTL) is verdict


def test_answers_that_decide_the_lead_are_remembered_and_5xx_are_not() -> None:
    assert remembers(202) and remembers(422)
    assert not remembers(500) and not remembers(503)


def test_keys_are_kept_at_least_24_hours_and_the_hash_key_is_a_real_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert IngestSettings().idempotency_ttl_hours == 24
    with pytest.raises(ValidationError, match="greater than or equal to 24"):
        IngestSettings(idempotency_ttl_hours=23)
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        IngestSettings(hash_key="short")
    monkeypatch.setenv("LX_PLATFORM_ENVIRONMENT", "production")
    monkeypatch.setenv("LX_PLATFORM_INTERNAL_TOKEN", "a-real-long-secret-1")
    monkeypatch.setenv("LX_PLATFORM_OPERATOR_TOKEN", "a-real-long-secret-2")
    with pytest.raises(ValidationError, match="LX_INGEST_HASH_KEY"):
        IngestSettings()
    monkeypatch.setenv("LX_INGEST_HASH_KEY", "a-real-hash-key-of-at-least-32-bytes")
    assert IngestSettings().hash_key.get_secret_value().startswith("a-real")
