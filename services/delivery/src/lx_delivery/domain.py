"""Delivery's pure rules: what a buyer is sent, what its answer means (with the price it
pays and the code of a refusal), what the breaker learns from it, retry policy.

Rendering and reading the buyer's own formats is ``lx_integrations``; this module puts
the delivery's meaning on top.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

from lx_integrations.responses import Reading
from lx_integrations.templates import TemplateValue
from lx_platform.logging import mask_pii
from lx_schemas.events import DeliveryResult, FieldValue, RejectionCode
from lx_schemas.integration import Outcome

R = DeliveryResult

EGRESS_REFUSED = "egress_refused"  # a try's reason: "egress_refused: loopback 127.0.0.1"
REDIRECT_NOT_FOLLOWED = "redirect_not_followed"
CIRCUIT_OPEN = "circuit_open"
TEMPLATE_ERROR = "template_error"
UNRESOLVED = "outcome_unknown_unresolved"


@dataclass(frozen=True)
class Verdict:
    """How a try ended. ``price`` is what the buyer pays (accepted only)."""

    result: DeliveryResult
    reason: str | None
    retryable: bool
    reason_code: RejectionCode | None = None
    price: Decimal | None = None
    buyer_lead_id: str | None = None


def request_values(
    *,
    lead_id: str,
    delivery_id: str,
    price: Decimal,
    fields: Mapping[str, FieldValue],
    pii: Mapping[str, Any],
    ping_id: str | None = None,
    bid_ref: str | None = None,
) -> dict[str, TemplateValue]:
    """What a buyer's template may use: the lead's fields, its opened PII and the
    specials. The specials come last, so no lead field can pose as one."""
    specials: dict[str, TemplateValue] = {
        "lead_id": lead_id,
        "delivery_id": delivery_id,
        "price": str(price),
    }
    if ping_id is not None:
        specials["ping_id"] = ping_id
    if bid_ref is not None:
        specials["bid_ref"] = bid_ref
    return {**fields, **pii, **specials}


def verdict_of(reading: Reading, status: int) -> Verdict:
    """The buyer's answer as a try's verdict (before pricing). The buyer's own words are
    stored and published in clear, so an e-mail or phone it echoes is masked first."""
    if reading.reason is not None:
        reading = replace(reading, reason=mask_pii(reading.reason))
    if reading.outcome is Outcome.ACCEPTED:
        return Verdict(
            R.ACCEPTED, reading.reason, False, None, reading.price, reading.buyer_lead_id
        )
    if reading.outcome is Outcome.REJECTED:
        return Verdict(
            R.REJECTED,
            reading.reason or f"http_{status}",
            False,
            RejectionCode.BUYER_REJECTED,
            None,
            reading.buyer_lead_id,
        )
    return Verdict(
        R.ERROR,
        reading.reason or f"http_{status}",
        reading.retryable,
        RejectionCode.BUYER_ERROR,
        None,
        reading.buyer_lead_id,
    )


def priced(verdict: Verdict, *, routed_price: Decimal, from_response: bool) -> Verdict:
    """An acceptance with the price actually paid.

    Fixed-price buyers pay the routed price, whatever they say. A buyer priced by its
    answer must name a price of at least the routed one (the floor the source's payout
    was promised on); none, or less, and the acceptance does not count.
    """
    if verdict.result is not R.ACCEPTED:
        return verdict
    if not from_response:
        return replace(verdict, price=routed_price, reason=None)
    if verdict.price is None:
        why = "no price in the answer"
        detail = f"{why} ({verdict.reason})" if verdict.reason else why
    elif verdict.price < routed_price:
        detail = f"price {verdict.price} is below the floor {routed_price}"
    else:
        return replace(verdict, reason=None)
    return Verdict(
        R.REJECTED, detail, False, RejectionCode.PRICE_BELOW_FLOOR, None, verdict.buyer_lead_id
    )


def final_code(result: DeliveryResult, verdict: Verdict) -> RejectionCode | None:
    """The reason code a try is reported under (None if accepted)."""
    if result is R.ACCEPTED:
        return None
    if (verdict.reason or "").startswith(UNRESOLVED):
        return RejectionCode.OUTCOME_UNKNOWN_UNRESOLVED
    if verdict.reason_code is not None:
        return verdict.reason_code
    if result is R.REJECTED:
        return RejectionCode.BUYER_REJECTED
    return RejectionCode.BUYER_ERROR


class BuyerHealth(StrEnum):
    """What a try tells the circuit breaker about the buyer."""

    UP = "up"  # it answered: accepted, rejected, a 4xx
    DOWN = "down"  # a 5xx, no connection, no (whole) answer in time
    UNKNOWN = "unknown"  # nothing learned (not sent, a redirect, an unreadable answer)


def buyer_health(verdict: Verdict, status: int | None) -> BuyerHealth:
    reason = verdict.reason or ""
    if verdict.result is R.OUTCOME_UNKNOWN or reason.startswith("connect_failed"):
        return BuyerHealth.DOWN
    if status is not None and status >= 500:
        return BuyerHealth.DOWN
    if verdict.result in (R.ACCEPTED, R.REJECTED):
        return BuyerHealth.UP
    return BuyerHealth.UNKNOWN


def stored_request(url: str, headers: Mapping[str, str], body: bytes, limit: int) -> bytes:
    """The request as kept in the log: credentials redacted by the caller, the body cut
    at ``limit`` bytes."""
    doc: dict[str, Any] = {"method": "POST", "url": url, "headers": dict(headers)}
    doc["body"] = body[:limit].decode(errors="replace")
    if len(body) > limit:
        doc["body_truncated"] = len(body)
    return json.dumps(doc).encode()


class ReasonClass(StrEnum):
    """Why a try ended, in a few words: a metric label, where the reason itself (a
    buyer's free text) would make a new series of every message."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"  # the buyer answered 2xx and declined
    PRICE_BELOW_FLOOR = "price_below_floor"  # it accepted, at less than the floor
    HTTP_3XX = "http_3xx"  # redirects are not followed
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    TIMEOUT = "timeout"  # sent, no whole answer in the buyer's time (outcome unknown)
    CONNECT = "connect"  # never reached the buyer
    EGRESS_REFUSED = "egress_refused"  # not sent: the endpoint's address is not allowed
    OUTCOME_UNKNOWN = "outcome_unknown"  # cut off after sending, other than by a timeout
    RESPONSE_TOO_LARGE = "response_too_large"
    CIRCUIT_OPEN = "circuit_open"  # not sent: the buyer's breaker is open
    NOT_SENT = "not_sent"  # the platform did not send: buyer paused or unknown, PII shredded
    OTHER = "other"


NOT_SENT_REASONS = frozenset({"buyer_unknown", "buyer_paused", "pii_shredded"})


def reason_class(
    result: DeliveryResult,
    reason: str | None,
    status: int | None,
    code: RejectionCode | None = None,
) -> ReasonClass:
    """The bounded class of a try's outcome (see ``ReasonClass``)."""
    reason = reason or ""
    if result is DeliveryResult.ACCEPTED:
        return ReasonClass.ACCEPTED
    if code is RejectionCode.PRICE_BELOW_FLOOR:
        return ReasonClass.PRICE_BELOW_FLOOR
    if code is RejectionCode.CIRCUIT_OPEN:
        return ReasonClass.CIRCUIT_OPEN
    if result is DeliveryResult.OUTCOME_UNKNOWN or reason.startswith("outcome_unknown"):
        timed_out = reason.endswith("Timeout") or reason == "deadline_exceeded"
        return ReasonClass.TIMEOUT if timed_out else ReasonClass.OUTCOME_UNKNOWN
    if reason.startswith("connect_failed"):
        return ReasonClass.CONNECT
    if reason.startswith(EGRESS_REFUSED):
        return ReasonClass.EGRESS_REFUSED
    if reason == "response_too_large":
        return ReasonClass.RESPONSE_TOO_LARGE
    if reason == CIRCUIT_OPEN:
        return ReasonClass.CIRCUIT_OPEN
    if reason in NOT_SENT_REASONS or reason.startswith(TEMPLATE_ERROR):
        return ReasonClass.NOT_SENT
    if status is None:
        return ReasonClass.OTHER  # a transport failure of another kind
    if status >= 500:
        return ReasonClass.HTTP_5XX
    if status >= 400:
        return ReasonClass.HTTP_4XX
    if status >= 300:
        return ReasonClass.HTTP_3XX
    if status >= 200 and result is DeliveryResult.REJECTED:
        return ReasonClass.REJECTED
    return ReasonClass.OTHER


def backoff_s(try_number: int, base_s: float) -> float:
    """Exponential backoff with full jitter before try ``try_number + 1``.

    Not tenacity: this is a schedule stored with a durable job (``next_try_at``) that
    survives restarts, not an in-process retry loop.
    """
    return random.uniform(0, base_s * 2 ** (try_number - 1))
