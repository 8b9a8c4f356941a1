"""Delivery's lead-key client: one lookup per batch of jobs, then each job's key from the
cache; a failed lookup leaves the keys to be asked one by one."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest
from lx_platform.leadkeys import LeadKeys

pytestmark = pytest.mark.unit


def _vault(keys: dict[uuid.UUID, bytes], calls: list[str], *, broken: bool = False) -> LeadKeys:
    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if broken:
            return httpx.Response(503)
        if request.url.path.endswith("/lookup"):
            wanted = [uuid.UUID(k) for k in json.loads(request.content)["key_ids"]]
            found = {str(k): base64.b64encode(keys[k]).decode() for k in wanted if k in keys}
            return httpx.Response(200, json={"keys": found})
        key_id = uuid.UUID(request.url.path.rsplit("/", 1)[1])
        if key_id not in keys:
            return httpx.Response(404)
        return httpx.Response(200, json={"data_key": base64.b64encode(keys[key_id]).decode()})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return LeadKeys(client, "http://ingest")


async def test_one_lookup_serves_a_batch() -> None:
    keys = {uuid.uuid4(): bytes([n]) * 32 for n in range(3)}
    shredded = uuid.uuid4()
    calls: list[str] = []
    vault = _vault(keys, calls)
    await vault.prefetch([*keys, shredded, *keys])
    assert calls == ["/internal/v1/lead-keys/lookup"]
    for key_id, key in keys.items():
        assert await vault.get(key_id) == key
    assert calls == ["/internal/v1/lead-keys/lookup"], "each key came from the cache"
    assert await vault.get(shredded) is None  # asked on its own: the vault says 404
    await vault.prefetch(keys)  # all cached: no request
    assert len(calls) == 2


async def test_a_failed_lookup_leaves_each_key_to_its_own_request() -> None:
    calls: list[str] = []
    key_id = uuid.uuid4()
    vault = _vault({key_id: b"k" * 32}, calls, broken=True)
    await vault.prefetch([key_id])  # no error raised
    assert key_id not in vault.cache
