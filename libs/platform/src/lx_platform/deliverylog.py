"""Reads one lead's delivery log (every try's request and response) from delivery's
internal API: for admin's trace and ingest's access export."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from lx_platform.logging import get_logger
from lx_platform.runtime import Runtime

log = get_logger(__name__)


async def delivery_log(rt: Runtime, lead_id: uuid.UUID) -> tuple[list[dict[str, Any]], str | None]:
    """The lead's deliveries, or an empty list and why they could not be read."""
    url = f"{rt.settings.platform.delivery_url}/internal/v1/leads/{lead_id}/deliveries"
    try:
        response = await rt.internal_client().get(url)
        response.raise_for_status()
        deliveries: list[dict[str, Any]] = response.json()["deliveries"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        log.warning("delivery_log_unavailable", lead_id=str(lead_id), error=repr(exc))
        return [], f"delivery log unavailable: {type(exc).__name__}"
    return deliveries, None
