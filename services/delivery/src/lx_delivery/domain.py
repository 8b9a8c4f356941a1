"""Delivery's pure rules: the buyer's request body, reading its answer, retry policy."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lx_schemas.events import AcceptanceRule, DeliveryResult, FieldValue


@dataclass(frozen=True)
class Verdict:
    result: DeliveryResult
    reason: str | None
    retryable: bool


def request_body(
    lead_id: str, delivery_id: str, fields: dict[str, FieldValue], pii: dict[str, Any]
) -> bytes:
    return json.dumps(
        {"lead_id": lead_id, "delivery_id": delivery_id, **fields, **pii}, separators=(",", ":")
    ).encode()


EGRESS_REFUSED = "egress_refused"  # a try's reason: "egress_refused: loopback 127.0.0.1"
REDIRECT_NOT_FOLLOWED = "redirect_not_followed"


def read_answer(status: int, body: bytes, rule: AcceptanceRule) -> Verdict:
    """Accepted only on a 2xx whose JSON field says so; 5xx is a retryable error.

    A 3xx is a final error, never followed: the buyer's endpoint answers itself, and a
    redirect could point anywhere, a private address included (SSRF).
    """
    if status >= 500:
        return Verdict(DeliveryResult.ERROR, f"http_{status}", retryable=True)
    if 300 <= status < 400:
        return Verdict(DeliveryResult.ERROR, f"{REDIRECT_NOT_FOLLOWED}: http_{status}", False)
    try:
        data = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        data = {}
    data = data if isinstance(data, dict) else {}
    reason = data.get(rule.reason_field)
    reason_text = str(reason)[:500] if reason is not None else None
    if 200 <= status < 300:
        value = data.get(rule.field)
        if value is not None and str(value).lower() in {a.lower() for a in rule.accepted}:
            return Verdict(DeliveryResult.ACCEPTED, None, retryable=False)
        return Verdict(DeliveryResult.REJECTED, reason_text or f"{rule.field}={value}", False)
    return Verdict(DeliveryResult.REJECTED, reason_text or f"http_{status}", retryable=False)


class ReasonClass(StrEnum):
    """Why a try ended, in a few words: a metric label, where the reason itself (a
    buyer's free text) would make a new series of every message."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"  # the buyer answered 2xx and declined
    HTTP_3XX = "http_3xx"  # redirects are not followed
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    TIMEOUT = "timeout"  # sent, no whole answer in the buyer's time (outcome unknown)
    CONNECT = "connect"  # never reached the buyer
    EGRESS_REFUSED = "egress_refused"  # not sent: the endpoint's address is not allowed
    OUTCOME_UNKNOWN = "outcome_unknown"  # cut off after sending, other than by a timeout
    RESPONSE_TOO_LARGE = "response_too_large"
    NOT_SENT = "not_sent"  # the platform did not send: buyer paused or unknown, PII shredded
    OTHER = "other"


NOT_SENT_REASONS = frozenset({"buyer_unknown", "buyer_paused", "pii_shredded"})


def reason_class(result: DeliveryResult, reason: str | None, status: int | None) -> ReasonClass:
    """The bounded class of a try's outcome (see ``ReasonClass``)."""
    reason = reason or ""
    if result is DeliveryResult.ACCEPTED:
        return ReasonClass.ACCEPTED
    if result is DeliveryResult.OUTCOME_UNKNOWN or reason.startswith("outcome_unknown"):
        timed_out = reason.endswith("Timeout") or reason == "deadline_exceeded"
        return ReasonClass.TIMEOUT if timed_out else ReasonClass.OUTCOME_UNKNOWN
    if reason.startswith("connect_failed"):
        return ReasonClass.CONNECT
    if reason.startswith(EGRESS_REFUSED):
        return ReasonClass.EGRESS_REFUSED
    if reason == "response_too_large":
        return ReasonClass.RESPONSE_TOO_LARGE
    if reason in NOT_SENT_REASONS:
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
