"""Published event versions are frozen: each has a JSON sample that must still decode
to the same thing and encode back byte for byte (as JSON)."""

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lx_schemas import ALL_TOPICS, registered_events, topic_for
from lx_schemas import events as ev
from lx_schemas.envelope import (
    _REGISTRY,
    _UPCASTERS,
    Event,
    UnknownEventError,
    decode_event,
    event_class,
    latest_version,
    register_upcaster,
)
from lx_schemas.integration import Extract, Outcome
from lx_schemas.rules import Distribution, SourceControls

SAMPLES = Path(__file__).parent.parent / "samples"


def test_every_registered_event_version_has_a_frozen_sample() -> None:
    names = {f"{cls.TYPE}.v{cls.VERSION}.json" for cls in registered_events()}
    assert names == {p.name for p in SAMPLES.glob("*.json")}


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_a_frozen_sample_decodes_and_encodes_back_unchanged(sample: Path) -> None:
    raw = json.loads(sample.read_text())
    # Its own version's class still reads it and writes it back byte for byte (as JSON)...
    own = event_class(raw["type"], raw["schema_version"]).model_validate(raw)
    assert json.loads(own.to_json()) == raw
    # ...and readers get it as the newest version, upcast on read.
    event = decode_event(sample.read_bytes())
    assert event.type == raw["type"]
    assert event.schema_version == latest_version(raw["type"])
    assert event.event_id == own.event_id
    if raw["schema_version"] == event.schema_version:
        assert json.loads(event.to_json()) == raw


def test_a_v1_campaign_is_read_as_v3_without_a_duplicate_check_as_an_exclusive_waterfall() -> None:
    raw = json.loads((SAMPLES / "CampaignConfigured.v1.json").read_text())
    event = decode_event(raw)
    assert isinstance(event, ev.CampaignConfigured) and event.schema_version == 3
    assert event.payload.dedupe is None
    assert event.payload.distribution == Distribution()
    assert event.payload.distribution.max_sales == 1
    assert event.payload.ping_post.enabled is False
    upcast = json.loads(event.to_json())
    for added in ("dedupe", "distribution", "margin", "ping_post"):
        upcast["payload"].pop(added)
    assert upcast["payload"] == raw["payload"]
    assert {k: v for k, v in upcast.items() if k not in ("payload", "schema_version")} == {
        k: v for k, v in raw.items() if k not in ("payload", "schema_version")
    }


def test_a_v1_source_payout_becomes_a_fixed_payout_without_controls() -> None:
    raw = json.loads((SAMPLES / "SourceConfigured.v1.json").read_text())
    event = decode_event(raw)
    assert isinstance(event, ev.SourceConfigured)
    assert event.payload.payout.fixed == Decimal(raw["payload"]["payout"])
    assert event.payload.payout.percent is None
    assert event.payload.controls == SourceControls()


def test_a_v1_buyer_acceptance_rule_becomes_an_equivalent_response_rule() -> None:
    raw = json.loads((SAMPLES / "BuyerConfigured.v1.json").read_text())
    acceptance = {"field": "re'sult", "accepted": ["OK", "yes"], "reason_field": "why"}
    raw["payload"]["acceptance"] = acceptance
    event = decode_event(raw)
    assert isinstance(event, ev.BuyerConfigured)
    (rule,) = event.payload.integration.rules
    assert rule.probe.kind is Extract.JSON_PATH and rule.probe.path == '$["re\'sult"]'
    assert rule.equals == ("OK", "yes") and rule.outcome is Outcome.ACCEPTED
    reason = event.payload.integration.captures.reason
    assert reason is not None and reason.path == '$["why"]'
    assert event.payload.filters == () and event.payload.caps == ()


@pytest.mark.parametrize(
    ("type_", "version"),
    [
        ("CampaignConfigured", 3),
        ("SourceConfigured", 2),
        ("BuyerConfigured", 2),
        ("LeadReceived", 2),
        ("LeadRouted", 2),
        ("LeadRoutingExhausted", 2),
        ("DeliveryAttempted", 2),
        ("LeadSold", 2),
        ("LeadUnsold", 2),
    ],
)
def test_producers_publish_the_newest_version(type_: str, version: int) -> None:
    assert latest_version(type_) == version
    assert version == getattr(ev, type_).VERSION


def test_every_event_belongs_to_exactly_one_topic() -> None:
    for cls in registered_events():
        assert sum(cls in t.events for t in ALL_TOPICS) == 1
        assert topic_for(cls).name


def test_poison_input_is_refused_with_a_clear_error() -> None:
    with pytest.raises(UnknownEventError):
        decode_event(b'{"type": "NoSuchEvent", "schema_version": 1}')
    with pytest.raises(UnknownEventError):
        decode_event(b"[1, 2]")
    with pytest.raises(ValueError):
        decode_event(b"not json")


def test_an_old_version_is_upcast_on_read() -> None:
    from typing import ClassVar, Literal

    from lx_schemas.events import AccountState

    class AccountRenamedV1(Event):
        TYPE: ClassVar[str] = "TestAccountRenamed"
        VERSION: ClassVar[int] = 1
        type: Literal["TestAccountRenamed"]
        schema_version: Literal[1]
        payload: dict[str, Any]

    class AccountRenamedV2(Event):
        TYPE: ClassVar[str] = "TestAccountRenamed"
        VERSION: ClassVar[int] = 2
        type: Literal["TestAccountRenamed"]
        schema_version: Literal[2]
        payload: AccountState

    @register_upcaster("TestAccountRenamed", 1)
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        old = data["payload"]
        return {
            **data,
            "schema_version": 2,
            "payload": {"account_id": old["id"], "name": old["title"]},
        }

    try:
        old = AccountRenamedV1.new(
            account_id="00000000-0000-0000-0000-000000000001",
            correlation_id="00000000-0000-0000-0000-000000000001",
            producer="t",
            payload={"id": "00000000-0000-0000-0000-000000000001", "title": "Acme"},
        )
        new = decode_event(old.to_json())
        assert isinstance(new, AccountRenamedV2) and new.payload.name == "Acme"
        assert new.event_id == old.event_id
    finally:
        for version in (1, 2):
            _REGISTRY.pop(("TestAccountRenamed", version), None)
        _UPCASTERS.pop(("TestAccountRenamed", 1), None)
