"""Helpers the end-to-end tests share: posting leads and waiting for outcomes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from lx_devstack.stack import DEMO_LEAD, Stack

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 60.0,
    every: float = 0.25,
    what: str = "condition",
) -> T:
    """Poll until ``probe`` returns something truthy; raise if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} not reached within {timeout}s")


def a_lead(n: int) -> dict[str, Any]:
    return {
        **DEMO_LEAD,
        "email": f"lead{n}-{uuid.uuid4().hex[:6]}@example.com",
        "loan_amount": 100_000 + n,
    }


def post_lead(
    stack: Stack, api_key: str, lead: dict[str, Any], timeout: float = 10.0
) -> httpx.Response:
    return httpx.post(
        f"{stack.layout.url('ingest')}/v1/leads",
        json=lead,
        timeout=timeout,
        headers={"authorization": f"Bearer {api_key}"},
    )


def lead_status(stack: Stack, api_key: str, lead_id: str) -> str:
    r = httpx.get(
        f"{stack.layout.url('ingest')}/v1/leads/{lead_id}",
        timeout=10,
        headers={"authorization": f"Bearer {api_key}"},
    )
    r.raise_for_status()
    status: str = r.json()["status"]
    return status


def operator_get(stack: Stack, service: str, path: str) -> Any:
    r = httpx.get(
        f"{stack.layout.url(service)}{path}",
        timeout=10,
        headers={"authorization": f"Bearer {stack.layout.operator_token}"},
    )
    r.raise_for_status()
    return r.json()


def buyer_inbox(stack: Stack, buyer: str | None = None) -> list[dict[str, Any]]:
    params = {"buyer": buyer} if buyer else {}
    rows: list[dict[str, Any]] = httpx.get(
        f"{stack.layout.buyer_url}/received", params=params, timeout=10
    ).json()
    return rows
