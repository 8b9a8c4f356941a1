"""Delivery's pure rules: the buyer's request body, reading its answer, retry policy."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
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


def read_answer(status: int, body: bytes, rule: AcceptanceRule) -> Verdict:
    """Accepted only on a 2xx whose JSON field says so; 5xx is a retryable error."""
    if status >= 500:
        return Verdict(DeliveryResult.ERROR, f"http_{status}", retryable=True)
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


def backoff_s(try_number: int, base_s: float) -> float:
    """Exponential backoff with full jitter before try ``try_number + 1``.

    Not tenacity: this is a schedule stored with a durable job (``next_try_at``) that
    survives restarts, not an in-process retry loop.
    """
    return random.uniform(0, base_s * 2 ** (try_number - 1))
