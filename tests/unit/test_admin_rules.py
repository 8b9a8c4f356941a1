"""Admin's pure rules: return windows, secrets never shown, sealing, filter validation,
and the trace's reasons."""

from __future__ import annotations

import datetime as dt
import uuid

from lx_admin import domain
from lx_admin.trace import lead_status, why
from lx_platform.secrets import DEV_CONFIG_KEYS, ConfigKeys
from lx_schemas.events import FieldSpec, FieldType
from lx_schemas.integration import Auth, AuthKind
from lx_schemas.rules import Filter, FilterOp

SOLD = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
KEYS = ConfigKeys.parse(DEV_CONFIG_KEYS)
FIELDS = [
    FieldSpec(name="email", type=FieldType.EMAIL, pii=True),
    FieldSpec(name="state", type=FieldType.US_STATE),
    FieldSpec(name="dob", type=FieldType.DATE),
]


def test_a_return_is_open_until_the_window_closes_and_never_with_a_window_of_zero() -> None:
    day = dt.timedelta(days=1)
    assert domain.return_refusal(SOLD, 7, SOLD + 7 * day - dt.timedelta(seconds=1)) is None
    closed = domain.return_refusal(SOLD, 7, SOLD + 7 * day)
    assert closed is not None and closed["code"] == "return_window_closed"
    none = domain.return_refusal(SOLD, 0, SOLD)
    assert none == {"code": "return_window_closed", "detail": "this buyer takes no returns"}


def test_answers_show_a_sealed_secret_only_by_its_key_id() -> None:
    sealed = KEYS.seal("hunter2").model_dump(mode="json")
    state = {"integration": {"auth": {"kind": "bearer", "secret": sealed}}, "xs": [sealed]}
    assert domain.redact_secrets(state) == {
        "integration": {"auth": {"kind": "bearer", "secret": {"key_id": "devcfg1"}}},
        "xs": [{"key_id": "devcfg1"}],
    }


def test_a_secret_left_out_is_kept_only_while_the_kind_of_auth_stays() -> None:
    current = Auth(kind=AuthKind.BEARER, secret=KEYS.seal("old"))
    kept = domain.seal_auth(domain.AuthIn(kind=AuthKind.BEARER), KEYS.seal, current, "integration")
    assert kept.secret == current.secret
    fresh = domain.seal_auth(
        domain.AuthIn(kind=AuthKind.BEARER, secret="new"), KEYS.seal, current, "integration"
    )
    assert fresh.secret is not None and KEYS.open(fresh.secret) == "new"
    try:
        domain.seal_auth(
            domain.AuthIn(kind=AuthKind.BASIC, username="u"), KEYS.seal, current, "ping.integration"
        )
    except domain.MissingSecretError as exc:
        assert exc.field == "ping.integration.auth.secret"
    else:
        raise AssertionError("a basic auth without a secret was accepted")
    none = domain.seal_auth(domain.AuthIn(), KEYS.seal, current, "integration")
    assert none == Auth()


def test_filters_must_name_the_campaigns_fields_with_a_fitting_type() -> None:
    filters = [
        Filter(field="state", op=FilterOp.IN, values=("CA",)),
        Filter(field="colour", op=FilterOp.EXISTS),
        Filter(field="state", op=FilterOp.AGE_BETWEEN, min=18),
        Filter(field="dob", op=FilterOp.AGE_BETWEEN, min=18),
        Filter(field="email", op=FilterOp.RANGE, min=1),
    ]
    assert [(e["field"], e["code"]) for e in domain.filter_errors(FIELDS, filters)] == [
        ("filters.1.field", "unknown_filter_field"),
        ("filters.2.op", "filter_type_mismatch"),
        ("filters.4.op", "filter_type_mismatch"),
    ]


def test_tokens_and_signing_secrets_are_recognisable_and_random() -> None:
    token = domain.new_buyer_token()
    assert token.startswith("lxbt_") and domain.display_prefix(token) == token[:11]
    assert domain.token_sha256(token) != domain.token_sha256(domain.new_buyer_token())
    secret = domain.new_signing_secret()
    assert secret.startswith("whsec_") and secret != domain.new_signing_secret()


def test_the_trace_status_and_why_of_leads() -> None:
    assert lead_status(["LeadRejected"]) == "rejected"
    assert lead_status(["LeadReceived", "LeadSold", "LeadReturned"]) == "returned"
    assert lead_status(["LeadReceived", "LeadSold", "LeadSold", "LeadReturned"]) == "sold"
    buyer = uuid.uuid4()
    unsold_v1 = [
        ("LeadReceived", {}),
        (
            "DeliveryAttempted",
            {"buyer_id": str(buyer), "result": "rejected", "reason": "no thanks", "final": True},
        ),
        ("LeadUnsold", {"reason": "all_buyers_declined", "rejections": []}),
    ]
    said = why(unsold_v1, {str(buyer): "Zen"})
    assert said is not None
    assert said.codes == ["buyer_rejected"]
    assert said.summary == (
        "unsold: every buyer offered it declined: buyer 'Zen': no thanks (buyer_rejected)"
    )
    nobody = why([("LeadUnsold", {"reason": "no_eligible_buyers"})], {})
    assert nobody is not None and nobody.codes == ["no_buyers"]
    assert why([("LeadSold", {})], {}) is None


def test_two_caps_of_one_period_and_unit_are_refused() -> None:
    from decimal import Decimal

    from lx_schemas.rules import Cap, CapPeriod

    day_count = Cap(period=CapPeriod.DAY, max_leads=50)
    day_budget = Cap(period=CapPeriod.DAY, max_usd=Decimal("500.00"))
    assert (
        domain.cap_errors([day_count, day_budget, Cap(period=CapPeriod.MONTH, max_leads=9)]) == []
    )
    (error,) = domain.cap_errors([day_count, day_budget, Cap(period=CapPeriod.DAY, max_leads=9)])
    assert (error["field"], error["code"]) == ("caps.2", "duplicate_cap")
