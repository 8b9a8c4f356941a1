"""Read a buyer's answer by its integration's rules: the outcome, and what it names
(price, its own lead id, its reason). A buyer's answer is untrusted input (OWASP
API10): XML is parsed only by defusedxml with DTDs refused, regexes run under a
timeout, nothing is followed.

Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import jsonpath
import regex
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET
from lx_schemas.integration import (
    Captures,
    Extract,
    Integration,
    Outcome,
    PingConfig,
    Probe,
    ResponseRule,
)

# RFC 9535 paths only (python-jsonpath's extensions off).
_JSONPATH = jsonpath.JSONPathEnvironment(strict=True)
REGEX_TIMEOUT_S = 0.05
REASON_MAX = 500
BUYER_LEAD_ID_MAX = 256
_MAX_PRICE = Decimal("999999999999.99")  # Usd: 14 digits, 2 of them decimals
# No rules at all: a 2xx whose JSON ``status`` is ``accepted`` is accepted (as before
# integrations existed); anything else falls to the defaults below.
DEFAULT_RULES = (
    ResponseRule(
        probe=Probe(kind=Extract.JSON_PATH, path="$.status"),
        equals=("accepted",),
        outcome=Outcome.ACCEPTED,
    ),
)
REDIRECT_NOT_FOLLOWED = "redirect_not_followed"
HOSTILE_XML = "hostile_xml"


@dataclass(frozen=True)
class Reading:
    outcome: Outcome
    reason: str | None
    price: Decimal | None
    buyer_lead_id: str | None
    retryable: bool


@dataclass(frozen=True)
class BidReading:
    """A buyer's answer to a ping; ``price`` None means no bid (``reason`` says why)."""

    price: Decimal | None
    bid_ref: str | None
    reason: str | None


class Refused(Exception):
    """The answer cannot be read safely (hostile XML, a regex past its time)."""


@dataclass
class _Body:
    """The answer, parsed at most once per kind, on demand."""

    status: int
    raw: bytes
    content_type: str | None
    _json: object = field(default=None)
    _json_done: bool = False
    _xml: object = field(default=None)
    _xml_done: bool = False

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")

    def json(self) -> object:
        if not self._json_done:
            self._json_done = True
            try:
                # Decimal: a price reads as written ("12.50"), never through a float.
                raw = self.raw.strip()
                self._json = json.loads(raw, parse_float=Decimal) if raw else None
            except (ValueError, RecursionError):
                self._json = None
        return self._json

    def xml(self) -> object:
        if not self._xml_done:
            self._xml_done = True
            try:
                # forbid_dtd: no DTD at all, so no entity (billion laughs) and no
                # external reference is ever expanded or fetched.
                self._xml = SafeET.fromstring(
                    self.raw, forbid_dtd=True, forbid_entities=True, forbid_external=True
                )
            except DefusedXmlException as exc:
                raise Refused(f"{HOSTILE_XML}: {type(exc).__name__}") from None
            except (SafeET.ParseError, ValueError, RecursionError):
                self._xml = None
        return self._xml


def read_response(
    integration: Integration, status: int, body: bytes, content_type: str | None
) -> Reading:
    """The outcome of a post: the first rule that matches decides; none matches →
    2xx rejected, 3xx error (never followed, not retried), 4xx rejected, 5xx error
    (retried). An accepted outcome needs a 2xx, whatever a rule says."""
    answer = _Body(status, body, content_type)
    try:
        outcome = _decide(integration.rules or DEFAULT_RULES, answer)
        captured = _capture(integration.captures, answer)
    except Refused as exc:
        return Reading(Outcome.ERROR, str(exc), None, None, retryable=False)
    reason, price_text, buyer_lead_id = captured
    notes: list[str] = []
    if outcome is None:
        outcome, default_reason = _default(status)
        if default_reason and not reason:
            reason = default_reason
        if 300 <= status < 400:
            reason = default_reason
    price: Decimal | None = None
    if price_text is not None:
        price, problem = parse_price(price_text)
        if problem:
            notes.append(problem)
    if outcome is Outcome.REJECTED and not reason:
        reason = f"http_{status}" if not 200 <= status < 300 else "rejected by the buyer"
    text = "; ".join([r for r in (reason, *notes) if r]) or None
    retryable = outcome is Outcome.ERROR and status >= 500
    return Reading(outcome, _clip(text, REASON_MAX), price, buyer_lead_id, retryable)


def read_bid(ping: PingConfig, status: int, body: bytes, content_type: str | None) -> BidReading:
    """A bid: a 2xx that the rules (if any) accept, with a positive price."""
    answer = _Body(status, body, content_type)
    try:
        reason = _first(ping.integration.captures.reason, answer)
        if not 200 <= status < 300:
            return BidReading(None, None, reason or f"http_{status}")
        if ping.integration.rules:
            outcome = _decide(ping.integration.rules, answer)
            if outcome is not Outcome.ACCEPTED:
                said = outcome.value if outcome else "no rule matched"
                return BidReading(None, None, reason or f"no bid ({said})")
        price_text = _first(ping.bid_price, answer)
        bid_ref = _first(ping.bid_ref, answer) if ping.bid_ref else None
    except Refused as exc:
        return BidReading(None, None, str(exc))
    if price_text is None:
        return BidReading(None, None, reason or "no price in the bid")
    price, problem = parse_price(price_text)
    if price is None:
        return BidReading(None, None, problem)
    if price <= 0:
        return BidReading(None, None, reason or "bid of zero")
    return BidReading(price, _clip(bid_ref, BUYER_LEAD_ID_MAX), None)


def parse_price(text: str) -> tuple[Decimal | None, str | None]:
    """A non-negative USD amount with at most two decimals, or (None, why not)."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    cleaned = text.strip().removeprefix("$").strip()
    try:
        price = Decimal(cleaned)
    except InvalidOperation:
        return None, f"price {shown!r} is not an amount"
    if not price.is_finite() or price < 0 or price > _MAX_PRICE:
        return None, f"price {shown!r} is not an amount"
    if price != price.quantize(Decimal("0.01")):
        return None, f"price {shown!r} has more than 2 decimals"
    return price.quantize(Decimal("0.01")), None


# --- rules and probes -----------------------------------------------------------------------


def _default(status: int) -> tuple[Outcome, str | None]:
    if 200 <= status < 300:
        return Outcome.REJECTED, None
    if 300 <= status < 400:
        return Outcome.ERROR, f"{REDIRECT_NOT_FOLLOWED}: http_{status}"
    if status >= 500:
        return Outcome.ERROR, f"http_{status}"
    return Outcome.REJECTED, f"http_{status}"


def _decide(rules: tuple[ResponseRule, ...], answer: _Body) -> Outcome | None:
    ok = 200 <= answer.status < 300
    for rule in rules:
        if rule.outcome is Outcome.ACCEPTED and not ok:
            continue
        if _matches(rule, _probe(rule.probe, answer)):
            return rule.outcome
    return None


def _matches(rule: ResponseRule, found: list[str]) -> bool:
    if not rule.equals:
        return bool(found)
    wanted = {w.casefold() for w in rule.equals}
    for value in found:
        if value.casefold() in wanted:
            return True
        # "2xx", "4XX": a status class
        if rule.probe.kind is Extract.STATUS and f"{value[:1]}xx" in wanted:
            return True
    return False


def _capture(captures: Captures, answer: _Body) -> tuple[str | None, str | None, str | None]:
    reason = _first(captures.reason, answer)
    price = _first(captures.price, answer)
    buyer_lead_id = _first(captures.buyer_lead_id, answer)
    return reason, price, _clip(buyer_lead_id, BUYER_LEAD_ID_MAX)


def _first(probe: Probe | None, answer: _Body) -> str | None:
    if probe is None:
        return None
    found = _probe(probe, answer)
    return found[0] if found else None


def _probe(probe: Probe, answer: _Body) -> list[str]:
    """The values a probe finds, as text (empty: nothing found)."""
    if probe.kind is Extract.STATUS:
        return [str(answer.status)]
    if probe.kind is Extract.JSON_PATH:
        data = answer.json()
        if data is None:
            return []
        try:
            nodes = _JSONPATH.findall(str(probe.path), data)  # type: ignore[arg-type]
        except jsonpath.JSONPathError:
            return []
        return [_scalar(n) for n in nodes if n is not None and not isinstance(n, dict | list)]
    if probe.kind is Extract.XML_PATH:
        root = answer.xml()
        if root is None:
            return []
        try:
            elements = root.findall(str(probe.path))  # type: ignore[attr-defined]
        except (SyntaxError, KeyError):
            return []
        return [e.text.strip() for e in elements if e.text and e.text.strip()]
    return _regex(str(probe.pattern), answer.text)


def _regex(pattern: str, text: str) -> list[str]:
    try:
        match = regex.search(pattern, text, timeout=REGEX_TIMEOUT_S)
    except TimeoutError:
        raise Refused(f"regex_timeout: /{pattern[:60]}/ ran past {REGEX_TIMEOUT_S}s") from None
    except regex.error:
        return []
    if match is None:
        return []
    value = match.group(1) if match.re.groups else match.group(0)
    return [value] if value else []


def _scalar(node: object) -> str:
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 3] + "..."
