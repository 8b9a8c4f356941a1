"""The signature a buyer checks to know a post comes from the platform, unaltered and
recent (Standard Webhooks style, with the delivery id as the message id).

    X-LeadExchange-Timestamp: <unix seconds>
    X-LeadExchange-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<delivery_id>." + body)>

The signature header may hold several space-separated ``v1=`` values while a secret is
rotated; one valid value is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import time

DELIVERY_ID_HEADER = "X-LeadExchange-Delivery-Id"
TIMESTAMP_HEADER = "X-LeadExchange-Timestamp"
SIGNATURE_HEADER = "X-LeadExchange-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
TOLERANCE_S = 300
_SCHEME = "v1"


def _digest(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.{delivery_id}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``v1=<hex>``."""
    return f"{_SCHEME}={_digest(secret, delivery_id, timestamp, body)}"


def signature_headers(
    secret: str, delivery_id: str, body: bytes, *, now: float | None = None
) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, delivery_id, timestamp, body),
    }


def verify(
    secret: str,
    delivery_id: str,
    timestamp: int | str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> bool:
    """True when ``signature`` (a header value) signs this body, delivery id and
    timestamp, and the timestamp is within ``tolerance_s`` of now (replays refused)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = _digest(secret, delivery_id, ts, body)
    valid = False
    for part in signature.split():
        scheme, _, value = part.partition("=")
        # compare_digest on every candidate: time does not depend on which one matched
        if scheme == _SCHEME and hmac.compare_digest(value.encode(), expected.encode()):
            valid = True
    return valid
