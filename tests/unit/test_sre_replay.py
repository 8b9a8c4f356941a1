"""lxctl replay, lag and topics: ranges, filters, headers and argument checks (no I/O)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from lx_sre.cli import app as lxctl
from lx_sre.replay import (
    REPLAY_ID,
    REPLAYED_AT,
    REPLAYED_FROM,
    Bound,
    RecordFilter,
    build_request,
    event_type_of,
    parse_time,
    replay_headers,
    resolve_range,
)
from lx_sre.topics import GroupState, Refused, lag_of, qualify, refuse_active, unqualify
from typer.testing import CliRunner

T = parse_time("2026-11-22T03:00:00Z")


def test_a_time_without_zone_is_utc_and_a_bad_time_is_refused() -> None:
    assert parse_time("2026-11-22T03:00:00") == T
    assert parse_time("2026-11-22T04:00:00+01:00") == T
    assert int(dt.datetime(2026, 11, 22, 3, tzinfo=dt.UTC).timestamp() * 1000) == T
    with pytest.raises(Refused, match="not an ISO 8601 time"):
        parse_time("yesterday")


def test_a_time_range_starts_and_ends_at_the_first_offsets_at_or_after_each_time() -> None:
    start, stop = Bound(T), Bound(T + 60_000)
    assert resolve_range(start, stop, beginning=0, end=50, start_found=10, stop_found=30) == (
        10,
        30,
    )
    # No record at or after --to-time: the range runs to the partition's end.
    assert resolve_range(start, stop, beginning=0, end=50, start_found=10) == (10, 50)
    # No record at or after --from-time: the range is empty, at the end.
    assert resolve_range(start, stop, beginning=0, end=50) == (50, 50)


def test_offsets_are_clamped_to_what_the_partition_still_holds() -> None:
    assert resolve_range(Bound(offset=3), Bound(offset=8), beginning=5, end=7) == (5, 7)
    assert resolve_range(Bound(offset=9), Bound(offset=12), beginning=0, end=7) == (7, 7)
    assert resolve_range(Bound(offset=2), None, beginning=0, end=7) == (2, 7)
    # A time start later than an offset end gives an empty range, never a negative one.
    assert resolve_range(Bound(T), Bound(offset=4), beginning=0, end=9, start_found=6) == (6, 6)


def test_the_filter_matches_any_given_key_and_any_given_type_from_header_or_body() -> None:
    sold = json.dumps({"type": "LeadSold"}).encode()
    header = [("lx-event-type", b"LeadUnsold")]
    by_type = RecordFilter(types=frozenset({"LeadSold"}))
    assert by_type.matches(b"k", [], sold)
    assert not by_type.matches(b"k", header, sold)  # the header wins over the body
    assert not by_type.matches(b"k", [], b"\xff not json")
    assert not by_type.matches(b"k", [], b"[1, 2]")
    both = RecordFilter(keys=frozenset({b"a", b"b"}), types=frozenset({"LeadSold"}))
    assert both.matches(b"b", [], sold)
    assert not both.matches(b"c", [], sold)
    assert not both.matches(None, [], sold)
    assert RecordFilter().matches(None, [], None)
    assert event_type_of([], b'{"type": 7}') is None


def test_replay_headers_keep_the_original_ones_and_replace_an_earlier_replay_mark() -> None:
    replay_id, at = uuid.uuid4(), dt.datetime(2026, 11, 22, 3, tzinfo=dt.UTC)
    original = [("lx-event-type", b"LeadSold"), (REPLAYED_FROM, b"old:0:1"), (REPLAY_ID, b"x")]
    headers = replay_headers(original, "p.delivery.outcome:3:17", replay_id, at)
    assert headers == [
        ("lx-event-type", b"LeadSold"),
        (REPLAYED_FROM, b"p.delivery.outcome:3:17"),
        (REPLAY_ID, str(replay_id).encode()),
        (REPLAYED_AT, b"2026-11-22T03:00:00+00:00"),
    ]


def test_a_valid_request_is_normalised() -> None:
    request = build_request(
        "delivery.outcome",
        from_time="2026-11-22T03:00:00",
        to_offset=100,
        partitions=[3, 1, 3],
        keys=["lead-1"],
        types=["LeadSold"],
        to_topic="replayed",
        rate=50,
    )
    assert request.start == Bound(T)
    assert request.stop == Bound(offset=100)
    assert request.partitions == (1, 3)
    assert request.filtered
    # A group may omit the end: the group reads on to the log's end anyway.
    assert build_request("t", from_offset=0, group="billing").stop is None


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"to_topic": "x", "to_offset": 5}, "exactly one of --from-time and --from-offset"),
        (
            {"from_offset": 0, "from_time": "2026-11-22T03:00:00", "to_topic": "x"},
            "exactly one of --from-time and --from-offset",
        ),
        ({"from_offset": 0, "to_offset": 5}, "exactly one target"),
        ({"from_offset": 0, "to_offset": 5, "to_topic": "x", "group": "g"}, "exactly one target"),
        ({"from_offset": 0, "to_topic": "x"}, "needs an end"),
        ({"from_offset": 0, "to_offset": 5, "to_time": "2026-11-22", "group": "g"}, "at most one"),
        ({"from_offset": 0, "group": "g", "keys": ["k"]}, "cannot apply to --group"),
        ({"from_offset": 0, "group": "g", "types": ["LeadSold"]}, "cannot apply to --group"),
        ({"from_offset": 0, "group": "g", "rate": 10}, "--rate applies to --to-topic only"),
        ({"from_offset": 0, "to_offset": 5, "to_topic": "x", "rate": 0}, "positive"),
        ({"from_offset": -1, "to_offset": 5, "to_topic": "x"}, "must not be negative"),
        ({"from_offset": 0, "to_offset": 5, "to_topic": "x", "partitions": [-1]}, "negative"),
        ({"from_offset": 5, "to_offset": 5, "to_topic": "x"}, "end is exclusive"),
        (
            {"from_time": "2026-11-22T03:00", "to_time": "2026-11-22T02:00", "to_topic": "x"},
            "later than --from-time",
        ),
    ],
)
def test_invalid_arguments_are_refused_with_the_reason(
    arguments: dict[str, object], reason: str
) -> None:
    with pytest.raises(Refused, match=reason.replace("-", r"\-")):
        build_request("delivery.outcome", **arguments)  # type: ignore[arg-type]


def test_the_command_exits_2_on_invalid_arguments_before_any_connection() -> None:
    result = CliRunner().invoke(
        lxctl,
        ["replay", "lead.received", "--from-offset", "0", "--group", "billing", "--key", "k"],
    )
    assert result.exit_code == 2, result.output
    assert "refused: --key/--type filters cannot apply to --group" in result.stderr
    assert result.stdout == ""


def test_names_are_qualified_with_the_prefix_once() -> None:
    assert qualify("lead.received", "t1.") == "t1.lead.received"
    assert qualify("t1.lead.received", "t1.") == "t1.lead.received"
    assert qualify("lead.received", "") == "lead.received"
    assert unqualify("t1.billing", "t1.") == "billing"


def test_only_an_inactive_group_may_be_moved_and_the_refusal_says_why() -> None:
    refuse_active(GroupState("t1.billing", "Empty", 0))
    refuse_active(GroupState("t1.new", "Dead", 0))
    with pytest.raises(Refused) as refused:
        refuse_active(GroupState("t1.billing", "Stable", 2))
    assert str(refused.value).startswith(
        "offsets of group t1.billing can only be reset if the group is inactive,"
        " but its state is Stable with 2 active member(s)"
    )
    with pytest.raises(Refused, match="PreparingRebalance"):
        refuse_active(GroupState("t1.billing", "PreparingRebalance", 1))


def test_lag_counts_from_the_beginning_when_nothing_was_committed() -> None:
    assert lag_of(40, beginning=0, end=50) == 10
    assert lag_of(None, beginning=5, end=50) == 45
    assert lag_of(-1, beginning=0, end=3) == 3
    assert lag_of(50, beginning=0, end=50) == 0
