"""Helpers the end-to-end tests share: posting leads, streams of them, their outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from lx_devstack.infra import Infra, private_infra
from lx_devstack.paths import logs_dir, run_dir, state_dir
from lx_devstack.stack import (
    DEMO_LEAD,
    SERVICES,
    Seeded,
    Stack,
    StackLayout,
    config_settled,
    seed,
    service_env,
    wait_groups_caught_up,
    wait_ready,
)
from lx_schemas import Event, decode_event
from lx_schemas import events as ev
from lx_schemas.topics import DELIVERY_OUTCOME

from tests.e2e.conftest import free_port_block

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
    stack: Stack,
    api_key: str,
    lead: dict[str, Any],
    timeout: float = 10.0,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """POST one lead to ingest (over ``client``'s kept-alive connections, if given)."""
    return (client or httpx).post(
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


# --- a stream of leads ------------------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    """A lead answered 202: its id, the lane (source) it went to, the phase it met."""

    lead_id: str
    lane: int
    phase: str
    answered_at: float


class LeadStream:
    """Posts leads at a steady rate from threads; keeps the ids answered 202.

    ``api_keys``: one source, or several posted to in turn (lead ``n`` to key ``n % k``).
    ``phase`` may be changed while it runs; every lead is tagged with the phase it was
    posted in. A slot missed while ingest hangs is skipped, not made up in a burst.
    """

    def __init__(
        self,
        stack: Stack,
        api_keys: str | Sequence[str],
        *,
        rate_per_s: float = 15.0,
        workers: int = 1,
        timeout: float = 5.0,
    ) -> None:
        self.stack = stack
        self.api_keys = [api_keys] if isinstance(api_keys, str) else list(api_keys)
        self.rate_per_s, self.timeout = rate_per_s, timeout
        self.phase = ""
        self.accepted: list[str] = []
        self.posted: list[Posted] = []
        self.refused: Counter[str] = Counter()
        self.refused_by_phase: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._n = 0
        self._next_at = 0.0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _slot(self) -> int:
        """The next lead's number, once its time has come."""
        with self._lock:
            now = time.monotonic()
            self._next_at = max(self._next_at + 1 / self.rate_per_s, now - 1.0)
            self._n += 1
            n, due = self._n, self._next_at
        self._stop.wait(max(0.0, due - now))
        return n

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                self._post(client)

    def _post(self, client: httpx.Client) -> None:
        n = self._slot()
        lane = n % len(self.api_keys)
        phase = self.phase
        try:
            r = post_lead(
                self.stack, self.api_keys[lane], a_lead(n), timeout=self.timeout, client=client
            )
        except httpx.HTTPError as exc:  # ingest is down or died mid-request
            outcome = type(exc).__name__
        else:
            if r.status_code == 202:
                lead_id = r.json()["lead_id"]
                with self._lock:
                    self.accepted.append(lead_id)
                    self.posted.append(Posted(lead_id, lane, phase, time.monotonic()))
                return
            outcome = str(r.status_code)
        with self._lock:
            self.refused[outcome] += 1
            self.refused_by_phase[phase][outcome] += 1

    def __enter__(self) -> LeadStream:
        self._next_at = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


# --- reading the outcomes -----------------------------------------------------------------


def collect_events(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Event]], bool],
    timeout: float,
    quiet_s: float = 0.0,
) -> list[Event]:
    """Every event of ``topic`` from the beginning, each decoded once, until ``until``
    holds and no record has arrived for ``quiet_s`` seconds, or ``timeout`` passes."""

    async def read() -> list[Event]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        events: list[Event] = []
        try:
            deadline = time.monotonic() + timeout
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                (described,) = await admin.describe_topics([topic])
            finally:
                await admin.close()
            tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            last_record = time.monotonic()
            done = False
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
                fresh = [decode_event(r.value) for records in batch.values() for r in records]
                if fresh:
                    events.extend(fresh)
                    last_record = time.monotonic()
                    done = until(events)
                elif not done:
                    done = until(events)
                if done and time.monotonic() - last_record >= quiet_s:
                    break
            return events
        finally:
            await consumer.stop()

    return asyncio.run(read())


def final_outcomes(
    stack: Stack, expected_leads: set[str], timeout: float = 180, quiet_s: float = 0.0
) -> list[Event]:
    """``delivery.outcome`` until every lead in ``expected_leads`` has a LeadSold or
    LeadUnsold (or ``timeout``); the caller judges what is missing."""
    topic = DELIVERY_OUTCOME.qualified(stack.layout.topic_prefix)

    def covered(events: list[Event]) -> bool:
        finals = {
            str(e.correlation_id) for e in events if isinstance(e, ev.LeadSold | ev.LeadUnsold)
        }
        return expected_leads <= finals

    return collect_events(
        stack.infra.kafka_bootstrap, topic, until=covered, timeout=timeout, quiet_s=quiet_s
    )


# --- the fault suite: kills, broker and database restarts, misbehaving buyers ------------
#
# One stack on a private Kafka and PostgreSQL (the shared ones serve other tests). One
# stream of leads goes, in turn, to one campaign per *lane*; a lane's first buyer
# misbehaves in its own way (or plainly rejects), a good buyer after it takes every lead.
# While the stream runs, *phases* follow one another: calm, PostgreSQL killed and
# restarted, the broker killed and restarted, every service killed (-9) round after round,
# calm again. Each lead is tagged with its lane and its phase, so every figure and every
# violation can be read per lane and per phase.


@dataclass(frozen=True)
class Lane:
    """A campaign whose first buyer answers as ``first`` (a fake buyer mode and query)."""

    name: str
    first: str
    timeout_ms: int
    fault: str | None  # the fake buyer's answer that shows the fault was met

    def buyer(self, which: str) -> str:
        return f"{self.name}-{which}"


LANES = (
    Lane("plain", "reject", 2000, None),  # the crash test's campaign: reject, then buy
    Lane("hang", "hang?p=0.3", 1000, "hang"),
    Lane("error", "error?p=0.5", 2000, "error"),
    Lane("reset", "reset?p=0.5", 2000, "reset"),
    # 300-1500 ms against a 1 s timeout: about 4 in 10 tries time out after the buyer
    # took the lead, the case a same-delivery-id retry exists for.
    Lane("slow", "slow?ms=300&max_ms=1500", 1000, None),
)
FIRST_PRICE, GOOD_PRICE = Decimal("40.00"), Decimal("35.00")
# Every service, delivery first: a job it held when killed waits out its 90 s lease, so
# its tail overlaps the rest of the round.
KILL_ROUND = ("delivery", "router", "ingest", "billing", "analytics", "admin", "auction")
PHASES = ("calm", "postgres", "kafka", "services", "tail")


@dataclass(frozen=True)
class FaultPlan:
    leads: int  # leads answered 202, at least (see ``shares``)
    rate_per_s: float
    service_rounds: int  # at least this many rounds of kill -9 over every service
    broker_restarts: int
    database_restarts: int
    down_s: float = 1.0  # how long a killed process stays down
    gap_s: float = 4.0  # between two faults (two kills of a round)
    workers: int = 4
    drain_s: float = 300.0  # for every accepted lead to reach its final outcome
    # Each phase's share of ``leads``: a phase lasts until that many leads were answered
    # 202 in it, and a fault phase repeats its fault until then (at least its minimum
    # number of times), so the stream may exceed ``leads``.
    shares: tuple[float, ...] = (0.05, 0.15, 0.15, 0.6, 0.05)


@dataclass
class FaultSuite:
    infra: Infra
    stack: Stack
    lanes: tuple[Lane, ...]
    seeded: list[Seeded]


@dataclass
class FaultRun:
    plan: FaultPlan
    posted: list[Posted]
    refused: dict[str, dict[str, int]]
    faults: list[dict[str, Any]]
    phases: dict[str, dict[str, float]]
    outcomes: list[Event]
    inbox: list[dict[str, Any]]
    stream_s: float
    drain_s: float


def seed_lane(stack: Stack, lane: Lane) -> Seeded:
    """An account, campaign (exclusive: one sale per lead) and source, and the two buyers.

    The misbehaving buyer's breaker trips only after 50 failures in a row: the point is
    to meet the fault lead after lead, not to skip the buyer.
    """
    layout = stack.layout
    base = seed(
        layout.url("admin"),
        layout.operator_token,
        [],
        name=f"Faults {lane.name}",
        wait_ingest_url=layout.url("ingest"),
    )
    first, good = lane.buyer("first"), lane.buyer("good")
    buyers = [
        {
            "name": first,
            "endpoint_url": f"{layout.buyer_url}/buyers/{first}/{lane.first}",
            "price": str(FIRST_PRICE),
            "priority": 1,
            "timeout_ms": lane.timeout_ms,
            "breaker": {"failures": 50, "cool_down_s": 5},
        },
        {
            "name": good,
            "endpoint_url": f"{layout.buyer_url}/buyers/{good}/accept",
            "price": str(GOOD_PRICE),
            "priority": 2,
            "timeout_ms": 2000,
        },
    ]
    with httpx.Client(
        base_url=layout.url("admin"),
        headers={"authorization": f"Bearer {layout.operator_token}"},
        timeout=10,
    ) as c:
        ids = [
            c.post(f"/v1/campaigns/{base.campaign_id}/buyers", json=b)
            .raise_for_status()
            .json()["buyer_id"]
            for b in buyers
        ]
    bootstrap, topic, groups = config_settled(layout, stack.infra.kafka_bootstrap)
    entities = {base.account_id, base.campaign_id, base.source_id, *ids}
    wait_groups_caught_up(bootstrap, topic, groups, keys=entities, timeout=60)
    return Seeded(base.account_id, base.campaign_id, base.source_id, base.api_key, ids)


@contextlib.contextmanager
def fault_suite(tag: str, lanes: tuple[Lane, ...] = LANES) -> Iterator[FaultSuite]:
    """A private Kafka and PostgreSQL, every service and the fake buyer on them, and one
    seeded campaign per lane. Everything is killed and the servers' data deleted on the
    way out, failures included; the logs stay under ``.local/logs/<tag>``."""
    base = free_port_block(len(SERVICES) + 4)
    layout = StackLayout(
        base_port=base,
        buyer_port=base + len(SERVICES),
        db_prefix=f"{tag}_",
        topic_prefix=f"{tag}.",
        run_folder=run_dir() / tag,
        log_folder=logs_dir() / tag,
    )
    after = base + len(SERVICES)  # the buyer's port; then the broker's two and PostgreSQL's
    with private_infra(
        state_dir() / "faults" / tag,
        kafka_port=after + 1,
        kafka_controller_port=after + 2,
        pg_port=after + 3,
        log_folder=layout.log_folder,
    ) as infra:
        stack = Stack(infra, layout)
        try:
            stack.start_all()
            seeded = [seed_lane(stack, lane) for lane in lanes]
            yield FaultSuite(infra, stack, lanes, seeded)
        finally:
            # The servers and their data go next: no need for a clean shutdown.
            for proc in stack.processes.values():
                proc.kill9()
                proc.pidfile.unlink(missing_ok=True)


def _stack_ready(stack: Stack, timeout: float = 120.0) -> None:
    for name in SERVICES:
        wait_ready(stack.health_url(name), stack.processes[name], timeout=timeout)


def _restart(stack: Stack, name: str, attempts: int = 3) -> int:
    """Start ``name`` again; returns the attempts it took.

    A start that fails is tried again after a pause: in a working tree shared with other
    people editing, a service may meet a half-written module once. Every extra attempt
    is recorded with the fault, and a service that keeps failing fails the run.
    """
    for attempt in range(1, attempts + 1):
        try:
            stack.restart(name)
            return attempt
        except RuntimeError:
            if attempt == attempts:
                raise
            time.sleep(5.0)
    raise AssertionError("unreachable")


def _kill_services(suite: FaultSuite, plan: FaultPlan) -> list[dict[str, Any]]:
    """One round: kill -9 every service in turn, ``plan.gap_s`` apart, each started again
    ``plan.down_s`` after its kill while the next ones die (their downtimes overlap)."""
    done: list[dict[str, Any]] = []
    failures: list[BaseException] = []

    round_start = time.monotonic()

    def kill_and_restart(name: str) -> None:
        t0 = time.monotonic()
        try:
            suite.stack.processes[name].kill9()
            time.sleep(plan.down_s)
            attempts = _restart(suite.stack, name)
        except BaseException as exc:
            failures.append(exc)
            return
        done.append(
            {
                "fault": f"kill -9 {name}",
                "into_round_s": t0 - round_start,
                "back_after_s": time.monotonic() - t0,
                "starts": attempts,
            }
        )

    threads = []
    for name in KILL_ROUND:
        thread = threading.Thread(target=kill_and_restart, args=(name,), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(plan.gap_s)
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return done


def _restart_broker(suite: FaultSuite, plan: FaultPlan) -> list[dict[str, Any]]:
    kafka = suite.infra.kafka
    assert kafka is not None, "a private broker is needed"
    t0 = time.monotonic()
    kafka.kill9()
    time.sleep(plan.down_s)
    kafka.start()
    up = time.monotonic() - t0
    _stack_ready(suite.stack)
    time.sleep(plan.gap_s)
    fault = "kill -9 and restart the Kafka broker"
    return [{"fault": fault, "up_after_s": up, "ready_after_s": time.monotonic() - t0}]


def _restart_database(suite: FaultSuite, plan: FaultPlan) -> list[dict[str, Any]]:
    pg = suite.infra.pg
    assert pg is not None, "a private PostgreSQL is needed"
    t0 = time.monotonic()
    pg.kill9()
    time.sleep(plan.down_s)
    pg.start()
    up = time.monotonic() - t0
    _stack_ready(suite.stack)
    time.sleep(plan.gap_s)
    fault = "kill -9 and restart PostgreSQL"
    return [{"fault": fault, "up_after_s": up, "ready_after_s": time.monotonic() - t0}]


def run_faults(
    suite: FaultSuite, plan: FaultPlan, say: Callable[[str], object] = lambda _: None
) -> FaultRun:
    """Stream ``plan.leads`` leads through the phases, then read every outcome.

    ``say`` gets a line per phase and per fault (progress for a person watching)."""
    actions: dict[str, tuple[Callable[[FaultSuite, FaultPlan], list[dict[str, Any]]], int]] = {
        "postgres": (_restart_database, plan.database_restarts),
        "kafka": (_restart_broker, plan.broker_restarts),
        "services": (_kill_services, plan.service_rounds),
    }
    keys = [s.api_key for s in suite.seeded]
    faults: list[dict[str, Any]] = []
    phases: dict[str, dict[str, float]] = {}
    started = time.monotonic()
    with LeadStream(suite.stack, keys, rate_per_s=plan.rate_per_s, workers=plan.workers) as stream:
        for phase, share in zip(PHASES, plan.shares, strict=True):
            stream.phase = phase
            phases[phase] = {"start_s": time.monotonic() - started}
            say(f"{phases[phase]['start_s']:7.1f}s {phase}: {len(stream.accepted)} leads so far")
            target = len(stream.accepted) + share * plan.leads
            action, minimum = actions.get(phase, (None, 0))
            times = 0
            while times < minimum or len(stream.accepted) < target:
                if action is None:
                    time.sleep(0.2)
                    continue
                at = time.monotonic() - started
                done = [{"phase": phase, "at_s": at, **f} for f in action(suite, plan)]
                faults.extend(done)
                times += 1
                say(f"{at:7.1f}s {phase}: {done}")
            phases[phase]["end_s"] = time.monotonic() - started
    stream_s = time.monotonic() - started
    accepted = {p.lead_id for p in stream.posted}
    say(f"{stream_s:7.1f}s stream ended: {len(accepted)} leads, refused {dict(stream.refused)}")
    outcomes = final_outcomes(suite.stack, accepted, timeout=plan.drain_s, quiet_s=5.0)
    return FaultRun(
        plan=plan,
        posted=list(stream.posted),
        refused={phase: dict(c) for phase, c in stream.refused_by_phase.items()},
        faults=faults,
        phases=phases,
        outcomes=outcomes,
        inbox=buyer_inbox(suite.stack),
        stream_s=stream_s,
        drain_s=time.monotonic() - started - stream_s,
    )


def _lane_judgement(lane: Lane, account: str, run: FaultRun, index: int) -> dict[str, Any]:
    """Figures and violations of one lane (see ``judge``)."""
    posted = [p for p in run.posted if p.lane == index]
    accepted = {p.lead_id: p.phase for p in posted}
    events = {
        e.event_id: e for e in run.outcomes if str(e.account_id) == account
    }.values()  # the outbox may re-send an event after a crash: same id, same event
    finals: defaultdict[str, list[Event]] = defaultdict(list)
    tries: defaultdict[str, list[ev.DeliveryAttempted]] = defaultdict(list)
    for e in events:
        if isinstance(e, ev.LeadSold | ev.LeadUnsold):
            finals[str(e.correlation_id)].append(e)
        elif isinstance(e, ev.DeliveryAttempted):
            tries[str(e.payload.delivery_id)].append(e)
    names = {lane.buyer("first"), lane.buyer("good")}
    receipts: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    ids_by_buyer_lead: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for row in run.inbox:
        if row["buyer"] in names:
            receipts[row["delivery_id"]].append(row)
            ids_by_buyer_lead[(row["buyer"], row["lead_id"])].add(row["delivery_id"])

    lost = sorted(set(accepted) - set(finals))
    several = {lead: [e.type for e in f] for lead, f in finals.items() if len(f) != 1}
    sold = {lead: f[0] for lead, f in finals.items() if isinstance(f[0], ev.LeadSold)}
    two_ids = {f"{b}/{lead}": sorted(d) for (b, lead), d in ids_by_buyer_lead.items() if len(d) > 1}
    not_taken = [
        lead
        for lead, e in sold.items()
        if isinstance(e, ev.LeadSold)
        and not any(r["answer"] == "accepted" for r in receipts[str(e.payload.delivery_id)])
    ]
    # Repeats: a delivery id posted again may only follow a try recorded as not final
    # (an unknown outcome or a 5xx); one the buyer had taken, only an unknown outcome.
    unjustified: list[dict[str, Any]] = []
    after_unknown = after_5xx = taken_again = double_sold = 0
    for delivery_id, rows in receipts.items():
        lead = rows[0]["lead_id"]
        if lead not in finals:
            continue  # not concluded (a lead whose post timed out): nothing to judge yet
        recorded = {t.payload.try_number: t.payload for t in tries[delivery_id]}
        retried = sum(
            not t.final and t.result in (ev.DeliveryResult.OUTCOME_UNKNOWN, ev.DeliveryResult.ERROR)
            for t in recorded.values()
        )
        unknown = sum(
            not t.final and t.result is ev.DeliveryResult.OUTCOME_UNKNOWN for t in recorded.values()
        )
        earlier = [r["answer"] for r in rows[:-1]]
        accepted_again = sum(a == "accepted" for a in earlier)
        after_5xx += sum(a == "error" for a in earlier)
        after_unknown += sum(a != "error" for a in earlier)
        taken_again += accepted_again
        if len(rows) > len(recorded) or len(rows) - 1 > retried or accepted_again > unknown:
            unjustified.append(
                {
                    "delivery_id": delivery_id,
                    "answers": [r["answer"] for r in rows],
                    "tries": [(n, t.result.value, t.final) for n, t in sorted(recorded.items())],
                }
            )
        unresolved = any(
            t.final and (t.reason or "").startswith("outcome_unknown_unresolved")
            for t in recorded.values()
        )
        if unresolved and "accepted" in [r["answer"] for r in rows] and lead in sold:
            double_sold += 1  # taken by this buyer unbeknown, sold on: flagged in the trace

    by_phase: dict[str, dict[str, int]] = {}
    for phase in PHASES:
        leads = [lead for lead, p in accepted.items() if p == phase]
        by_phase[phase] = {
            "accepted": len(leads),
            "sold": sum(lead in sold for lead in leads),
            "unsold": sum(lead in finals and lead not in sold for lead in leads),
            "lost": sum(lead not in finals for lead in leads),
        }
    answers = Counter(r["answer"] for rows in receipts.values() for r in rows)
    return {
        "lane": lane.name,
        "first_buyer": lane.first,
        "accepted": len(accepted),
        "sold": sum(lead in sold for lead in accepted),
        "unsold": sum(lead in finals and lead not in sold for lead in accepted),
        "sold_all_leads": len(sold),
        "revenue_all_leads": str(
            sum((e.payload.price for e in sold.values() if isinstance(e, ev.LeadSold)), Decimal(0))
        ),
        "buyer_answers": dict(answers),
        "resent_after_unknown_outcome": after_unknown,
        "resent_after_5xx": after_5xx,
        "taken_by_buyer_then_resent": taken_again,
        "unresolved_taken_by_buyer_and_sold_on": double_sold,
        "by_phase": by_phase,
        "violations": {
            "lost": lost[:20],
            "lost_count": len(lost),
            "several_final_outcomes": dict(list(several.items())[:20]),
            "two_delivery_ids_for_one_buyer": dict(list(two_ids.items())[:20]),
            "sold_but_not_taken_by_the_buyer": not_taken[:20],
            "unjustified_resends": unjustified[:20],
            "unjustified_resend_count": len(unjustified),
        },
    }


def violation_count(lane: dict[str, Any]) -> int:
    """How many violations one lane's judgement holds (0: every check passed)."""
    v = lane["violations"]
    return int(
        v["lost_count"]
        + v["unjustified_resend_count"]
        + len(v["several_final_outcomes"])
        + len(v["two_delivery_ids_for_one_buyer"])
        + len(v["sold_but_not_taken_by_the_buyer"])
    )


def judge(suite: FaultSuite, run: FaultRun) -> dict[str, Any]:
    """Per lane: every lead answered 202 has exactly one final outcome (none lost); no
    buyer got a lead under two delivery ids; every repeat of a delivery id follows a try
    recorded as unknown or 5xx; every sale was taken by its buyer. Per phase: leads,
    refusals while the fault lasted and the longest wait between two 202s."""
    lanes = [
        _lane_judgement(lane, seeded.account_id, run, i)
        for i, (lane, seeded) in enumerate(zip(suite.lanes, suite.seeded, strict=True))
    ]
    phases = {}
    for phase in PHASES:
        times = sorted(p.answered_at for p in run.posted if p.phase == phase)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        phases[phase] = {
            **run.phases.get(phase, {}),
            "accepted": len(times),
            "refused": run.refused.get(phase, {}),
            "longest_gap_between_202s_s": round(max(gaps, default=0.0), 2),
            "faults": sum(f["phase"] == phase for f in run.faults),
        }
    return {
        "plan": run.plan.__dict__,
        "leads_accepted": len(run.posted),
        "stream_s": round(run.stream_s, 1),
        "drain_s": round(run.drain_s, 1),
        "phases": phases,
        "faults": run.faults,
        "lanes": lanes,
    }


def projections_settled(suite: FaultSuite, judged: dict[str, Any], timeout: float = 180) -> None:
    """Wait until billing and analytics have booked every sale of every lane's log."""
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    stack = suite.stack

    def booked() -> bool:
        for lane, seeded in zip(judged["lanes"], suite.seeded, strict=True):
            statement = operator_get(
                stack, "billing", f"/v1/accounts/{seeded.account_id}/statement?month={month}"
            )
            hourly = operator_get(
                stack, "analytics", f"/v1/stats/hourly?campaign_id={seeded.campaign_id}"
            )
            analytics_sold = sum(r["sold"] for r in hourly if r["buyer_id"] is None)
            if not (
                statement["sold_leads"] == lane["sold_all_leads"] == analytics_sold
                and Decimal(statement["revenue"]) == Decimal(lane["revenue_all_leads"])
            ):
                return False
        return True

    wait_for(booked, timeout=timeout, every=1.0, what="billing and analytics booked every sale")


def verify_projection(suite: FaultSuite, name: str) -> tuple[bool, str]:
    """``lxctl projection verify <name>``: the live projection against a replay of the
    events it processed, every table compared. True when equal, and lxctl's last lines."""
    env = {**os.environ, **service_env(name, suite.infra, suite.stack.layout)}
    lxctl = Path(sys.executable).with_name("lxctl")
    done = subprocess.run(
        [str(lxctl), "projection", "verify", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    tail = "\n".join(done.stdout.strip().splitlines()[-20:] + done.stderr.strip().splitlines()[-5:])
    return done.returncode == 0 and f"equal\t{name}" in done.stdout, tail
