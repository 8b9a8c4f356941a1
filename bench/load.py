"""``make bench``: the whole stack under load on this machine, next to its own limits.

1. The machine's limits: a raw aiokafka producer and consumer, a raw PostgreSQL COPY.
2. A stack of its own (every service as a process, the fake buyer answering at once),
   seeded with one campaign, one source and one buyer.
3. Open loop: leads posted at fixed rates (a request is sent on schedule whatever the
   earlier ones are doing, so a slow platform shows as latency, not as a lower rate),
   each step ``LX_BENCH_STEP_S`` seconds. Latency is measured from the request to its
   ``202`` and from the request to the lead's final outcome (its ``LeadSold`` /
   ``LeadUnsold`` read from ``delivery.outcome``).
4. Closed loop: ``LX_BENCH_WORKERS`` clients posting back to back: ingest's maximum.
5. A sustained run of ``LX_BENCH_SOAK_S`` seconds (600, the issue's ten minutes; 0 skips
   it) at ``LX_BENCH_SOAK_RATE`` leads/s — by default 80 % of the end-to-end rate of
   the last step that kept up — with every consumer group's lag sampled along the way,
   to show whether it grows.
Peak resident memory of every service is sampled throughout.

Writes bench-results/load/{report.json, report.md, latency.png}. Loopback only, bounded
by the step durations; it stops the stack it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiokafka import AIOKafkaConsumer
from lx_devstack.infra import Infra, start_infra
from lx_devstack.stack import (
    DEMO_LEAD,
    SERVICES,
    Stack,
    StackLayout,
    config_settled,
    seed,
)

from bench.machine import copy_limit, http_limit, kafka_limits

RESULTS = Path(os.environ.get("LX_BENCH_RESULTS", "bench-results")) / "load"
RATES = [int(r) for r in os.environ.get("LX_BENCH_RATES", "25,50,100,200,500,1000").split(",")]
STEP_S = float(os.environ.get("LX_BENCH_STEP_S", "20"))
DRAIN_S = float(os.environ.get("LX_BENCH_DRAIN_S", "30"))
BACKLOG_DRAIN_S = float(os.environ.get("LX_BENCH_BACKLOG_DRAIN_S", "300"))
WORKERS = int(os.environ.get("LX_BENCH_WORKERS", "64"))
CLOSED_S = float(os.environ.get("LX_BENCH_CLOSED_S", "20"))
SOAK_S = float(os.environ.get("LX_BENCH_SOAK_S", "600"))
SOAK_RATE = os.environ.get("LX_BENCH_SOAK_RATE", "auto")  # leads/s, or "auto" (see above)
# A step is saturated when the platform carries leads to their final outcome at less
# than this share of the rate offered: higher rates are then not tried (each would only
# queue more work behind the same limit), and said so.
BARE_HTTP_PORT = 18_590  # below the stack's ports and the kernel's ephemeral range
IDLE_S = float(os.environ.get("LX_BENCH_IDLE_S", "10"))
RECORDS_PER_LEAD = 6  # see markdown(): what one sold lead writes to Kafka
SATURATED_SHARE = float(os.environ.get("LX_BENCH_SATURATED_SHARE", "0.8"))
RAW_MESSAGES = int(os.environ.get("LX_BENCH_RAW_MESSAGES", "200000"))
RAW_ROWS = int(os.environ.get("LX_BENCH_RAW_ROWS", "500000"))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Sent:
    t0: float
    t_answer: float | None = None
    status: int | None = None
    lead_id: str | None = None


@dataclass
class Outcomes:
    """Final outcomes read from delivery.outcome: lead id -> wall time it was read."""

    at: dict[str, float] = field(default_factory=dict)


async def watch_outcomes(bootstrap: str, topic: str, out: Outcomes, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=5_000)
            now = time.time()
            for records in batch.values():
                for record in records:
                    # Cheap filter before parsing: only final outcomes matter here.
                    value = record.value or b""
                    if b'"LeadSold"' not in value and b'"LeadUnsold"' not in value:
                        continue
                    lead = json.loads(value)["payload"]["lead_id"]
                    out.at.setdefault(lead, now)
    finally:
        await consumer.stop()


def a_lead(n: int) -> dict[str, Any]:
    return {**DEMO_LEAD, "email": f"bench{n}-{uuid.uuid4().hex[:8]}@example.com"}


async def post(session: aiohttp.ClientSession, url: str, key: str, n: int, sent: Sent) -> None:
    try:
        async with session.post(
            url, json=a_lead(n), headers={"authorization": f"Bearer {key}"}
        ) as response:
            body = await response.read()
            sent.status = response.status
            if response.status == 202:
                sent.lead_id = json.loads(body)["lead_id"]
    except (aiohttp.ClientError, TimeoutError):
        sent.status = -1  # counted under status "-1" in the step's summary
    finally:
        sent.t_answer = time.time()


async def open_loop(
    session: aiohttp.ClientSession, url: str, key: str, rate: int, seconds: float
) -> list[Sent]:
    """Send ``rate`` requests per second on a fixed schedule for ``seconds``."""
    total = int(rate * seconds)
    sent: list[Sent] = []
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for n in range(total):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        s = Sent(t0=time.time())
        sent.append(s)
        tasks.append(asyncio.create_task(post(session, url, key, n, s)))
    await asyncio.gather(*tasks)
    return sent


async def closed_loop(
    session: aiohttp.ClientSession, url: str, key: str, workers: int, seconds: float
) -> list[Sent]:
    sent: list[Sent] = []
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        n = w * 10_000_000
        while time.monotonic() < deadline:
            s = Sent(t0=time.time())
            sent.append(s)
            await post(session, url, key, n, s)
            n += 1

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return sent


async def drive_bare(url: str, seconds: float) -> tuple[int, float]:
    """Closed loop against ``bench.bare_http`` (the web stack alone): 202s answered."""
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:
        sent = await closed_loop(session, url, "none", WORKERS, seconds)
    answered = sum(1 for s in sent if s.status == 202)
    if not answered:
        raise OSError("the bare HTTP server does not answer")
    return answered, seconds


async def sustained(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    steps: list[dict[str, Any]],
    outcomes: Outcomes,
    cpu: CpuMeter,
    infra: Infra,
    layout: StackLayout,
) -> dict[str, Any]:
    """``SOAK_S`` seconds at a fixed rate, consumer lag sampled every 30 s at most."""
    if SOAK_RATE == "auto":
        # A saturated step's rate is a burst drained with large batches, more than the
        # platform holds for long (measured: 68/s in a burst, 44/s held for ten
        # minutes): the last step that kept up is the base.
        kept_up = [s for s in steps if not s["saturated"]] or steps[:1]
        best = max((s["end_to_end_per_s"] or 0.0 for s in kept_up), default=0.0)
        rate = max(1, int(best * 0.8))
    else:
        rate = int(SOAK_RATE)
    lag_samples: list[tuple[float, dict[str, int]]] = []
    before = cpu.read()
    task = asyncio.create_task(open_loop(session, url, key, rate, SOAK_S))
    started = time.monotonic()
    while not task.done():
        await asyncio.wait({task}, timeout=min(30.0, SOAK_S / 10))
        lag_samples.append(
            (
                round(time.monotonic() - started),
                await lag_of(infra.kafka_bootstrap, layout.topic_prefix),
            )
        )
    sent = task.result()
    await drain(sent, outcomes, DRAIN_S)
    soak = summarise(f"sustained {rate}/s for {SOAK_S:.0f} s", sent, outcomes, SOAK_S)
    soak["cpu_ms_per_lead"] = cpu.per_lead_ms(before, cpu.read(), soak["final_outcomes"])
    soak["lag_samples"] = lag_samples
    totals = [sum(lag.values()) for _, lag in lag_samples]
    half = len(totals) // 2
    # Lag "does not grow" when the second half's largest sample is no larger than the
    # first half's: a backlog that builds up shows as a rising maximum.
    soak["lag_grows"] = bool(half) and max(totals[half:]) > max(totals[:half])
    print(json.dumps(soak), flush=True)
    return soak


async def drain(sent: list[Sent], outcomes: Outcomes, within: float) -> None:
    wanted = {s.lead_id for s in sent if s.lead_id}
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and not wanted <= outcomes.at.keys():  # noqa: ASYNC110 - polling a dict filled by another task
        await asyncio.sleep(0.25)


def summarise(label: str, sent: list[Sent], outcomes: Outcomes, seconds: float) -> dict[str, Any]:
    accepted = [s for s in sent if s.status == 202]
    answered = [(s.t_answer - s.t0) * 1000 for s in accepted if s.t_answer]
    finals = [
        (outcomes.at[s.lead_id] - s.t0) * 1000
        for s in accepted
        if s.lead_id and s.lead_id in outcomes.at
    ]
    statuses: dict[str, int] = {}
    for s in sent:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    first = min((s.t0 for s in sent), default=0.0)
    last_final = max(
        (outcomes.at[s.lead_id] for s in accepted if s.lead_id in outcomes.at), default=first
    )
    return {
        "label": label,
        "offered_per_s": len(sent) / seconds if seconds else None,
        "requests": len(sent),
        "statuses": statuses,
        "accepted_per_s": len(accepted) / seconds if seconds else None,
        "final_outcomes": len(finals),
        "missing_outcomes": len(accepted) - len(finals),
        "end_to_end_per_s": len(finals) / (last_final - first) if last_final > first else None,
        "ms_to_202": {f"p{q}": pct(answered, q) for q in (50, 95, 99)},
        "ms_to_final": {f"p{q}": pct(finals, q) for q in (50, 95, 99)},
    }


class MemorySampler:
    """Peak resident set size of each service process, sampled twice a second."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, proc in self.stack.processes.items():
                pid = proc.pid()
                if pid is None:
                    continue
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                    self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), rss)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class CpuMeter:
    """CPU seconds used by each part of the platform: every service process, the fake
    buyer, the Kafka broker, PostgreSQL (the postmaster with its live backends and the
    ended ones it reaped) and this load generator. Differences between two readings
    divided by the leads of a step give the CPU each lead costs in each part, which is
    what limits the rate on a machine where all of them share two cores."""

    def __init__(self, stack: Stack, infra: Infra) -> None:
        self.stack = stack
        self.infra = infra

    def read(self) -> dict[str, float]:
        parts: dict[str, float] = {}
        for name, proc in self.stack.processes.items():
            pid = proc.pid()
            if pid is not None:
                parts[name] = _cpu(pid)
        kafka_pid = self.infra.kafka.pid() if self.infra.kafka else None
        if kafka_pid is not None:
            parts["kafka"] = _cpu(kafka_pid)
        pg_pid = self.infra.pg.pid() if self.infra.pg else None
        if pg_pid is not None:
            with contextlib.suppress(psutil.Error):
                master = psutil.Process(pg_pid)
                times = master.cpu_times()
                total = times.user + times.system + times.children_user + times.children_system
                for child in master.children(recursive=True):
                    total += _cpu(child.pid)
                parts["postgres"] = total
        parts["load generator"] = _cpu(os.getpid())
        return parts

    @staticmethod
    def per_lead_ms(
        before: dict[str, float], after: dict[str, float], leads: int
    ) -> dict[str, float]:
        if leads <= 0:
            return {}
        return {
            k: round((after[k] - before.get(k, 0.0)) / leads * 1000, 2)
            for k in after
            if k in before
        }


def _cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


async def lag_of(bootstrap: str, prefix: str) -> dict[str, int]:
    """Records behind per consumer group (end offsets minus committed), summed."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        lags: dict[str, int] = {}
        for group in ("router", "delivery", "billing", "analytics", "admin-trace", "ingest"):
            offsets = await admin.list_consumer_group_offsets(f"{prefix}{group}")
            if not offsets:
                continue
            ends = await consumer.end_offsets(list(offsets))
            lags[group] = sum(max(0, ends[tp] - meta.offset) for tp, meta in offsets.items())
        return lags
    finally:
        await consumer.stop()
        await admin.close()


@contextlib.contextmanager
def bench_stack(infra: Infra) -> Iterator[Stack]:
    tag = f"bench{uuid.uuid4().hex[:6]}"
    layout = StackLayout(
        base_port=18_600,
        buyer_port=18_600 + len(SERVICES),
        db_prefix=f"{tag}_",
        topic_prefix=f"{tag}.",
    )
    layout.run_folder = layout.run_folder / tag
    layout.log_folder = layout.log_folder / tag
    stack = Stack(infra, layout)
    try:
        stack.start_all()
        yield stack
    finally:
        stack.stop_all()


async def run_load(stack: Stack, infra: Infra) -> dict[str, Any]:
    layout = stack.layout
    cpu = CpuMeter(stack, infra)
    seeded = await asyncio.to_thread(
        seed,
        layout.url("admin"),
        layout.operator_token,
        [("Fast buyer", f"{layout.buyer_url}/buyers/fast/accept", "30.00", 1)],
        wait_ingest_url=layout.url("ingest"),
        wait_for_groups=config_settled(layout, infra.kafka_bootstrap),
    )
    url = f"{layout.url('ingest')}/v1/leads"
    outcomes = Outcomes()
    stop = asyncio.Event()
    watcher = asyncio.create_task(
        watch_outcomes(
            infra.kafka_bootstrap, f"{layout.topic_prefix}delivery.outcome", outcomes, stop
        )
    )
    await asyncio.sleep(2)  # the watcher's partitions assigned before the first lead
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    steps: list[dict[str, Any]] = []
    soak: dict[str, Any] | None = None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await open_loop(session, url, seeded.api_key, 20, 2)  # warm-up, not reported
        await asyncio.sleep(5)  # settled
        before = cpu.read()
        await asyncio.sleep(IDLE_S)
        # What each part burns with no leads at all (polls, heartbeats, timers): at low
        # rates it dominates the CPU per lead.
        idle = {k: round(v / IDLE_S, 1) for k, v in cpu.per_lead_ms(before, cpu.read(), 1).items()}
        print(json.dumps({"idle_cpu_ms_per_s": idle}), flush=True)
        skipped: list[int] = []
        for rate in RATES:
            if steps and steps[-1]["saturated"]:
                skipped.append(rate)
                continue
            before = cpu.read()
            sent = await open_loop(session, url, seeded.api_key, rate, STEP_S)
            await drain(sent, outcomes, DRAIN_S)
            step = summarise(f"open {rate}/s", sent, outcomes, STEP_S)
            step["cpu_ms_per_lead"] = cpu.per_lead_ms(before, cpu.read(), step["final_outcomes"])
            step["saturated"] = (step["end_to_end_per_s"] or 0.0) < SATURATED_SHARE * rate
            if step["saturated"]:
                # Its backlog must not spill into the closed loop and the sustained run.
                await drain(sent, outcomes, BACKLOG_DRAIN_S)
                step["drained_backlog"] = {s.lead_id for s in sent if s.lead_id} <= set(outcomes.at)
            steps.append(step)
            print(json.dumps(step), flush=True)
        before = cpu.read()
        sent = await closed_loop(session, url, seeded.api_key, WORKERS, CLOSED_S)
        await drain(sent, outcomes, DRAIN_S)
        closed = summarise(f"closed {WORKERS} workers", sent, outcomes, CLOSED_S)
        closed["cpu_ms_per_lead"] = cpu.per_lead_ms(before, cpu.read(), closed["final_outcomes"])
        print(json.dumps(closed), flush=True)
        if SOAK_S > 0:
            soak = await sustained(
                session, url, seeded.api_key, steps, outcomes, cpu, infra, layout
            )
    stop.set()
    await watcher
    return {
        "idle_cpu_ms_per_s": idle,
        "steps": steps,
        "skipped_rates": skipped,
        "closed_loop": closed,
        "soak": soak,
    }


def plot(steps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [s["offered_per_s"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, style in (("ms_to_202", "-o"), ("ms_to_final", "-s")):
        for q in ("p50", "p99"):
            ax.plot(rates, [s[key][q] for s in steps], style, label=f"{key[3:]} {q}")
    ax.set_xlabel("offered load (leads/s, open loop)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("LeadExchange on one 2-core machine: latency against load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratio(value: float | None, limit: float) -> str:
    return "n/a" if value is None else f"{value:,.0f} ({value / limit:.1%} of the limit)"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Load benchmark",
        "",
        f"Run {report['started_at']} on {report['cpus']} CPUs; every service, Kafka,",
        "PostgreSQL, the fake buyer and the load generator on this one machine.",
        "",
        "## The machine's own limits (same run)",
        "",
        "- raw aiokafka producer, acks=all, idempotent:"
        f" {m['kafka_produce_msgs_per_s']:,.0f} msgs/s",
        f"- raw aiokafka consumer: {m['kafka_consume_msgs_per_s']:,.0f} msgs/s",
        f"- raw PostgreSQL COPY: {m['pg_copy_rows_per_s']:,.0f} rows/s",
        "- the web stack alone (uvicorn + FastAPI + pydantic answering 202, nothing"
        f" behind it, same generator): {m['bare_http_202_per_s']:,.0f} requests/s",
        "",
        "## Open loop",
        "",
        "| step | accepted/s | to final/s | 202 p50 / p95 / p99 ms"
        " | final p50 / p95 / p99 ms | missing | statuses |",
        "|---|---|---|---|---|---|---|",
    ]

    def ms(d: dict[str, float | None]) -> str:
        return " / ".join("-" if v is None else f"{v:.0f}" for v in d.values())

    for s in report["load"]["steps"] + [report["load"]["closed_loop"]]:
        e2e = s["end_to_end_per_s"]
        lines.append(
            f"| {s['label']} | {s['accepted_per_s']:.0f} | {'-' if e2e is None else f'{e2e:.0f}'}"
            f" | {ms(s['ms_to_202'])} | {ms(s['ms_to_final'])} | {s['missing_outcomes']}"
            f" | {s['statuses']} |"
        )
    closed = report["load"]["closed_loop"]
    best = max(
        (s for s in report["load"]["steps"] if s["end_to_end_per_s"]),
        key=lambda s: s["end_to_end_per_s"],
        default=None,
    )
    e2e = best["end_to_end_per_s"] if best else None
    records = RECORDS_PER_LEAD
    lines += [
        "",
        *(
            [f"Not tried (a lower rate was saturated): {report['load']['skipped_rates']} leads/s."]
            if report["load"].get("skipped_rates")
            else []
        ),
        "",
        "## Against the machine",
        "",
        f"A sold lead is {records} Kafka records (lead.received, usage.incremented x2,",
        "lead.routed, delivery.outcome x2 — attempted and sold) and about a dozen",
        "PostgreSQL transactions across five services; the ratios compare the platform",
        "with the bare broker on the same cores.",
        "",
        "- ingest accepted (closed loop): "
        + ratio(closed["accepted_per_s"], m["kafka_produce_msgs_per_s"])
        + " of raw produce; as records (x2): "
        + ratio(
            closed["accepted_per_s"] * 2 if closed["accepted_per_s"] else None,
            m["kafka_produce_msgs_per_s"],
        ),
        "- ingest accepted (closed loop) against the bare web stack: "
        + ratio(closed["accepted_per_s"], m["bare_http_202_per_s"]),
        "- end to end (best open-loop step): "
        + ratio(e2e, m["kafka_produce_msgs_per_s"])
        + f"; as records (x{records}): "
        + ratio(e2e * records if e2e else None, m["kafka_produce_msgs_per_s"]),
        "",
        "## CPU per lead (ms), by part",
        "",
        "Every part shares the machine's cores, so the sum of a row bounds the rate:",
        f"{report['cpus']} cores = {report['cpus'] * 1000} ms of CPU per second.",
        "",
    ]
    rows = [*report["load"]["steps"], closed]
    parts = sorted({k for r in rows for k in r.get("cpu_ms_per_lead", {})})
    lines += [
        "| step | " + " | ".join(parts) + " | total |",
        "|---" * (len(parts) + 2) + "|",
    ]
    idle = report["load"].get("idle_cpu_ms_per_s", {})
    lines.append(
        "| idle, ms per second | "
        + " | ".join(f"{idle[k]:.1f}" if k in idle else "-" for k in parts)
        + f" | {sum(idle.values()):.1f} |"
    )
    for r in rows:
        c = r.get("cpu_ms_per_lead", {})
        lines.append(
            f"| {r['label']} | "
            + " | ".join(f"{c[k]:.1f}" if k in c else "-" for k in parts)
            + f" | {sum(c.values()):.1f} |"
        )
    lines += [
        "",
        "## Peak resident memory (MB)",
        "",
        *(f"- {k}: {v:.0f}" for k, v in sorted(report["peak_rss_mb"].items())),
        "",
        "![latency against load](latency.png)",
        "",
    ]
    if report["load"].get("soak"):
        soak = report["load"]["soak"]
        lines += [
            "## Sustained run",
            "",
            f"{soak['label']}: accepted {soak['accepted_per_s']:.1f}/s, to a final outcome"
            f" {soak['end_to_end_per_s'] or 0:.1f}/s, missing {soak['missing_outcomes']};"
            f" 202 p50/p95/p99 {ms(soak['ms_to_202'])} ms, final {ms(soak['ms_to_final'])} ms;"
            f" lag {'grows' if soak['lag_grows'] else 'does not grow'}.",
            "",
            "Records behind, per consumer group (seconds into the run):",
            "",
            *(f"- {t:.0f} s: {lag}" for t, lag in soak["lag_samples"]),
            "",
        ]
    return "\n".join(lines)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through bench_stack's finally: stack stopped


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    RESULTS.mkdir(parents=True, exist_ok=True)
    infra = start_infra()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print("measuring the machine's limits...", flush=True)
    machine = {
        **asyncio.run(kafka_limits(infra, RAW_MESSAGES)),
        **copy_limit(infra, RAW_ROWS),
        **asyncio.run(http_limit(BARE_HTTP_PORT, drive_bare, CLOSED_S)),
    }
    print(json.dumps(machine), flush=True)
    with bench_stack(infra) as stack, MemorySampler(stack) as memory:
        load = asyncio.run(run_load(stack, infra))
    report = {
        "started_at": started_at,
        "cpus": os.cpu_count(),
        "machine": machine,
        "load": load,
        "peak_rss_mb": memory.peak_mb,
        "settings": {
            "rates": RATES,
            "step_s": STEP_S,
            "workers": WORKERS,
            "closed_s": CLOSED_S,
            "soak_s": SOAK_S,
            "soak_rate": SOAK_RATE,
        },
    }
    (RESULTS / "report.json").write_text(json.dumps(report, indent=2))
    plot(load["steps"], RESULTS / "latency.png")
    (RESULTS / "report.md").write_text(markdown(report))
    print(f"wrote {RESULTS}/report.json, report.md, latency.png")
    print(
        f"median of final latencies per step: {[s['ms_to_final']['p50'] for s in load['steps']]}",
        flush=True,
    )


if __name__ == "__main__":
    main()
