"""Faults during a stream of leads, at a small size (``bench/faults.py`` runs the full one).

On a private Kafka and PostgreSQL (started for this module on ports of its own, deleted
at the end): PostgreSQL killed and restarted, the broker killed and restarted, every
service killed (-9) round after round, while buyers hang, answer 503, reset the
connection or answer slowly (one campaign per behaviour; see ``tests/e2e/support.py``).
Then, for every campaign: each lead answered 202 reaches exactly one final outcome; no
buyer gets a lead under two delivery ids; a delivery id is posted again only after a try
recorded as an unknown outcome or a 5xx; billing and analytics equal a replay of the log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.support import (
    LANES,
    PHASES,
    FaultPlan,
    FaultSuite,
    fault_suite,
    judge,
    projections_settled,
    run_faults,
    verify_projection,
)

# Bounded: the stack's start, about two minutes of faults at 8 leads/s, the drain (a job
# held by a killed delivery waits out its 90 s lease) and the replays.
pytestmark = pytest.mark.timeout(1200)

SMALL = FaultPlan(
    leads=400,
    rate_per_s=8.0,
    service_rounds=2,
    broker_restarts=1,
    database_restarts=1,
    drain_s=300.0,
    shares=(0.05, 0.1, 0.1, 0.7, 0.05),
)
MIN_LEADS_PER_LANE = 40  # fewer proves nothing


@pytest.fixture(scope="module")
def faults() -> Iterator[tuple[FaultSuite, dict[str, Any]]]:
    with fault_suite(f"f{uuid.uuid4().hex[:8]}") as suite:
        judged = judge(suite, run_faults(suite, SMALL, say=print))
        print("\nfault suite:", json.dumps({k: v for k, v in judged.items() if k != "plan"}))
        yield suite, judged


def _lane(faults: tuple[FaultSuite, dict[str, Any]], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [lane for lane in faults[1]["lanes"] if lane["lane"] == name]
    (lane,) = found
    return lane


LANE_NAMES = [lane.name for lane in LANES]


def test_every_fault_was_injected_while_leads_flowed(
    faults: tuple[FaultSuite, dict[str, Any]],
) -> None:
    suite, judged = faults
    phases = judged["phases"]
    assert phases["services"]["faults"] >= SMALL.service_rounds * 7
    assert phases["kafka"]["faults"] >= SMALL.broker_restarts
    assert phases["postgres"]["faults"] >= SMALL.database_restarts
    for phase in PHASES:
        assert phases[phase]["accepted"] > 0, f"no lead accepted during {phase}"
    for lane in suite.lanes:
        figures = _lane(faults, lane.name)
        assert figures["accepted"] >= MIN_LEADS_PER_LANE, figures
        if lane.fault is not None:
            assert figures["buyer_answers"].get(lane.fault, 0) > 0, f"{lane.name}: fault unmet"


@pytest.mark.parametrize("lane", LANE_NAMES)
def test_every_accepted_lead_reaches_exactly_one_final_outcome(
    faults: tuple[FaultSuite, dict[str, Any]], lane: str
) -> None:
    figures = _lane(faults, lane)
    violations = figures["violations"]
    assert violations["lost_count"] == 0, f"leads lost: {violations['lost']}"
    assert not violations["several_final_outcomes"]
    assert figures["sold"] + figures["unsold"] == figures["accepted"]


@pytest.mark.parametrize("lane", LANE_NAMES)
def test_no_buyer_gets_a_lead_under_two_delivery_ids(
    faults: tuple[FaultSuite, dict[str, Any]], lane: str
) -> None:
    assert not _lane(faults, lane)["violations"]["two_delivery_ids_for_one_buyer"]


@pytest.mark.parametrize("lane", LANE_NAMES)
def test_a_delivery_id_is_posted_again_only_after_an_unknown_outcome_or_a_5xx(
    faults: tuple[FaultSuite, dict[str, Any]], lane: str
) -> None:
    violations = _lane(faults, lane)["violations"]
    assert violations["unjustified_resend_count"] == 0, violations["unjustified_resends"]


@pytest.mark.parametrize("lane", LANE_NAMES)
def test_every_sale_was_taken_by_its_buyer(
    faults: tuple[FaultSuite, dict[str, Any]], lane: str
) -> None:
    assert not _lane(faults, lane)["violations"]["sold_but_not_taken_by_the_buyer"]


def test_billing_and_analytics_equal_a_replay_of_the_log(
    faults: tuple[FaultSuite, dict[str, Any]],
) -> None:
    suite, judged = faults
    projections_settled(suite, judged)
    for name in ("billing", "analytics"):
        equal, report = verify_projection(suite, name)
        assert equal, f"lxctl projection verify {name}:\n{report}"
