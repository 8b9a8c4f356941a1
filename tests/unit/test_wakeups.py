"""A wake-up that arrives while the outbox relay reads its batch (a commit right then)
is not lost: the relay reads again at once instead of sleeping until its poll. The same
for delivery's worker claiming jobs. The polls here are an hour, so a lost wake-up
fails the test (its guard timeout) instead of merely slowing it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lx_platform.outbox import OutboxRelay

pytestmark = pytest.mark.unit


async def test_a_commit_during_the_relays_read_is_relayed_without_waiting_for_the_poll() -> None:
    relay = OutboxRelay(db=None, publisher=None, poll_s=3600)  # type: ignore[arg-type]
    reads: list[int] = []
    second = asyncio.Event()

    async def relay_once() -> int:
        reads.append(1)
        if len(reads) == 1:
            relay.wake()  # rows committed (and the relay woken) while this read ran
        else:
            second.set()
        return 0

    relay.relay_once = relay_once  # type: ignore[method-assign]
    relay.start()
    try:
        await asyncio.wait_for(second.wait(), timeout=10)
    finally:
        await relay.stop()
    assert len(reads) >= 2


async def test_jobs_committed_while_the_worker_claims_are_claimed_without_waiting() -> None:
    from lx_delivery.worker import DeliveryWorker

    worker: Any = DeliveryWorker.__new__(DeliveryWorker)
    worker._wake = asyncio.Event()
    worker._tasks = set()
    worker.settings = type("S", (), {"poll_s": 3600.0})()
    claims: list[int] = []
    second = asyncio.Event()

    async def dispatch() -> int:
        claims.append(1)
        if len(claims) == 1:
            worker.wake()  # the consumer committed new jobs during this claim
        else:
            second.set()
        return 0

    worker._dispatch = dispatch
    task = asyncio.create_task(worker._run())
    try:
        await asyncio.wait_for(second.wait(), timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(claims) >= 2
