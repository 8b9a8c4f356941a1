"""lxctl dlq: names, headers, statuses and what an action applies to (no I/O)."""

from __future__ import annotations

import pytest
from lx_sre.cli import app as lxctl
from lx_sre.deadletters import (
    DROPPED,
    PENDING,
    RETRIED,
    DeadLetter,
    choose,
    dead_letter_name,
    pretty_value,
    truncate,
)
from lx_sre.topics import Refused
from typer.testing import CliRunner

HEADERS = [
    ("lx-dlq-origin-topic", b"t1.lead.received"),
    ("lx-dlq-origin-partition", b"7"),
    ("lx-dlq-origin-offset", b"42"),
    ("lx-dlq-consumer-group", b"t1.analytics"),
    ("lx-dlq-error", b"LookupError('campaign is not configured')"),
    ("lx-dlq-failed-at", b"2026-11-22T03:00:00+00:00"),
]


def letter(offset: int, status: str = PENDING) -> DeadLetter:
    d = DeadLetter.from_record("t1.lead.received.dlq", 0, offset, b"k", b"{}", HEADERS)
    d.status = status
    return d


def test_either_the_origin_topic_or_the_dead_letter_topic_names_it() -> None:
    assert dead_letter_name("lead.received", "t1.") == "t1.lead.received.dlq"
    assert dead_letter_name("lead.received.dlq", "t1.") == "t1.lead.received.dlq"
    assert dead_letter_name("t1.lead.received", "t1.") == "t1.lead.received.dlq"


def test_a_dead_letter_is_read_from_its_origin_headers() -> None:
    d = letter(3)
    assert d.origin == ("t1.lead.received", 7, 42)
    assert d.consumer_group == "t1.analytics"
    assert d.error == "LookupError('campaign is not configured')"
    assert d.failed_at == "2026-11-22T03:00:00+00:00"
    assert d.status == PENDING
    bare = DeadLetter.from_record("x.dlq", 0, 1, None, None, [("lx-dlq-origin-offset", b"?")])
    assert bare.origin is None and bare.value == b""


def test_all_pending_takes_only_pending_ones() -> None:
    letters = [letter(0, DROPPED), letter(1), letter(2, RETRIED), letter(3)]
    chosen = choose(letters, [], all_pending=True, force=False, action="retry")
    assert [d.offset for d in chosen] == [1, 3]
    with pytest.raises(Refused, match="not both"):
        choose(letters, [(0, 1)], all_pending=True, force=False, action="retry")
    with pytest.raises(Refused, match="give the offsets"):
        choose(letters, [], all_pending=False, force=False, action="retry")


def test_an_unknown_or_decided_dead_letter_is_refused_unless_forced() -> None:
    letters = [letter(0, DROPPED), letter(1)]
    with pytest.raises(Refused, match="no dead letter at partition 0 offset 9"):
        choose(letters, [(0, 1), (0, 9)], all_pending=False, force=False, action="retry")
    with pytest.raises(Refused, match=r"already decided: 0 \(dropped\); pass --force to retry"):
        choose(letters, [(0, 0), (0, 1)], all_pending=False, force=False, action="retry")
    forced = choose(letters, [(0, 0), (0, 1), (0, 0)], all_pending=False, force=True, action="r")
    assert [d.offset for d in forced] == [0, 1]


def test_values_are_pretty_printed_when_json_and_escaped_otherwise() -> None:
    assert pretty_value(b'{"b": 1, "a": [1]}') == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'
    assert pretty_value(b"not json \xff") == "not json \\xff"
    assert truncate("a  b\nc") == "a b c"
    assert truncate("x" * 100, 10) == "x" * 9 + "…"


def test_drop_needs_a_reason_and_list_a_known_status() -> None:
    runner = CliRunner()
    dropped = runner.invoke(lxctl, ["dlq", "drop", "lead.received", "3", "--reason", " "])
    assert dropped.exit_code == 2 and "--reason must say why" in dropped.stderr
    listed = runner.invoke(lxctl, ["dlq", "list", "lead.received", "--status", "lost"])
    assert listed.exit_code == 2 and "pending, retried or dropped" in listed.stderr
