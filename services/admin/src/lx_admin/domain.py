"""Admin's pure rules: keys and tokens, the requests that configure entities, their
validation against the campaign, sealing buyer secrets, and the rules of a return."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Annotated, Any

from lx_platform.secrets import ConfigKeys
from lx_schemas.envelope import Frozen
from lx_schemas.events import (
    DEDUPE_MATCHABLE_TYPES,
    MAX_BUYER_DEDUPE_DAYS,
    AcceptanceRule,
    DedupeRule,
    FieldSpec,
    FieldType,
    ReturnReason,
    Status,
    Usd,
)
from lx_schemas.integration import (
    RESERVED_HEADERS,
    Auth,
    AuthKind,
    CircuitBreaker,
    Integration,
    PingConfig,
    SealedSecret,
)
from lx_schemas.rules import (
    Cap,
    Distribution,
    Filter,
    FilterOp,
    Margin,
    Payout,
    PingPost,
    Schedule,
    SourceControls,
)
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

API_KEY_PREFIX = "lxsk_"
BUYER_TOKEN_PREFIX = "lxbt_"  # noqa: S105 - a prefix, not a secret
SIGNING_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
FieldError = dict[str, str]
Seal = Callable[[str], SealedSecret]


# --- keys, tokens and secrets ----------------------------------------------------------------


def new_api_key() -> str:
    """A source key: a recognisable prefix plus 256 random bits."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_buyer_token() -> str:
    """A buyer's token for its own deliveries and returns: a prefix plus 256 random bits."""
    return BUYER_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_signing_secret() -> str:
    """A buyer's HMAC key for the X-LeadExchange-Signature header, in the Standard
    Webhooks spelling (``whsec_`` + base64 of 32 random bytes)."""
    return SIGNING_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def api_key_sha256(key: str) -> str:
    # A plain SHA-256 suffices: the key is 256 random bits, so there is nothing for a
    # slow password hash (argon2) to protect against, and ingest checks it per request.
    return hashlib.sha256(key.encode()).hexdigest()


token_sha256 = api_key_sha256  # buyer tokens are 256 random bits too


def display_prefix(key: str) -> str:
    """Enough of a key or token to recognise it in a list, too little to use it."""
    prefix = API_KEY_PREFIX if key.startswith(API_KEY_PREFIX) else BUYER_TOKEN_PREFIX
    return key[: len(prefix) + 6]


def redact_secrets(value: Any) -> Any:
    """A state's JSON with every sealed secret reduced to its key id: answers show which
    key seals a secret, never its ciphertext (let alone the secret)."""
    if isinstance(value, dict):
        if set(value) == set(SealedSecret.model_fields):
            return {"key_id": value["key_id"]}
        return {k: redact_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value


# --- requests ---------------------------------------------------------------------------------


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=200)]


class CampaignCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    vertical: Annotated[str, Field(min_length=1, max_length=100)]
    fields: Annotated[list[FieldSpec], Field(min_length=1, max_length=200)]
    # Refuse a lead when any of these fields matches a lead accepted in the scope within
    # the window; none: no duplicate check.
    dedupe: DedupeRule | None = None
    distribution: Distribution = Distribution()
    margin: Margin = Margin()
    ping_post: PingPost = PingPost()


class CampaignUpdate(Request):
    """Only what is sent changes; ``"dedupe": null`` removes the duplicate check."""

    status: Status | None = None
    dedupe: DedupeRule | None = None
    distribution: Distribution | None = None
    margin: Margin | None = None
    ping_post: PingPost | None = None


class SourceCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    # A plain amount is a fixed payout (the request shape of the first API version).
    payout: Usd | Payout = Decimal("0.00")
    controls: SourceControls = SourceControls()


class SourceUpdate(Request):
    """Only what is sent changes: pause or resume, the payout, the controls."""

    status: Status | None = None
    payout: Usd | Payout | None = None
    controls: SourceControls | None = None


def as_payout(payout: Decimal | Payout) -> Payout:
    return payout if isinstance(payout, Payout) else Payout(fixed=payout)


class AuthIn(Request):
    """A buyer endpoint's credentials as the operator sends them: the secret in clear,
    sealed before it is stored or published. Left out on an update of the same kind of
    auth, the secret in force is kept."""

    kind: AuthKind = AuthKind.NONE
    username: Annotated[str, Field(max_length=256)] | None = None
    header_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9\-]{1,64}$")] | None = None
    secret: Annotated[str, Field(min_length=1, max_length=4096)] | None = None

    @model_validator(mode="after")
    def _complete(self) -> AuthIn:
        # Auth's own rules but the secret's, which may be the one in force (seal_auth).
        if self.kind is AuthKind.BASIC and not self.username:
            raise ValueError("basic auth needs a username")
        if self.kind is AuthKind.HEADER:
            if not self.header_name:
                raise ValueError("header auth needs a header_name")
            if self.header_name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{self.header_name} is set by the platform")
        return self


class IntegrationIn(Integration):
    # The request's credentials arrive in clear; everything else is the contract's own.
    auth: AuthIn = AuthIn()  # type: ignore[assignment]


class PingConfigIn(PingConfig):
    integration: IntegrationIn = IntegrationIn()


Priority = Annotated[int, Field(ge=0, le=10_000)]
TimeoutMs = Annotated[int, Field(ge=50, le=60_000)]
DedupeDays = Annotated[int, Field(ge=1, le=MAX_BUYER_DEDUPE_DAYS)]
ReturnWindowDays = Annotated[int, Field(ge=0, le=365)]


class BuyerCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    endpoint_url: AnyHttpUrl
    price: Usd
    price_from_response: bool = False
    priority: Priority = 100
    weight: Annotated[int, Field(ge=1, le=10_000)] = 100
    timeout_ms: TimeoutMs = 5_000
    timezone: Annotated[str, Field(max_length=64)] = "UTC"
    filters: Annotated[list[Filter], Field(max_length=100)] = []
    schedule: Schedule | None = None
    caps: Annotated[list[Cap], Field(max_length=10)] = []
    dedupe_days: DedupeDays | None = None
    return_window_days: ReturnWindowDays = 0
    integration: IntegrationIn | None = None
    ping: PingConfigIn | None = None
    breaker: CircuitBreaker = CircuitBreaker()
    # The first API version's answer rule; translated into ``integration.rules`` as the
    # BuyerConfigured v1 -> v2 upcaster does. Not together with an integration.
    acceptance: AcceptanceRule | None = None


class BuyerUpdate(Request):
    """Only what is sent changes; ``schedule``, ``dedupe_days`` and ``ping`` may be set to
    null to remove them. An ``integration`` or a ``ping`` replaces the whole one (a
    secret left out is kept while the kind of auth stays the same)."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    status: Status | None = None
    endpoint_url: AnyHttpUrl | None = None
    price: Usd | None = None
    price_from_response: bool | None = None
    priority: Priority | None = None
    weight: Annotated[int, Field(ge=1, le=10_000)] | None = None
    timeout_ms: TimeoutMs | None = None
    timezone: Annotated[str, Field(max_length=64)] | None = None
    filters: Annotated[list[Filter], Field(max_length=100)] | None = None
    schedule: Schedule | None = None
    caps: Annotated[list[Cap], Field(max_length=10)] | None = None
    dedupe_days: DedupeDays | None = None
    return_window_days: ReturnWindowDays | None = None
    integration: IntegrationIn | None = None
    ping: PingConfigIn | None = None
    breaker: CircuitBreaker | None = None


class TokenCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=200)] = "buyer token"


class ReturnCreate(Request):
    reason_code: ReturnReason
    reason: Annotated[str, Field(max_length=1000)] | None = None


class OperatorReturnCreate(ReturnCreate):
    # Needed only when the lead was sold to more than one buyer.
    buyer_id: uuid.UUID | None = None


def changes(body: BaseModel) -> dict[str, Any]:
    """What a PATCH body sets: only the fields it names (an explicit null included)."""
    return {k: v for k, v in body.model_dump(mode="json").items() if k in body.model_fields_set}


class SecretShown(Frozen):
    """A sealed secret as answers show it: the id of the key sealing it, nothing more."""

    key_id: str


# --- validation against the campaign ------------------------------------------------------


def enum_fields_without_options(fields: Sequence[FieldSpec]) -> list[FieldError]:
    """An enum field with no options could never accept a value: every lead would fail."""
    return [
        {
            "field": f"fields.{i}.options",
            "code": "enum_without_options",
            "detail": f"enum field {f.name!r} needs at least one option",
        }
        for i, f in enumerate(fields)
        if f.type is FieldType.ENUM and not f.options
    ]


def dedupe_rule_errors(fields: Sequence[FieldSpec], rule: DedupeRule | None) -> list[FieldError]:
    """A duplicate check may name only the campaign's own fields that identify a
    consumer (e-mail, phone, text); matching on a state or a ZIP would refuse most leads."""
    if rule is None:
        return []
    known = {f.name: f for f in fields}
    errors = []
    for i, name in enumerate(rule.fields):
        spec = known.get(name)
        if spec is None:
            errors.append(
                {
                    "field": f"dedupe.fields.{i}",
                    "code": "unknown_dedupe_field",
                    "detail": f"{name!r} is not a field of this campaign",
                }
            )
        elif spec.type not in DEDUPE_MATCHABLE_TYPES:
            kinds = ", ".join(sorted(t.value for t in DEDUPE_MATCHABLE_TYPES))
            errors.append(
                {
                    "field": f"dedupe.fields.{i}",
                    "code": "dedupe_field_not_matchable",
                    "detail": f"{name!r} is a {spec.type.value} field; duplicates match on {kinds}",
                }
            )
    return errors


def check_unique_fields(fields: Sequence[FieldSpec]) -> list[str]:
    seen: set[str] = set()
    dupes = []
    for f in fields:
        if f.name in seen:
            dupes.append(f.name)
        seen.add(f.name)
    return dupes


# Which field types each comparison makes sense on; the others work on any field.
_RANGE_TYPES = frozenset({FieldType.INTEGER, FieldType.DECIMAL, FieldType.DATE})
# Values a mapping may take besides the lead's fields (lx_integrations.templates).
MAPPING_SPECIALS = frozenset({"lead_id", "delivery_id", "ping_id", "bid_ref", "price"})


def filter_errors(fields: Sequence[FieldSpec], filters: Sequence[Filter]) -> list[FieldError]:
    """A filter naming a field the campaign does not have would refuse every lead, and a
    range over text compares nothing meaningful."""
    known = {f.name: f for f in fields}
    errors: list[FieldError] = []
    for i, rule in enumerate(filters):
        spec = known.get(rule.field)
        if spec is None:
            errors.append(
                {
                    "field": f"filters.{i}.field",
                    "code": "unknown_filter_field",
                    "detail": f"{rule.field!r} is not a field of this campaign",
                }
            )
        elif rule.op is FilterOp.AGE_BETWEEN and spec.type is not FieldType.DATE:
            errors.append(
                {
                    "field": f"filters.{i}.op",
                    "code": "filter_type_mismatch",
                    "detail": f"age_between needs a date field; {rule.field!r} is"
                    f" {spec.type.value}",
                }
            )
        elif rule.op is FilterOp.RANGE and spec.type not in _RANGE_TYPES:
            errors.append(
                {
                    "field": f"filters.{i}.op",
                    "code": "filter_type_mismatch",
                    "detail": f"range needs an integer, decimal or date field; {rule.field!r}"
                    f" is {spec.type.value}",
                }
            )
    return errors


def mapping_errors(
    fields: Sequence[FieldSpec], integration: Integration | None, at: str, *, ping: bool = False
) -> list[FieldError]:
    """Mappings must name the campaign's fields (or the specials); a ping's must not name
    a PII field, since a ping never carries one."""
    if integration is None:
        return []
    known = {f.name: f for f in fields}
    errors: list[FieldError] = []
    for i, m in enumerate(integration.mappings):
        if m.source is None or m.source in MAPPING_SPECIALS:
            continue
        spec = known.get(m.source)
        where = f"{at}.mappings.{i}.source"
        if spec is None:
            errors.append(
                {
                    "field": where,
                    "code": "unknown_mapping_source",
                    "detail": f"{m.source!r} is not a field of this campaign",
                }
            )
        elif ping and spec.pii:
            errors.append(
                {
                    "field": where,
                    "code": "pii_in_ping",
                    "detail": f"{m.source!r} is personal data; a ping carries none",
                }
            )
    return errors


def cap_errors(caps: Sequence[Cap]) -> list[FieldError]:
    """Two caps of one period and unit would count each lead twice on one counter."""
    seen: dict[tuple[str, bool], int] = {}
    errors: list[FieldError] = []
    for i, cap in enumerate(caps):
        key = (cap.period.value, cap.max_leads is not None)
        if key in seen:
            unit = "lead count" if cap.max_leads is not None else "USD budget"
            errors.append(
                {
                    "field": f"caps.{i}",
                    "code": "duplicate_cap",
                    "detail": f"caps.{seen[key]} is already a {cap.period.value} {unit} cap",
                }
            )
        seen.setdefault(key, i)
    return errors


def buyer_errors(fields: Sequence[FieldSpec], state: Any) -> list[FieldError]:
    """Everything about a buyer that only its campaign can refuse."""
    return [
        *cap_errors(state.caps),
        *filter_errors(fields, state.filters),
        *mapping_errors(fields, state.integration, "integration"),
        *mapping_errors(
            fields, state.ping.integration if state.ping else None, "ping.integration", ping=True
        ),
    ]


# --- buyer secrets --------------------------------------------------------------------------


def reseal_buyer(state: Any, keys: ConfigKeys) -> Any | None:
    """The buyer with every sealed secret (auth, ping auth, signing secret) under the
    current config key, or None when all already are (config key rotation)."""
    data = state.model_dump(mode="json")
    changed = False

    def reseal(holder: dict[str, Any] | None, name: str) -> None:
        nonlocal changed
        sealed = holder.get(name) if holder else None
        if holder is None or sealed is None or sealed["key_id"] == keys.current:
            return
        holder[name] = keys.reseal(SealedSecret.model_validate(sealed)).model_dump(mode="json")
        changed = True

    reseal(data["integration"]["auth"], "secret")
    if data.get("ping"):
        reseal(data["ping"]["integration"]["auth"], "secret")
    reseal(data, "signing_secret")
    return type(state).model_validate(data) if changed else None


class MissingSecretError(ValueError):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


def seal_auth(auth: AuthIn, seal: Seal, current: Auth | None, at: str) -> Auth:
    """The contract's ``Auth``: the clear secret sealed, or the sealed one in force kept
    when the request leaves it out and the kind of auth is unchanged."""
    if auth.secret is not None:
        sealed: SealedSecret | None = seal(auth.secret)
    elif current is not None and current.kind is auth.kind:
        sealed = current.secret
    else:
        sealed = None
    if auth.kind is not AuthKind.NONE and sealed is None:
        raise MissingSecretError(f"{at}.auth.secret", f"{auth.kind.value} auth needs a secret")
    data = auth.model_dump(exclude={"secret"})
    return Auth.model_validate(
        {**data, "secret": sealed if auth.kind is not AuthKind.NONE else None}
    )


def seal_integration(
    given: IntegrationIn, seal: Seal, current: Integration | None, at: str = "integration"
) -> Integration:
    auth = seal_auth(given.auth, seal, current.auth if current else None, at)
    data = given.model_dump(exclude={"auth"})
    return Integration.model_validate({**data, "auth": auth})


def seal_ping(given: PingConfigIn, seal: Seal, current: PingConfig | None) -> PingConfig:
    integration = seal_integration(
        given.integration, seal, current.integration if current else None, "ping.integration"
    )
    data = given.model_dump(exclude={"integration"})
    return PingConfig.model_validate({**data, "integration": integration})


def acceptance_integration(rule: AcceptanceRule) -> Integration:
    """The first API version's answer rule as an integration: a 2xx whose JSON ``field``
    is one of ``accepted`` is accepted, its reason read from ``reason_field`` (the same
    translation as the BuyerConfigured v1 -> v2 upcaster)."""
    field, reason = json.dumps(rule.field), json.dumps(rule.reason_field)
    return Integration.model_validate(
        {
            "rules": [
                {
                    "probe": {"kind": "json_path", "path": f"$[{field}]"},
                    "equals": list(rule.accepted),
                    "outcome": "accepted",
                }
            ],
            "captures": {"reason": {"kind": "json_path", "path": f"$[{reason}]"}},
        }
    )


# --- returns ------------------------------------------------------------------------------


def return_refusal(sold_at: dt.datetime, window_days: int, now: dt.datetime) -> FieldError | None:
    """Why a sale may not be returned now, or None: the buyer's window runs from the sale;
    a window of zero days takes no returns."""
    if window_days <= 0:
        return {"code": "return_window_closed", "detail": "this buyer takes no returns"}
    closes = sold_at + dt.timedelta(days=window_days)
    if now >= closes:
        return {
            "code": "return_window_closed",
            "detail": f"the {window_days}-day return window closed at {closes.isoformat()}",
        }
    return None


def returned_by(buyer_id: str | None) -> str:
    return f"buyer:{buyer_id}" if buyer_id else "operator"
