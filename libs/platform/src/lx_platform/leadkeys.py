"""Fetches leads' data keys from ingest's vault, briefly cached."""

from __future__ import annotations

import base64
import uuid

import httpx
from cachetools import TTLCache


class KeyUnavailableError(RuntimeError):
    """The vault could not be asked (transient): try the delivery again later."""


class LeadKeys:
    def __init__(self, client: httpx.AsyncClient, ingest_url: str, ttl_s: float = 60.0) -> None:
        self.client = client
        self.ingest_url = ingest_url
        # Short TTL: a shredded key must stop working within a minute everywhere.
        self.cache: TTLCache[uuid.UUID, bytes] = TTLCache(maxsize=50_000, ttl=ttl_s)

    async def get(self, key_id: uuid.UUID) -> bytes | None:
        """The data key, or None when the vault no longer has it (shredded)."""
        if key_id in self.cache:
            return self.cache[key_id]
        try:
            response = await self.client.get(f"{self.ingest_url}/internal/v1/lead-keys/{key_id}")
        except httpx.HTTPError as exc:
            raise KeyUnavailableError(repr(exc)) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise KeyUnavailableError(f"vault answered {response.status_code}")
        key = base64.b64decode(response.json()["data_key"])
        self.cache[key_id] = key
        return key
