"""Buyer integrations, pure: request templates, response rules and captures, hostile
answers, signatures and the circuit breaker."""

from __future__ import annotations

import base64
import json
import urllib.parse
from decimal import Decimal

import pytest
from defusedxml import ElementTree as ET
from lx_integrations import signing
from lx_integrations.breaker import Breakers, BreakerState
from lx_integrations.responses import parse_price, read_bid, read_response
from lx_integrations.templates import TemplateError, TemplateValue, redact_headers, render
from lx_platform.secrets import ConfigKeys
from lx_schemas.integration import (
    Auth,
    AuthKind,
    BodyFormat,
    Captures,
    CircuitBreaker,
    Extract,
    FieldMapping,
    Integration,
    Outcome,
    PingConfig,
    Probe,
    ResponseRule,
    Transform,
)

KEYS = ConfigKeys.parse("t1:" + base64.b64encode(b"k" * 32).decode())
VALUES: dict[str, TemplateValue] = {
    "lead_id": "L-1",
    "delivery_id": "D-1",
    "price": "35.00",
    "email": "Ann@Example.com",
    "phone": "+14155550132",
    "state": "ca",
    "homeowner": True,
    "dob": "1980-07-04",
    "loan_amount": 250000,
    "note": None,
}
MAPPED = (
    FieldMapping(to="contact.email", source="email", transform=Transform.LOWER),
    FieldMapping(to="contact.phone", source="phone", transform=Transform.PHONE_NATIONAL),
    FieldMapping(to="state", source="state", transform=Transform.UPPER),
    FieldMapping(to="owns_home", source="homeowner", transform=Transform.YES_NO),
    FieldMapping(to="dob", source="dob", transform=Transform.DATE_US),
    FieldMapping(to="vendor", static="lx"),
    FieldMapping(to="ref", source="delivery_id"),
    FieldMapping(to="note", source="note"),  # empty: left out
    FieldMapping(to="missing", source="not_a_field"),  # absent: left out
)


# --- templates ------------------------------------------------------------------------------


def test_without_mappings_the_body_is_every_value_as_a_flat_json_object() -> None:
    request = render(Integration(), VALUES, keys=KEYS)
    assert json.loads(request.body) == VALUES
    assert request.content_type == "application/json"
    assert request.headers == {"Content-Type": "application/json"}


def test_json_mappings_rename_transform_nest_and_add_static_values() -> None:
    request = render(Integration(mappings=MAPPED), VALUES, keys=KEYS)
    assert json.loads(request.body) == {
        "contact": {"email": "ann@example.com", "phone": "4155550132"},
        "state": "CA",
        "owns_home": "yes",
        "dob": "07/04/1980",
        "vendor": "lx",
        "ref": "D-1",
    }


def test_a_price_given_as_decimal_stays_an_exact_string_in_json() -> None:
    request = render(Integration(), {"price": Decimal("35.10")}, keys=KEYS)
    assert json.loads(request.body) == {"price": "35.10"}


def test_form_bodies_keep_dotted_names_as_literal_keys() -> None:
    integration = Integration(format=BodyFormat.FORM, mappings=MAPPED)
    request = render(integration, VALUES, keys=KEYS)
    assert request.content_type == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qsl(request.body.decode()) == [
        ("contact.email", "ann@example.com"),
        ("contact.phone", "4155550132"),
        ("state", "CA"),
        ("owns_home", "yes"),
        ("dob", "07/04/1980"),
        ("vendor", "lx"),
        ("ref", "D-1"),
    ]


def test_form_without_mappings_writes_booleans_as_words() -> None:
    body = render(Integration(format=BodyFormat.FORM), {"a": True, "b": 1}, keys=KEYS).body
    assert body == b"a=true&b=1"


def test_xml_nests_under_the_root_and_escapes_text() -> None:
    integration = Integration(format=BodyFormat.XML, xml_root="Lead", mappings=MAPPED)
    values = {**VALUES, "email": "a<b>&'\"@x.com\x00\x1f"}
    request = render(integration, values, keys=KEYS)
    assert request.content_type.startswith("application/xml")
    root = ET.fromstring(request.body)
    assert root.tag == "Lead"
    assert [child.tag for child in root] == [
        "contact",
        "state",
        "owns_home",
        "dob",
        "vendor",
        "ref",
    ]
    assert root.findtext("contact/email") == "a<b>&'\"@x.com"
    assert root.findtext("contact/phone") == "4155550132"
    assert b"<b>" not in request.body  # escaped, not markup
    assert root.findtext("vendor") == "lx"


def test_xml_without_mappings_has_an_element_per_value() -> None:
    request = render(Integration(format=BodyFormat.XML), {"state": "CA", "x": True}, keys=KEYS)
    root = ET.fromstring(request.body)
    assert (root.tag, root.findtext("state"), root.findtext("x")) == ("lead", "CA", "true")


@pytest.mark.parametrize(
    ("transform", "value", "expected"),
    [
        (Transform.DIGITS, "+1 (415) 555-0100", "14155550100"),
        (Transform.PHONE_NATIONAL, "+14155550100", "4155550100"),
        (Transform.YES_NO, False, "no"),
        (Transform.ONE_ZERO, True, "1"),
        (Transform.ONE_ZERO, "false", "0"),
        (Transform.DATE_US, "2000-01-31", "01/31/2000"),
        (Transform.UPPER, "ny", "NY"),
        (Transform.LOWER, "A@B.COM", "a@b.com"),
    ],
)
def test_transforms(transform: Transform, value: object, expected: str) -> None:
    integration = Integration(mappings=(FieldMapping(to="v", source="v", transform=transform),))
    body = render(integration, {"v": value}, keys=KEYS).body  # type: ignore[dict-item]
    assert json.loads(body) == {"v": expected}


@pytest.mark.parametrize(
    ("transform", "value"),
    [
        (Transform.DATE_US, "not a date"),
        (Transform.YES_NO, "maybe"),
        (Transform.PHONE_NATIONAL, "12"),
    ],
)
def test_a_transform_that_does_not_fit_the_value_is_an_error_not_a_guess(
    transform: Transform, value: str
) -> None:
    integration = Integration(mappings=(FieldMapping(to="v", source="v", transform=transform),))
    with pytest.raises(TemplateError, match="v:"):
        render(integration, {"v": value}, keys=KEYS)


def test_a_name_both_value_and_object_is_refused() -> None:
    mappings = (FieldMapping(to="a", static="1"), FieldMapping(to="a.b", static="2"))
    for fmt in (BodyFormat.JSON, BodyFormat.XML):
        with pytest.raises(TemplateError):
            render(Integration(format=fmt, mappings=mappings), {}, keys=KEYS)


def test_auth_headers_come_from_the_sealed_secret() -> None:
    basic = Auth(kind=AuthKind.BASIC, username="acme", secret=KEYS.seal("s3cret"))
    headers = render(Integration(auth=basic, headers={"X-Vendor": "lx"}), {}, keys=KEYS).headers
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"acme:s3cret").decode()
    assert headers["X-Vendor"] == "lx"

    bearer = Auth(kind=AuthKind.BEARER, secret=KEYS.seal("tok"))
    assert render(Integration(auth=bearer), {}, keys=KEYS).headers["Authorization"] == "Bearer tok"

    custom = Auth(kind=AuthKind.HEADER, header_name="X-Api-Key", secret=KEYS.seal("k-1"))
    integration = Integration(auth=custom)
    headers = render(integration, {}, keys=KEYS).headers
    assert headers["X-Api-Key"] == "k-1"
    assert redact_headers(headers, integration)["X-Api-Key"] == "[redacted]"


def test_a_secret_sealed_under_another_key_does_not_render() -> None:
    other = ConfigKeys.parse("t9:" + base64.b64encode(b"z" * 32).decode())
    auth = Auth(kind=AuthKind.BEARER, secret=other.seal("tok"))
    with pytest.raises(TemplateError, match="auth secret"):
        render(Integration(auth=auth), {}, keys=KEYS)


# --- responses ------------------------------------------------------------------------------

JSON = "application/json"


def test_default_rules_accept_a_2xx_saying_accepted_and_read_the_reason() -> None:
    r = read_response(Integration(), 200, b'{"status":"Accepted"}', JSON)
    assert (r.outcome, r.reason, r.retryable) == (Outcome.ACCEPTED, None, False)
    r = read_response(Integration(), 200, b'{"status":"no","reason":"dupe"}', JSON)
    assert (r.outcome, r.reason) == (Outcome.REJECTED, "dupe")


@pytest.mark.parametrize(
    ("status", "outcome", "retryable", "reason"),
    [
        (200, Outcome.REJECTED, False, "rejected by the buyer"),
        (302, Outcome.ERROR, False, "redirect_not_followed: http_302"),
        (422, Outcome.REJECTED, False, "http_422"),
        (503, Outcome.ERROR, True, "http_503"),
    ],
)
def test_when_no_rule_matches_the_status_decides(
    status: int, outcome: Outcome, retryable: bool, reason: str
) -> None:
    r = read_response(Integration(), status, b"OK", "text/plain")
    assert (r.outcome, r.retryable, r.reason) == (outcome, retryable, reason)


def test_a_redirect_is_never_the_buyers_word() -> None:
    r = read_response(Integration(), 301, b'{"status":"accepted","reason":"moved"}', JSON)
    assert (r.outcome, r.reason) == (Outcome.ERROR, "redirect_not_followed: http_301")


def rule(kind: Extract, outcome: Outcome, *equals: str, **operand: str) -> ResponseRule:
    return ResponseRule(probe=Probe(kind=kind, **operand), equals=equals, outcome=outcome)


def test_rules_are_tried_in_order_and_the_first_match_decides() -> None:
    integration = Integration(
        rules=(
            rule(Extract.JSON_PATH, Outcome.REJECTED, "dup", path="$.result.code"),
            rule(Extract.JSON_PATH, Outcome.ACCEPTED, "ok", "sold", path="$.result.status"),
            rule(Extract.STATUS, Outcome.ERROR, "2xx"),
        )
    )
    body = b'{"result":{"status":"SOLD","code":"dup"}}'
    assert read_response(integration, 200, body, JSON).outcome is Outcome.REJECTED
    body = b'{"result":{"status":"sold"}}'
    assert read_response(integration, 201, body, JSON).outcome is Outcome.ACCEPTED
    assert read_response(integration, 200, b"{}", JSON).outcome is Outcome.ERROR


def test_an_accepting_rule_never_turns_a_non_2xx_into_a_sale() -> None:
    integration = Integration(rules=(rule(Extract.REGEX, Outcome.ACCEPTED, pattern="ok"),))
    r = read_response(integration, 500, b"ok", "text/plain")
    assert (r.outcome, r.retryable) == (Outcome.ERROR, True)


def test_xml_path_regex_and_status_probes() -> None:
    integration = Integration(
        rules=(rule(Extract.XML_PATH, Outcome.ACCEPTED, "success", path="./result/status"),),
        captures=Captures(
            price=Probe(kind=Extract.XML_PATH, path="./result/price"),
            buyer_lead_id=Probe(kind=Extract.REGEX, pattern=r"<id>(\w+)</id>"),
            reason=Probe(kind=Extract.XML_PATH, path="./result/message"),
        ),
    )
    body = b"<r><result><status> Success </status><price>41.50</price><id>B77</id></result></r>"
    r = read_response(integration, 200, body, "application/xml")
    assert (r.outcome, r.price, r.buyer_lead_id, r.reason) == (
        Outcome.ACCEPTED,
        Decimal("41.50"),
        "B77",
        None,
    )
    body = b"<r><result><status>fail</status><message>out of area</message></result></r>"
    r = read_response(integration, 200, body, "application/xml")
    assert (r.outcome, r.reason) == (Outcome.REJECTED, "out of area")
    status_rule = Integration(rules=(rule(Extract.STATUS, Outcome.ACCEPTED, "201"),))
    assert read_response(status_rule, 201, b"", None).outcome is Outcome.ACCEPTED
    assert read_response(status_rule, 200, b"", None).outcome is Outcome.REJECTED


def test_json_paths_follow_rfc_9535_bracket_notation_too() -> None:
    integration = Integration(
        rules=(rule(Extract.JSON_PATH, Outcome.ACCEPTED, "true", path='$["ok"]'),),
        captures=Captures(
            price=Probe(kind=Extract.JSON_PATH, path="$.bid.amount"),
            buyer_lead_id=Probe(kind=Extract.JSON_PATH, path="$.ids[0]"),
        ),
    )
    body = b'{"ok": true, "bid": {"amount": 12.30}, "ids": [9001, 9002]}'
    r = read_response(integration, 200, body, JSON)
    assert (r.outcome, r.price, r.buyer_lead_id) == (Outcome.ACCEPTED, Decimal("12.30"), "9001")


@pytest.mark.parametrize(
    ("text", "price"),
    [("12.5", Decimal("12.50")), ("$7", Decimal("7.00")), ("0", Decimal("0.00"))],
)
def test_prices_that_parse(text: str, price: Decimal) -> None:
    assert parse_price(text) == (price, None)


@pytest.mark.parametrize("text", ["-1", "abc", "1.234", "NaN", "Infinity", "1e20", ""])
def test_prices_that_do_not_parse_give_no_price_and_say_why(text: str) -> None:
    price, why = parse_price(text)
    assert price is None
    assert why is not None and "price" in why


def test_an_unparsable_captured_price_is_no_price_and_the_reason_says_so() -> None:
    integration = Integration(captures=Captures(price=Probe(kind=Extract.JSON_PATH, path="$.p")))
    r = read_response(integration, 200, b'{"status":"accepted","p":"12.345"}', JSON)
    assert (r.outcome, r.price) == (Outcome.ACCEPTED, None)
    assert r.reason == "price '12.345' has more than 2 decimals"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<r><status>&lol3;</status></r>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<r><status>&xxe;</status></r>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL], ids=["entity_expansion", "xxe"])
def test_hostile_xml_is_refused_as_an_error_never_parsed(body: bytes) -> None:
    integration = Integration(
        rules=(rule(Extract.XML_PATH, Outcome.ACCEPTED, path="./status"),),
    )
    r = read_response(integration, 200, body, "application/xml")
    assert (r.outcome, r.retryable, r.price) == (Outcome.ERROR, False, None)
    assert r.reason is not None and r.reason.startswith("hostile_xml")


def test_a_catastrophic_regex_is_bounded_by_its_timeout() -> None:
    integration = Integration(rules=(rule(Extract.REGEX, Outcome.ACCEPTED, pattern=r"(a|aa)+$"),))
    body = b"a" * 200 + b"!"  # exponential backtracking (the regex module defuses (a+)+)
    # Unbounded, this search would outlast the universe; it stops at its timeout.
    r = read_response(integration, 200, body, "text/plain")
    assert (r.outcome, r.retryable) == (Outcome.ERROR, False)
    assert r.reason is not None and r.reason.startswith("regex_timeout")


def test_deeply_nested_json_is_read_as_no_json() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    r = read_response(Integration(), 200, body, JSON)
    assert r.outcome is Outcome.REJECTED


# --- bids -----------------------------------------------------------------------------------

PING = PingConfig(
    url="https://buyer.example/ping",
    bid_price=Probe(kind=Extract.JSON_PATH, path="$.bid"),
    bid_ref=Probe(kind=Extract.JSON_PATH, path="$.ref"),
)


def test_a_bid_is_a_2xx_with_a_positive_price() -> None:
    b = read_bid(PING, 200, b'{"bid": "18.25", "ref": "R-9"}', JSON)
    assert (b.price, b.bid_ref, b.reason) == (Decimal("18.25"), "R-9", None)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b'{"bid": 10}', "http_500"),
        (200, b"{}", "no price in the bid"),
        (200, b'{"bid": 0}', "bid of zero"),
        (200, b'{"bid": "ten"}', "price 'ten' is not an amount"),
        (204, b"", "no price in the bid"),
    ],
)
def test_no_bid(status: int, body: bytes, reason: str) -> None:
    b = read_bid(PING, status, body, JSON)
    assert (b.price, b.reason) == (None, reason)


def test_bid_rules_that_do_not_accept_mean_no_bid() -> None:
    ping = PING.model_copy(
        update={
            "integration": Integration(
                rules=(rule(Extract.JSON_PATH, Outcome.ACCEPTED, "bid", path="$.decision"),)
            )
        }
    )
    assert read_bid(ping, 200, b'{"decision":"bid","bid":5}', JSON).price == Decimal("5.00")
    b = read_bid(ping, 200, b'{"decision":"pass","bid":5,"reason":"full"}', JSON)
    assert (b.price, b.reason) == (None, "full")


# --- signatures -----------------------------------------------------------------------------

SECRET = "whsec_" + "x" * 32


def test_signature_is_hmac_sha256_over_timestamp_delivery_id_and_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1700000000.D-1.{}", hashlib.sha256).hexdigest()
    assert signing.sign(SECRET, "D-1", 1_700_000_000, b"{}") == f"v1={expected}"


def test_verify_accepts_a_fresh_signature_and_refuses_tampering_or_age() -> None:
    now = 1_700_000_000
    headers = signing.signature_headers(SECRET, "D-1", b'{"a":1}', now=now)
    ts, sig = headers[signing.TIMESTAMP_HEADER], headers[signing.SIGNATURE_HEADER]
    assert signing.verify(SECRET, "D-1", ts, b'{"a":1}', sig, now=now + 10)
    assert not signing.verify(SECRET, "D-1", ts, b'{"a":2}', sig, now=now)  # body
    assert not signing.verify(SECRET, "D-2", ts, b'{"a":1}', sig, now=now)  # delivery id
    assert not signing.verify("other", "D-1", ts, b'{"a":1}', sig, now=now)  # secret
    assert not signing.verify(SECRET, "D-1", ts, b'{"a":1}', sig, now=now + 301)  # too old
    assert not signing.verify(SECRET, "D-1", ts, b'{"a":1}', sig, now=now - 301)  # future
    assert not signing.verify(SECRET, "D-1", "soon", b'{"a":1}', sig, now=now)
    # While a secret rotates, any one of several signatures will do.
    both = f"{signing.sign('old', 'D-1', now, b'{}')} {signing.sign(SECRET, 'D-1', now, b'{}')}"
    assert signing.verify(SECRET, "D-1", now, b"{}", both, now=now)


# --- circuit breaker ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_back_once() -> None:
    clock, changes = Clock(), []
    breakers = Breakers(clock=clock, on_change=lambda k, a, b: changes.append((k, a, b)))
    config = CircuitBreaker(failures=3, cool_down_s=30)
    S = BreakerState

    breakers.failure("b", config)
    breakers.failure("b", config)
    breakers.success("b")  # an answer resets the count
    for _ in range(2):
        breakers.failure("b", config)
    assert breakers.allow("b", config)
    breakers.failure("b", config)  # third in a row
    assert breakers.state("b", config) is S.OPEN
    assert not breakers.allow("b", config)
    assert breakers.allow("other", config)  # per buyer

    clock.now += 29
    assert not breakers.allow("b", config)
    clock.now += 1
    assert breakers.state("b", config) is S.HALF_OPEN
    assert breakers.allow("b", config)  # the one probe
    assert not breakers.allow("b", config)  # and no other while it runs
    breakers.failure("b", config)  # probe failed: open again, for a new cool-down
    assert breakers.state("b", config) is S.OPEN
    clock.now += 30
    assert breakers.allow("b", config)
    breakers.success("b")
    assert breakers.state("b", config) is S.CLOSED
    assert breakers.allow("b", config) and breakers.allow("b", config)
    assert changes == [
        ("b", S.CLOSED, S.OPEN),
        ("b", S.OPEN, S.HALF_OPEN),
        ("b", S.HALF_OPEN, S.OPEN),
        ("b", S.OPEN, S.HALF_OPEN),
        ("b", S.HALF_OPEN, S.CLOSED),
    ]


def test_a_probe_that_was_not_sent_frees_the_half_open_slot() -> None:
    clock = Clock()
    breakers = Breakers(clock=clock)
    config = CircuitBreaker(failures=1, cool_down_s=5)
    breakers.failure("b", config)
    clock.now += 5
    assert breakers.allow("b", config)
    breakers.release("b")
    assert breakers.allow("b", config)
    # A probe whose verdict never comes is replaced after another cool-down.
    assert not breakers.allow("b", config)
    clock.now += 5
    assert breakers.allow("b", config)
