from decimal import Decimal

import pytest
from lx_delivery.domain import (
    BuyerHealth,
    ReasonClass,
    Verdict,
    backoff_s,
    buyer_health,
    final_code,
    priced,
    reason_class,
    request_values,
    stored_request,
    verdict_of,
)
from lx_integrations.responses import read_response
from lx_schemas.events import DeliveryResult, RejectionCode
from lx_schemas.integration import Integration

DEFAULT = Integration()
FLOOR = Decimal("20.00")


def read_answer(status: int, body: bytes, integration: Integration = DEFAULT) -> Verdict:
    return verdict_of(read_response(integration, status, body, "application/json"), status)


def test_only_a_2xx_that_says_accepted_is_a_sale() -> None:
    assert read_answer(200, b'{"status":"Accepted"}').result is DeliveryResult.ACCEPTED
    v = read_answer(200, b'{"status":"rejected","reason":"duplicate"}')
    assert (v.result, v.reason, v.retryable, v.reason_code) == (
        DeliveryResult.REJECTED,
        "duplicate",
        False,
        RejectionCode.BUYER_REJECTED,
    )
    assert read_answer(200, b"OK").result is DeliveryResult.REJECTED


def test_server_errors_are_retryable_and_client_errors_are_rejections() -> None:
    v = read_answer(503, b"")
    assert (v.result, v.retryable, v.reason_code) == (
        DeliveryResult.ERROR,
        True,
        RejectionCode.BUYER_ERROR,
    )
    v = read_answer(400, b'{"reason":"bad zip"}')
    assert (v.result, v.reason) == (DeliveryResult.REJECTED, "bad zip")


def test_a_redirect_is_a_final_error_never_the_buyers_word() -> None:
    for status in (301, 302, 303, 307, 308):
        v = read_answer(status, b'{"status":"accepted","reason":"moved"}')
        assert (v.result, v.reason, v.retryable) == (
            DeliveryResult.ERROR,
            f"redirect_not_followed: http_{status}",
            False,
        )


def accepted(price: str | None) -> Verdict:
    named = Decimal(price) if price is not None else None
    return Verdict(DeliveryResult.ACCEPTED, None, False, None, named, "B-1")


def test_a_fixed_price_buyer_pays_the_routed_price_whatever_it_says() -> None:
    v = priced(accepted("1.00"), routed_price=FLOOR, from_response=False)
    assert (v.result, v.price, v.buyer_lead_id) == (DeliveryResult.ACCEPTED, FLOOR, "B-1")


def test_a_buyer_priced_by_its_answer_pays_what_it_names_at_or_above_the_floor() -> None:
    v = priced(accepted("20.00"), routed_price=FLOOR, from_response=True)
    assert (v.result, v.price) == (DeliveryResult.ACCEPTED, Decimal("20.00"))
    v = priced(accepted("31.40"), routed_price=FLOOR, from_response=True)
    assert v.price == Decimal("31.40")


@pytest.mark.parametrize(
    ("price", "reason"),
    [("19.99", "price 19.99 is below the floor 20.00"), (None, "no price in the answer")],
)
def test_below_the_floor_or_no_price_is_a_rejection_with_its_code(
    price: str | None, reason: str
) -> None:
    v = priced(accepted(price), routed_price=FLOOR, from_response=True)
    assert (v.result, v.reason, v.reason_code, v.price, v.retryable) == (
        DeliveryResult.REJECTED,
        reason,
        RejectionCode.PRICE_BELOW_FLOOR,
        None,
        False,
    )


def test_a_rejection_is_not_repriced() -> None:
    v = read_answer(200, b'{"status":"no"}')
    assert priced(v, routed_price=FLOOR, from_response=True) == v


def test_reason_codes_of_final_tries() -> None:
    R = DeliveryResult
    assert final_code(R.ACCEPTED, accepted("1")) is None
    unresolved = Verdict(R.ERROR, "outcome_unknown_unresolved: ReadTimeout", False)
    assert final_code(R.ERROR, unresolved) is RejectionCode.OUTCOME_UNKNOWN_UNRESOLVED
    shredded = Verdict(R.ERROR, "pii_shredded", False)
    assert final_code(R.ERROR, shredded) is RejectionCode.BUYER_ERROR
    circuit = Verdict(R.ERROR, "circuit_open", False, RejectionCode.CIRCUIT_OPEN)
    assert final_code(R.ERROR, circuit) is RejectionCode.CIRCUIT_OPEN


def test_what_the_breaker_learns_from_a_try() -> None:
    R = DeliveryResult
    assert buyer_health(read_answer(200, b'{"status":"accepted"}'), 200) is BuyerHealth.UP
    assert buyer_health(read_answer(422, b""), 422) is BuyerHealth.UP
    assert buyer_health(read_answer(500, b""), 500) is BuyerHealth.DOWN
    assert buyer_health(Verdict(R.OUTCOME_UNKNOWN, "ReadTimeout", True), None) is BuyerHealth.DOWN
    connect = Verdict(R.ERROR, "connect_failed: ConnectError", True)
    assert buyer_health(connect, None) is BuyerHealth.DOWN
    assert buyer_health(read_answer(302, b""), 302) is BuyerHealth.UNKNOWN
    egress = Verdict(R.ERROR, "egress_refused: loopback 127.0.0.1", False)
    assert buyer_health(egress, None) is BuyerHealth.UNKNOWN


def test_specials_win_over_lead_fields_of_the_same_name() -> None:
    values = request_values(
        lead_id="L",
        delivery_id="D",
        price=Decimal("35.00"),
        fields={"state": "CA", "price": "999"},
        pii={"email": "a@b.c"},
        bid_ref="R-1",
    )
    assert values == {
        "state": "CA",
        "price": "35.00",
        "email": "a@b.c",
        "lead_id": "L",
        "delivery_id": "D",
        "bid_ref": "R-1",
    }


def test_the_stored_request_is_bounded() -> None:
    import json

    doc = json.loads(stored_request("https://b.example", {"A": "1"}, b"x" * 5000, 1024))
    assert (len(doc["body"]), doc["body_truncated"]) == (1024, 5000)
    doc = json.loads(stored_request("https://b.example", {}, b"{}", 1024))
    assert "body_truncated" not in doc


def test_backoff_grows_and_stays_within_its_bound() -> None:
    for n in range(1, 6):
        assert 0 <= backoff_s(n, 0.5) <= 0.5 * 2 ** (n - 1)


# What each way a try can end looks like (as the worker and read_answer build it), and the
# bounded class it is counted under in lx_delivery_outcomes_total.
R = DeliveryResult
TRIES: list[tuple[str, Verdict, int | None, ReasonClass]] = [
    ("accepted", read_answer(200, b'{"status":"accepted"}'), 200, ReasonClass.ACCEPTED),
    (
        "declined in a 2xx",
        read_answer(200, b'{"status":"rejected","reason":"dupe of 7f3a"}'),
        200,
        ReasonClass.REJECTED,
    ),
    ("2xx without the field", read_answer(200, b"OK"), 200, ReasonClass.REJECTED),
    ("redirect", read_answer(302, b""), 302, ReasonClass.HTTP_3XX),
    (
        "client error",
        read_answer(422, b'{"reason":"bad zip 94105"}'),
        422,
        ReasonClass.HTTP_4XX,
    ),
    ("server error", read_answer(503, b""), 503, ReasonClass.HTTP_5XX),
    (
        "accepted below the floor",
        priced(read_answer(200, b'{"status":"accepted"}'), routed_price=FLOOR, from_response=True),
        200,
        ReasonClass.PRICE_BELOW_FLOOR,
    ),
    (
        "circuit open",
        Verdict(R.ERROR, "circuit_open", False, RejectionCode.CIRCUIT_OPEN),
        None,
        ReasonClass.CIRCUIT_OPEN,
    ),
    (
        "template error",
        Verdict(R.ERROR, "template_error: dob: date_us needs a date", False),
        None,
        ReasonClass.NOT_SENT,
    ),
    ("refused", Verdict(R.ERROR, "connect_failed: ConnectError", True), None, ReasonClass.CONNECT),
    (
        "endpoint on a private address",
        Verdict(R.ERROR, "egress_refused: cloud_metadata 169.254.169.254", False),
        None,
        ReasonClass.EGRESS_REFUSED,
    ),
    (
        "connect timeout",
        Verdict(R.ERROR, "connect_failed: ConnectTimeout", True),
        None,
        ReasonClass.CONNECT,
    ),
    ("read timeout", Verdict(R.OUTCOME_UNKNOWN, "ReadTimeout", True), None, ReasonClass.TIMEOUT),
    ("write timeout", Verdict(R.OUTCOME_UNKNOWN, "WriteTimeout", True), None, ReasonClass.TIMEOUT),
    (
        "trickled past the deadline",
        Verdict(R.OUTCOME_UNKNOWN, "deadline_exceeded", True),
        200,
        ReasonClass.TIMEOUT,
    ),
    (
        "connection dropped",
        Verdict(R.OUTCOME_UNKNOWN, "RemoteProtocolError", True),
        None,
        ReasonClass.OUTCOME_UNKNOWN,
    ),
    (
        "crash after send",
        Verdict(R.OUTCOME_UNKNOWN, "interrupted_after_send", True),
        None,
        ReasonClass.OUTCOME_UNKNOWN,
    ),
    (
        "unknown, out of tries",
        Verdict(R.ERROR, "outcome_unknown_unresolved: ReadError", False),
        None,
        ReasonClass.OUTCOME_UNKNOWN,
    ),
    (
        "huge answer",
        Verdict(R.ERROR, "response_too_large", False),
        200,
        ReasonClass.RESPONSE_TOO_LARGE,
    ),
    ("buyer paused", Verdict(R.ERROR, "buyer_paused", False), None, ReasonClass.NOT_SENT),
    ("buyer unknown", Verdict(R.ERROR, "buyer_unknown", False), None, ReasonClass.NOT_SENT),
    ("pii shredded", Verdict(R.ERROR, "pii_shredded", False), None, ReasonClass.NOT_SENT),
    (
        "other transport",
        Verdict(R.ERROR, "transport: UnsupportedProtocol", True),
        None,
        ReasonClass.OTHER,
    ),
]


@pytest.mark.parametrize(
    ("verdict", "status", "expected"), [t[1:] for t in TRIES], ids=[t[0] for t in TRIES]
)
def test_each_way_a_try_ends_is_counted_under_its_reason_class(
    verdict: Verdict, status: int | None, expected: ReasonClass
) -> None:
    assert reason_class(verdict.result, verdict.reason, status, verdict.reason_code) is expected


def test_a_buyers_free_text_reason_never_becomes_a_label_value() -> None:
    texts = ["", "x" * 500, "duplicate lead", "http_503", "Timeout", "ünïcode ✓", "connect"]
    for result in DeliveryResult:
        for text in texts:
            for status in (None, 200, 204, 301, 404, 500, 599):
                assert reason_class(result, text, status) in set(ReasonClass)


def test_a_buyers_reason_echoing_contact_details_is_masked_before_it_is_kept() -> None:
    body = b'{"status": "rejected", "reason": "we already have ann@example.com, 415-555-0100"}'
    got = read_answer(200, body)
    assert got.result is DeliveryResult.REJECTED
    assert got.reason == "we already have [redacted], [redacted]"
