import base64
import json
import uuid

import pytest
from cryptography.exceptions import InvalidTag
from lx_platform.crypto import KeyWrapper, new_data_key, open_fields, seal_fields
from lx_platform.logging import REDACTED, redact_pii


def test_sealed_fields_open_only_with_their_own_key_and_id() -> None:
    key, key_id = new_data_key(), uuid.uuid4()
    sealed = seal_fields(key, key_id, {"email": "ada@example.com"})
    assert "ada@example.com" not in sealed.model_dump_json()
    assert open_fields(key, sealed) == {"email": "ada@example.com"}
    with pytest.raises(InvalidTag):
        open_fields(new_data_key(), sealed)
    with pytest.raises(InvalidTag):  # the key id is bound: a ciphertext cannot be moved
        open_fields(key, sealed.model_copy(update={"key_id": uuid.uuid4()}))


def test_data_keys_are_wrapped_under_a_named_kek_and_survive_rotation() -> None:
    old, new = b"o" * 32, b"n" * 32
    wrapped = KeyWrapper({"k1": old}, "k1").wrap(b"d" * 32)
    assert wrapped.startswith("k1:") and base64.b64encode(b"d" * 32).decode() not in wrapped
    rotated = KeyWrapper({"k1": old, "k2": new}, "k2")
    assert rotated.unwrap(wrapped) == b"d" * 32
    assert rotated.wrap(b"d" * 32).startswith("k2:")


def test_logs_redact_pii_keys_and_mask_emails_and_phones_anywhere() -> None:
    event = redact_pii(
        None,
        "info",
        {
            "event": "posted",
            "email": "ada@example.com",
            "lead_id": "L1",
            "detail": "call +1 415 555 0132 or write ada@example.com",
            "fields": {"phone": "4155550132", "state": "CA"},
        },
    )
    text = json.dumps(dict(event))
    assert "ada@example.com" not in text and "555" not in text
    assert event["email"] == REDACTED and event["fields"]["state"] == "CA"
    assert event["lead_id"] == "L1"


def test_logs_keep_ids_and_timestamps_that_look_like_digit_runs() -> None:
    buyer = "00000000-1234-5678-9012-345678901234"
    event = redact_pii(
        None,
        "info",
        {
            "event": "routed",
            "buyer_id": buyer,
            "at": "2026-11-22T10:15:00.123",
            "detail": f"buyer {buyer} closed on 2026-11-22 21:14; call 415-555-0132",
        },
    )
    assert event["buyer_id"] == buyer
    assert event["at"] == "2026-11-22T10:15:00.123"
    assert event["detail"] == f"buyer {buyer} closed on 2026-11-22 21:14; call {REDACTED}"


def test_library_logs_through_the_stdlib_are_masked_too() -> None:
    import io
    import logging

    from lx_platform.logging import RedactingFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("some.library")
    logger.addHandler(handler)
    try:
        logger.error("bad row %s", {"email": "ann@example.com"})
        try:
            raise ValueError("phone +1 415 555 0100 refused")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "ann@example.com" not in text and "555 0100" not in text
    assert "bad row" in text and "ValueError" in text
