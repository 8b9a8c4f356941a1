"""The lead trace: a read model of every lead event (and of the auction a post came
from) plus delivery's request log, told in words with the reasons' codes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from lx_platform.consumer import Consumed
from lx_platform.deliverylog import delivery_log
from lx_platform.logging import get_logger
from lx_schemas import events as ev
from lx_schemas.envelope import Event, Frozen
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_admin import audit, store
from lx_admin.access import Permission, Principal
from lx_admin.api import Rt, _not_found
from lx_admin.auth import allow, authenticate

log = get_logger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], tags=["trace"])
TraceReader = Annotated[Principal, Depends(allow(Permission.TRACE_READ))]
PING_EVENTS = (ev.PingReceived, ev.BuyerPinged, ev.AuctionClosed)
Names = Mapping[str, str]  # entity id (text) -> name


def trace_payload(event: Event) -> dict[str, Any]:
    """What the trace keeps of an event: everything but the sealed PII ciphertext."""
    payload = event.payload
    if isinstance(payload, ev.LeadReceivedPayload | ev.LeadRoutedPayload):
        data: dict[str, Any] = payload.model_dump(mode="json", exclude={"lead"})
        data["fields"] = payload.lead.fields
        data["pii_fields"] = list(payload.lead.pii.field_names) if payload.lead.pii else []
        return data
    result: dict[str, Any] = payload.model_dump(mode="json")
    return result


def _row(c: Consumed) -> dict[str, Any]:
    return {
        "event_id": c.event.event_id,
        "account_id": c.event.account_id,
        "type": c.event.type,
        "occurred_at": c.event.occurred_at,
        "topic": c.topic,
        "offset": c.offset,
        "payload": trace_payload(c.event),
    }


async def record_trace(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    pings = [c for c in batch if isinstance(c.event, PING_EVENTS)]
    leads = [c for c in batch if not isinstance(c.event, PING_EVENTS)]
    await store.record_lead_events(
        conn, [{**_row(c), "lead_id": c.event.correlation_id} for c in leads]
    )
    await store.record_ping_events(
        conn, [{**_row(c), "ping_id": c.event.payload.ping_id} for c in pings]
    )


# --- telling the story ------------------------------------------------------------------------


def lead_status(types: Sequence[str]) -> str:
    if "LeadRejected" in types:
        return "rejected"
    sold = types.count("LeadSold")
    if sold:
        return "returned" if types.count("LeadReturned") >= sold else "sold"
    if "LeadUnsold" in types:
        return "unsold"
    if set(types) == {"LeadReceived"}:
        return "received"  # not routed yet
    return "in_progress" if types else "unknown"


def _buyer(buyer_id: Any, names: Names) -> str:
    if buyer_id is None:
        return "the lead"
    name = names.get(str(buyer_id))
    return f"buyer {name!r}" if name else f"buyer {buyer_id}"


def _usd(amount: Any) -> str:
    return f"${amount}"


_EXHAUSTION = {
    ev.ExhaustionReason.NO_ELIGIBLE_BUYERS.value: "no buyer could take it",
    ev.ExhaustionReason.ALL_BUYERS_DECLINED.value: "every buyer offered it declined",
}


def describe(type_: str, p: Mapping[str, Any], names: Names) -> str:
    """One event in words, for an operator reading the trace."""
    if type_ == "LeadReceived":
        auction = f" as the post of auction {p['ping_id']}" if p.get("ping_id") else ""
        return f"received from source {names.get(str(p['source_id']), p['source_id'])}{auction}"
    if type_ == "LeadRejected":
        return f"refused at intake (HTTP {p['http_status']}): " + "; ".join(
            _rejection(r, names) for r in p["rejections"]
        )
    if type_ == "LeadRouted":
        return (
            f"offered to {_buyer(p['buyer_id'], names)} at {_usd(p['price'])}"
            f" (offer {p['attempt']}, sale {p.get('sale', 1)})"
        )
    if type_ == "LeadRoutingExhausted":
        why = _EXHAUSTION.get(p["reason"], p["reason"])
        reasons = "; ".join(_rejection(r, names) for r in p.get("rejections", ()))
        return f"routing ended: {why}" + (f" ({reasons})" if reasons else "")
    if type_ == "DeliveryAttempted":
        return _attempt(p, names)
    if type_ == "LeadSold":
        payout = "" if p.get("payout") is None else f"; the source earns {_usd(p['payout'])}"
        return f"sold to {_buyer(p['buyer_id'], names)} at {_usd(p['price'])}{payout}"
    if type_ == "LeadUnsold":
        reasons = "; ".join(_rejection(r, names) for r in p.get("rejections", ()))
        why = _EXHAUSTION.get(p["reason"], p["reason"])
        return f"unsold: {why}" + (f" ({reasons})" if reasons else "")
    if type_ == "LeadReturned":
        said = f": {p['reason']}" if p.get("reason") else ""
        payout = (
            "" if p.get("payout") is None else f", {_usd(p['payout'])} clawed back from the source"
        )
        return (
            f"returned by {p['returned_by']} ({p['reason_code']}{said});"
            f" {_buyer(p['buyer_id'], names)} credited {_usd(p['price'])}{payout}"
        )
    if type_ == "PingReceived":
        return f"ping received from source {names.get(str(p['source_id']), p['source_id'])}"
    if type_ == "BuyerPinged":
        who, ms = _buyer(p["buyer_id"], names), round(float(p["latency_ms"]))
        if p["result"] == ev.PingResult.BID.value:
            return f"{who} bid {_usd(p['price'])} in {ms} ms"
        said = f": {p['reason']}" if p.get("reason") else ""
        return f"{who}: {p['result'].replace('_', ' ')} after {ms} ms{said}"
    if type_ == "AuctionClosed":
        bids = p.get("bids") or []
        best = (
            f", best {_usd(bids[0]['price'])} by {_buyer(bids[0]['buyer_id'], names)}"
            if bids
            else ""
        )
        promised = (
            "" if p.get("payout") is None else f"; the source was promised {_usd(p['payout'])}"
        )
        took = round(float(p["duration_ms"]))
        return f"auction closed in {took} ms: {len(bids)} bid(s){best}{promised}"
    return type_


def _rejection(r: Mapping[str, Any], names: Names) -> str:
    field = f" [{r['field']}]" if r.get("field") else ""
    who = f"{_buyer(r['buyer_id'], names)}: " if r.get("buyer_id") else ""
    return f"{who}{r['detail']}{field} ({r['code']})"


def _attempt(p: Mapping[str, Any], names: Names) -> str:
    who = _buyer(p["buyer_id"], names)
    status = f"HTTP {p['http_status']}, " if p.get("http_status") is not None else ""
    took = f"{status}{round(float(p['latency_ms']))} ms"
    if p["result"] == ev.DeliveryResult.ACCEPTED.value:
        price = f" at {_usd(p['price'])}" if p.get("price") is not None else ""
        ref = f", its lead id {p['buyer_lead_id']}" if p.get("buyer_lead_id") else ""
        return f"{who} accepted{price} ({took}{ref})"
    verb = {"rejected": "rejected it", "error": "failed", "outcome_unknown": "did not answer"}
    said = f": {p['reason']}" if p.get("reason") else ""
    code = f" ({p['reason_code']})" if p.get("reason_code") else ""
    again = "; will try again with the same delivery id" if not p.get("final", True) else ""
    return f"{who} {verb.get(p['result'], p['result'])}{said}{code} ({took}){again}"


class Reason(Frozen):
    code: str
    detail: str
    buyer_id: uuid.UUID | None = None
    buyer_name: str | None = None
    field: str | None = None


class Why(Frozen):
    """Why a lead was refused or went unsold: in words, and as codes."""

    summary: str
    codes: list[str]
    reasons: list[Reason]


def _reason(r: Mapping[str, Any], names: Names) -> Reason:
    buyer = r.get("buyer_id")
    return Reason(
        code=str(r["code"]),
        detail=str(r["detail"]),
        buyer_id=buyer,
        buyer_name=names.get(str(buyer)) if buyer else None,
        field=r.get("field"),
    )


def why(events: Sequence[tuple[str, Mapping[str, Any]]], names: Names) -> Why | None:
    """The reasons a refused or unsold lead was not sold; None for any other lead."""
    by_type: dict[str, Mapping[str, Any]] = {}
    for type_, payload in events:
        by_type[type_] = payload  # the last of each type
    if "LeadRejected" in by_type:
        rejected = by_type["LeadRejected"]
        reasons = [_reason(r, names) for r in rejected["rejections"]]
        head = "refused at intake"
    elif "LeadUnsold" in by_type and "LeadSold" not in by_type:
        unsold = by_type["LeadUnsold"]
        listed = unsold.get("rejections") or by_type.get("LeadRoutingExhausted", {}).get(
            "rejections", ()
        )
        reasons = [_reason(r, names) for r in listed] or _declines(events, names)
        head = f"unsold: {_EXHAUSTION.get(unsold['reason'], unsold['reason'])}"
        if not reasons:
            reasons = [Reason(code="no_buyers", detail="the campaign has no buyer to offer it to")]
    else:
        return None
    words = "; ".join(
        (f"{_buyer(r.buyer_id, names)}: " if r.buyer_id else "")
        + r.detail
        + (f" [{r.field}]" if r.field else "")
        + f" ({r.code})"
        for r in reasons
    )
    codes = list(dict.fromkeys(r.code for r in reasons))
    return Why(summary=f"{head}: {words}" if words else head, codes=codes, reasons=reasons)


def _declines(events: Sequence[tuple[str, Mapping[str, Any]]], names: Names) -> list[Reason]:
    """Final refusals recorded by delivery, for outcomes that listed none (v1 events)."""
    found = []
    for type_, p in events:
        if type_ == "DeliveryAttempted" and p.get("final", True) and p["result"] != "accepted":
            code = p.get("reason_code") or ev.RejectionCode.BUYER_REJECTED.value
            found.append(
                _reason(
                    {
                        "code": code,
                        "detail": p.get("reason") or p["result"],
                        "buyer_id": p["buyer_id"],
                    },
                    names,
                )
            )
    return found


def _ids(payloads: Sequence[Mapping[str, Any]], key: str) -> set[uuid.UUID]:
    ids: set[uuid.UUID] = set()
    for p in payloads:
        for item in [p, *p.get("rejections", ()), *p.get("bids", ())]:
            if isinstance(item, Mapping) and item.get(key):
                ids.add(uuid.UUID(str(item[key])))
    return ids


# --- the API ------------------------------------------------------------------------------------


class TraceEvent(Frozen):
    event_id: uuid.UUID
    type: str
    occurred_at: Any
    topic: str
    offset: int
    summary: str  # the event in words
    payload: dict[str, Any]


class AuctionTrace(Frozen):
    """The auction whose winning bid this lead was posted against (lead.pinged)."""

    ping_id: uuid.UUID
    events: list[TraceEvent]


class LeadTrace(Frozen):
    lead_id: uuid.UUID
    status: Annotated[str, "received, in_progress, rejected, sold, returned, unsold"]
    why: Why | None = None  # for a lead refused or unsold
    events: list[TraceEvent]
    auction: AuctionTrace | None = None
    # Delivery's request and response logs (PII): for a caller with pii:read only, and
    # each such read is written to the audit log.
    deliveries: list[dict[str, Any]]
    deliveries_error: str | None = None
    deliveries_withheld: bool = False  # the caller may not read them


def _events(rows: Sequence[dict[str, Any]], names: Names) -> list[TraceEvent]:
    return [
        TraceEvent(
            event_id=r["event_id"],
            type=r["type"],
            occurred_at=r["occurred_at"],
            topic=r["topic"],
            offset=r["offset"],
            summary=describe(r["type"], r["payload"], names),
            payload=r["payload"],
        )
        for r in rows
    ]


@router.get(
    "/leads/{lead_id}/trace",
    response_model=LeadTrace,
    responses={
        401: {"description": "no valid credential"},
        403: {"description": "`forbidden`: the role may not read traces"},
        404: {"description": "no such lead (or one of another account)"},
    },
)
async def get_trace(lead_id: uuid.UUID, rt: Rt, who: TraceReader) -> LeadTrace:
    """A lead's whole story: received (or refused), its auction, routed, every attempt
    with request and response (with pii:read), the outcome, returns; and why, when it
    was not sold."""
    async with rt.db.begin() as conn:
        rows = await store.lead_events(conn, lead_id)
        if not rows or not who.sees(rows[0]["account_id"]):
            raise _not_found("lead")
        ping_id = next((r["payload"]["ping_id"] for r in rows if r["payload"].get("ping_id")), None)
        ping_rows = await store.ping_events(conn, uuid.UUID(ping_id)) if ping_id else []
        payloads = [r["payload"] for r in (*rows, *ping_rows)]
        names = {
            str(k): v
            for kind in ("buyer", "source")
            for k, v in (
                await store.entity_names(conn, kind, sorted(_ids(payloads, f"{kind}_id")))
            ).items()
        }
    withheld = not who.can(Permission.PII_READ)
    deliveries, error = ([], None) if withheld else await delivery_log(rt, lead_id)
    if not withheld and error is None:
        async with rt.db.begin() as conn:  # committed before the PII leaves
            await audit.record(
                conn,
                who,
                "pii.read",
                account_id=rows[0]["account_id"],
                entity_kind="lead",
                entity_id=lead_id,
                after={"view": "trace.deliveries", "deliveries": len(deliveries)},
            )
    return LeadTrace(
        lead_id=lead_id,
        status=lead_status([r["type"] for r in rows]),
        why=why([(r["type"], r["payload"]) for r in rows], names),
        events=_events(rows, names),
        auction=AuctionTrace(ping_id=ping_id, events=_events(ping_rows, names))
        if ping_id
        else None,
        deliveries=deliveries,
        deliveries_error=error,
        deliveries_withheld=withheld,
    )
