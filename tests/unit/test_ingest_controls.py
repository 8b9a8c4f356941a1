"""Source controls' pure decisions: who the client is, how a rate becomes a window,
which cap period a moment falls in and how long to wait; and pings without PII."""

import datetime as dt
import ipaddress
import uuid

import pytest
from lx_ingest import domain
from lx_ingest.ratelimit import SourceRateLimiter
from lx_schemas.events import FieldSpec, FieldType, RejectionCode
from lx_schemas.rules import SourceCapPeriod

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
UTC = dt.UTC


# --- the client's address -------------------------------------------------------------------


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() -> None:
    assert domain.client_address("198.51.100.7", ["203.0.113.1"], ()) == "198.51.100.7"


def test_a_peer_that_is_not_a_trusted_proxy_cannot_forward_for_anyone() -> None:
    assert domain.client_address("198.51.100.7", ["203.0.113.1"], PROXIES) == "198.51.100.7"


def test_behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() -> None:
    # The client wrote 1.1.1.1 itself; our balancer (10.0.0.2) appended the real peer.
    header = ["1.1.1.1, 203.0.113.9, 10.0.0.2"]
    assert domain.client_address("10.0.0.1", header, PROXIES) == "203.0.113.9"
    # Several header lines count as one list, in order.
    assert domain.client_address("10.0.0.1", ["1.1.1.1", "203.0.113.9"], PROXIES) == ("203.0.113.9")


def test_a_forwarded_address_is_normalised_and_garbage_is_nobody() -> None:
    assert domain.client_address("fd00::1", ["2001:0db8::0001"], PROXIES) == "2001:db8::1"
    assert domain.client_address("10.0.0.1", ["not-an-address"], PROXIES) is None
    assert domain.client_address("10.0.0.1", [], PROXIES) == "10.0.0.1"
    assert domain.client_address(None, ["203.0.113.9"], PROXIES) is None


# --- rates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "amount", "seconds"),
    [
        (10, None, 10, 1),  # 10 a second
        (10, 20, 20, 2),  # a burst of 20, then 10 a second on average
        (0.5, None, 1, 2),  # one every two seconds
        (2.5, None, 3, 2),  # rounded so the average stays at or below the rate
        (3, 5, 5, 2),
    ],
)
def test_a_rate_with_a_burst_becomes_a_moving_window(
    rate: float, burst: int | None, amount: int, seconds: int
) -> None:
    window = domain.rate_window(rate, burst)
    assert (window.amount, window.seconds) == (amount, seconds)
    assert window.amount / window.seconds <= rate


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (59.5, 60)]
)
def test_retry_after_is_whole_seconds_rounded_up_and_never_zero(
    seconds: float, header: int
) -> None:
    assert domain.retry_after_s(seconds) == header


async def test_the_limiter_admits_the_burst_then_answers_how_long_to_wait() -> None:
    limiter = SourceRateLimiter()
    source, other = uuid.uuid4(), uuid.uuid4()
    answers = [await limiter.admit("post", source, 1.0, 3) for _ in range(4)]
    assert answers[:3] == [None, None, None]
    assert answers[3] is not None and 1 <= answers[3] <= 3
    # Per source and per kind; no rate set means no limit.
    assert await limiter.admit("post", other, 1.0, 3) is None
    assert await limiter.admit("ping", source, 1.0, 3) is None
    assert all([await limiter.admit("post", source, None, None) is None for _ in range(10)])


# --- caps -----------------------------------------------------------------------------------


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        (SourceCapPeriod.HOUR, at(2025, 3, 9, 14, 59, 59), at(2025, 3, 9, 14), at(2025, 3, 9, 15)),
        (SourceCapPeriod.DAY, at(2025, 3, 9, 23, 0), at(2025, 3, 9), at(2025, 3, 10)),
        (SourceCapPeriod.MONTH, at(2025, 2, 28, 12), at(2025, 2, 1), at(2025, 3, 1)),
        (SourceCapPeriod.MONTH, at(2025, 12, 31, 23), at(2025, 12, 1), at(2026, 1, 1)),
    ],
)
def test_a_cap_counts_in_utc_calendar_periods(
    period: SourceCapPeriod, now: dt.datetime, start: dt.datetime, end: dt.datetime
) -> None:
    assert domain.cap_period(period, now) == (start, end)


def test_a_moment_in_another_zone_falls_in_its_utc_period() -> None:
    new_york = dt.timezone(dt.timedelta(hours=-5))
    late_evening = dt.datetime(2025, 3, 9, 21, 30, tzinfo=new_york)  # 02:30 UTC next day
    assert domain.cap_period(SourceCapPeriod.DAY, late_evening) == (
        at(2025, 3, 10),
        at(2025, 3, 11),
    )


# --- idempotency and 429 --------------------------------------------------------------------


def test_a_429_is_not_remembered_for_the_key_so_the_retry_is_decided_afresh() -> None:
    assert domain.remembers(422) and domain.remembers(410) and domain.remembers(202)
    assert not domain.remembers(429)
    assert not domain.remembers(503)


# --- pings ----------------------------------------------------------------------------------

SPECS = [
    FieldSpec(name="email", type=FieldType.EMAIL, required=True, pii=True),
    FieldSpec(name="phone", type=FieldType.PHONE, required=True, pii=True),
    FieldSpec(name="state", type=FieldType.US_STATE, required=True),
    FieldSpec(name="zip", type=FieldType.ZIP),
]


def test_a_ping_carries_only_the_non_pii_fields_normalised() -> None:
    lead, errors = domain.normalise_ping(SPECS, {"state": "ca", "zip": "94105-1234"})
    assert errors == []
    assert lead is not None and lead.fields == {"state": "CA", "zip": "94105"}
    assert lead.pii == {}


def test_a_ping_with_pii_is_refused_naming_each_pii_field() -> None:
    lead, errors = domain.normalise_ping(SPECS, {"state": "CA", "phone": "4155550132"})
    assert lead is None
    assert [(e.field, e.code) for e in errors] == [("phone", "pii_in_ping")]


def test_a_ping_misses_only_required_non_pii_fields() -> None:
    _, errors = domain.normalise_ping(SPECS, {"zip": "9410"})
    assert {(e.field, e.code) for e in errors} == {("state", "required"), ("zip", "invalid_zip")}


# --- what the source reads ------------------------------------------------------------------


def test_field_errors_become_rejections_that_never_quote_a_value() -> None:
    errors = [
        domain.FieldError("email", "invalid_email", "The domain name ada.example..com is wrong"),
        domain.FieldError("ada@example.com", "unknown_field", "not a field of this campaign"),
    ]
    first, second = domain.field_rejections(errors)
    assert first.code is RejectionCode.VALIDATION
    assert (first.field, first.detail) == (
        "email",
        "email is not a valid e-mail address [invalid_email]",
    )
    assert second.field is None and "ada@" not in second.detail


def test_an_unsold_lead_is_explained_by_counts_of_reasons_never_by_buyer() -> None:
    codes = ["filter", "buyer_rejected", "filter"]
    assert domain.unsold_detail(codes) == "no buyer accepted: 2 filtered out, 1 rejected it"
    assert domain.unsold_detail([]) == "no buyer was available for this lead"
    assert domain.unsold_detail(["something_new"]) == "no buyer accepted: 1 something new"
    assert domain.sold_detail(2, 1) == "sold to 2 buyers; 1 sale returned"
