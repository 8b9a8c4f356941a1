"""``make bench-faults``: the fault suite at full size (``tests/e2e/test_faults.py`` runs
it small in ``make test``).

A private Kafka and PostgreSQL (own ports below the ephemeral range, own data folders,
deleted at the end, failures included), every service and the fake buyer on them, one
campaign per buyer behaviour (plain, hang, error 503, connection reset, slow). A stream
of ``LX_BENCH_FAULT_LEADS`` leads (20,000) at ``LX_BENCH_FAULT_RATE`` per second runs
through the phases: calm, PostgreSQL killed (-9) and restarted, the broker killed and
restarted, every service killed (-9) round after round, calm. Then, per campaign: each
lead answered 202 has exactly one final outcome, none is lost, no buyer got a lead under
two delivery ids, a delivery id was posted again only after a try recorded as an unknown
outcome or a 5xx, and ``lxctl projection verify`` finds billing and analytics equal to a
replay of the log. Prints a summary, writes bench-results/faults.json, exits 1 on any
violation. Loopback only; it stops by itself: ``LX_BENCH_FAULT_LIMIT_S`` (default 3600)
is a hard limit on the whole run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from tests.e2e.support import (
    PHASES,
    FaultPlan,
    fault_suite,
    judge,
    projections_settled,
    run_faults,
    verify_projection,
    violation_count,
)

RESULTS = Path(os.environ.get("LX_BENCH_RESULTS", "bench-results"))
LEADS = int(os.environ.get("LX_BENCH_FAULT_LEADS", "20000"))
# 30/s: about two thirds of what the whole platform finishes per second on 2 cores
# (make bench-load), leaving room for the restarts and retries the faults cause.
RATE = float(os.environ.get("LX_BENCH_FAULT_RATE", "30"))
LIMIT_S = int(os.environ.get("LX_BENCH_FAULT_LIMIT_S", "3600"))

PLAN = FaultPlan(
    leads=LEADS,
    rate_per_s=RATE,
    service_rounds=int(os.environ.get("LX_BENCH_FAULT_ROUNDS", "3")),
    broker_restarts=int(os.environ.get("LX_BENCH_FAULT_BROKER_RESTARTS", "2")),
    database_restarts=int(os.environ.get("LX_BENCH_FAULT_DB_RESTARTS", "2")),
    workers=8,
    drain_s=600.0,
)


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    # Raised in the main thread: the context managers below still stop the stack and
    # delete the private servers on the way out.
    raise TimeoutError(f"fault bench overran its {LIMIT_S}s limit")


def _stamp(line: str) -> None:
    print(line, flush=True)


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"fault suite: {report['leads_accepted']} leads answered 202, stream "
        f"{report['stream_s']}s, drain {report['drain_s']}s",
        "",
        f"{'phase':<9} {'faults':>6} {'202s':>6} {'refused':>8} {'longest 202 gap s':>18}",
    ]
    for phase in PHASES:
        p = report["phases"][phase]
        refused = sum(p["refused"].values())
        lines.append(
            f"{phase:<9} {p['faults']:>6} {p['accepted']:>6} {refused:>8} "
            f"{p['longest_gap_between_202s_s']:>18}"
        )
    lines += [
        "",
        f"{'lane':<6} {'leads':>6} {'sold':>6} {'unsold':>6} {'lost':>5} {'resent/unknown':>15} "
        f"{'resent/5xx':>10} {'taken+resent':>12} {'unresolved+sold':>15} {'violations':>10}",
    ]
    for lane in report["lanes"]:
        v = lane["violations"]
        count = violation_count(lane)
        lines.append(
            f"{lane['lane']:<6} {lane['accepted']:>6} {lane['sold']:>6} {lane['unsold']:>6} "
            f"{v['lost_count']:>5} {lane['resent_after_unknown_outcome']:>15} "
            f"{lane['resent_after_5xx']:>10} {lane['taken_by_buyer_then_resent']:>12} "
            f"{lane['unresolved_taken_by_buyer_and_sold_on']:>15} {count:>10}"
        )
    lines.append("")
    for name, check in report["projections"].items():
        lines.append(f"lxctl projection verify {name}: {'equal' if check['equal'] else 'DIFFERS'}")
    return "\n".join(lines)


def violations(report: dict[str, Any]) -> int:
    count = sum(violation_count(lane) for lane in report["lanes"])
    return count + sum(not c["equal"] for c in report["projections"].values())


def main() -> int:
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(LIMIT_S)
    started = time.monotonic()
    tag = f"bf{uuid.uuid4().hex[:8]}"
    _stamp(f"fault bench {tag}: {LEADS} leads at {RATE}/s, limit {LIMIT_S}s")
    try:
        with fault_suite(tag) as suite:
            _stamp(f"{time.monotonic() - started:.1f}s stack up; streaming")
            report = judge(suite, run_faults(suite, PLAN, say=_stamp))
            t0 = time.monotonic()
            projections_settled(suite, report, timeout=300)
            report["projections"] = {}
            for name in ("billing", "analytics"):
                equal, tail = verify_projection(suite, name)
                report["projections"][name] = {"equal": equal, "lxctl": tail}
            report["verify_s"] = round(time.monotonic() - t0, 1)
    finally:
        signal.alarm(0)
    report["total_s"] = round(time.monotonic() - started, 1)
    report["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(report, indent=2, default=str))
    print(summary(report))
    print(f"\ntotal {report['total_s']}s; written to {RESULTS / 'faults.json'}")
    return 1 if violations(report) else 0


if __name__ == "__main__":
    sys.exit(main())
