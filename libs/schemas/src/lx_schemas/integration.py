"""How the platform talks to a buyer's endpoint: the request it builds and how it reads
the answer. Pure data carried in ``BuyerConfigured``; ``lx_integrations`` renders and
reads. Secrets (auth, signing) travel only sealed (``SealedSecret``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AnyHttpUrl, Field, field_validator, model_validator

from lx_schemas.envelope import Frozen

Name = Annotated[str, Field(min_length=1, max_length=128)]
Path = Annotated[str, Field(min_length=1, max_length=256)]
# Header names a template may not set: the transport's own, and the platform's proofs.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "authorization",
        "x-leadexchange-delivery-id",
        "x-leadexchange-signature",
        "x-leadexchange-timestamp",
        "idempotency-key",
    }
)


class SealedSecret(Frozen):
    """A secret sealed with AES-256-GCM under the platform's config key ``key_id``
    (``lx_platform.secrets``); never stored or published in clear."""

    key_id: Annotated[str, Field(min_length=1, max_length=64)]
    nonce: str
    ciphertext: str


class BodyFormat(StrEnum):
    JSON = "json"
    FORM = "form"  # application/x-www-form-urlencoded
    XML = "xml"


class Transform(StrEnum):
    NONE = "none"
    UPPER = "upper"
    LOWER = "lower"
    DIGITS = "digits"  # keep digits only: "+1 (415) 555-0100" -> "14155550100"
    PHONE_NATIONAL = "phone_national"  # E.164 US number -> 10 digits
    YES_NO = "yes_no"  # booleans as "yes"/"no"
    ONE_ZERO = "one_zero"  # booleans as "1"/"0"
    DATE_US = "date_us"  # 2000-01-31 -> 01/31/2000


class FieldMapping(Frozen):
    """One field of the buyer's body: from a lead field (or ``lead_id``,
    ``delivery_id``, ``ping_id``, ``bid_ref``, ``price``), or a static value.
    ``to`` may be dotted (``contact.email``) to nest in JSON and XML."""

    to: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")]
    source: Name | None = None
    static: str | int | float | bool | None = None
    transform: Transform = Transform.NONE

    @model_validator(mode="after")
    def _one_origin(self) -> FieldMapping:
        if (self.source is None) == (self.static is None):
            raise ValueError("a mapping takes either a source field or a static value")
        return self


class AuthKind(StrEnum):
    NONE = "none"
    BASIC = "basic"  # username + secret as the password
    BEARER = "bearer"  # Authorization: Bearer <secret>
    HEADER = "header"  # <header_name>: <secret>


class Auth(Frozen):
    kind: AuthKind = AuthKind.NONE
    username: Annotated[str, Field(max_length=256)] | None = None
    header_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9\-]{1,64}$")] | None = None
    secret: SealedSecret | None = None

    @model_validator(mode="after")
    def _complete(self) -> Auth:
        if self.kind is not AuthKind.NONE and self.secret is None:
            raise ValueError(f"{self.kind.value} auth needs a secret")
        if self.kind is AuthKind.BASIC and not self.username:
            raise ValueError("basic auth needs a username")
        if self.kind is AuthKind.HEADER:
            if not self.header_name:
                raise ValueError("header auth needs a header_name")
            if self.header_name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{self.header_name} is set by the platform")
        return self


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"


class Extract(StrEnum):
    STATUS = "status"  # the HTTP status code
    JSON_PATH = "json_path"  # a JSONPath into a JSON body, e.g. $.result.status
    XML_PATH = "xml_path"  # an ElementTree path into an XML body, e.g. ./result/status
    REGEX = "regex"  # a pattern searched in the body; its first group (or whole match)


class Probe(Frozen):
    """Where to look in the buyer's answer."""

    kind: Extract
    path: Path | None = None  # json_path, xml_path
    pattern: Annotated[str, Field(max_length=200)] | None = None  # regex

    @model_validator(mode="after")
    def _operand(self) -> Probe:
        if self.kind in (Extract.JSON_PATH, Extract.XML_PATH) and not self.path:
            raise ValueError(f"{self.kind.value} needs a path")
        if self.kind is Extract.REGEX and not self.pattern:
            raise ValueError("regex needs a pattern")
        return self


class ResponseRule(Frozen):
    """When ``probe`` finds one of ``equals`` (caseless; empty: finds anything), the
    answer is ``outcome``. Rules are tried in order; the first that matches decides."""

    probe: Probe
    equals: Annotated[tuple[str, ...], Field(max_length=50)] = ()
    outcome: Outcome


class Captures(Frozen):
    """Values read from an accepted answer."""

    price: Probe | None = None  # the price the buyer pays, when it names it
    buyer_lead_id: Probe | None = None
    reason: Probe | None = None  # its reason for a rejection


class Integration(Frozen):
    """A buyer endpoint's request and response contract.

    No mappings: the lead's fields as a flat JSON object (with ``lead_id`` and
    ``delivery_id``). No rules: a 2xx whose JSON ``status`` is ``accepted`` is accepted,
    another 2xx or a 4xx rejected, a 5xx an error (retried).
    """

    format: BodyFormat = BodyFormat.JSON
    mappings: Annotated[tuple[FieldMapping, ...], Field(max_length=200)] = ()
    xml_root: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")] = "lead"
    headers: Annotated[dict[str, Annotated[str, Field(max_length=1024)]], Field(max_length=30)] = (
        Field(default_factory=dict)
    )
    auth: Auth = Auth()
    rules: Annotated[tuple[ResponseRule, ...], Field(max_length=30)] = ()
    captures: Captures = Captures(
        reason=Probe(kind=Extract.JSON_PATH, path="$.reason"),
    )

    @field_validator("headers")
    @classmethod
    def _no_reserved(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name} is set by the platform")
            if not all(c.isalnum() or c == "-" for c in name) or not name:
                raise ValueError(f"header name {name!r} is not a token")
        return headers


class PingConfig(Frozen):
    """A buyer that bids in auctions: where it is pinged and how its bid is read.

    The ping carries only the campaign's non-PII fields. ``bid_price`` reads the price;
    ``bid_ref`` a reference the post must carry back (sent as the ``bid_ref`` source).
    A bid is valid when the rules say accepted (no rules: a 2xx with a price).
    """

    url: AnyHttpUrl
    timeout_ms: Annotated[int, Field(ge=20, le=10_000)] = 500
    integration: Integration = Integration()
    bid_price: Probe = Probe(kind=Extract.JSON_PATH, path="$.price")
    bid_ref: Probe | None = None


class CircuitBreaker(Frozen):
    """Pause a buyer after ``failures`` errors in a row; probe it again after
    ``cool_down_s`` with one lead, and close on its success."""

    failures: Annotated[int, Field(ge=1, le=1_000)] = 5
    cool_down_s: Annotated[int, Field(ge=1, le=3_600)] = 30
