"""Data subjects' rights and retention: an operator API on ingest, which holds the
lead key vault and the subject index.

- ``POST /v1/privacy/access``: everything held on a subject (by e-mail or phone, in
  one account): each lead's fields and PII opened, its status and outcome, its
  deliveries with their requests and responses (delivery's internal API, as the
  trace reads them), and the posts refused once their fields were read.
- ``POST /v1/privacy/erasure``: crypto-shredding. The subject's leads' data keys are
  destroyed, so their PII, sealed in every copy (``lead.received``, ``lead.routed``,
  router's routings, delivery's jobs and logs, admin's trace events), can no longer be
  opened; the keyed hashes linking them to the subject (subject and duplicate index)
  are deleted. Ids, statuses and amounts stay: billing keeps its records under the
  lead's pseudonymous id.
- ``GET /v1/privacy/requests``: every request with its deadline (30 days); overdue
  ones are flagged.
- ``PUT /v1/privacy/campaigns/{id}/retention``: PII of the campaign's leads older than
  N days is shredded by the pruner (``lx_ingest.retention``).

Retention is ingest's own setting rather than a field of ``CampaignConfigured``: a
published event version is never edited, a v4 would need an upcaster, a frozen sample
and admin's API to set it (and every consumer of ``config.changed`` to read a field
only ingest uses). The setting lives where it is enforced, next to the vault; moving
it into the campaign later is a v4 plus a one-off copy of this table.

Requests name the subject in clear only in the operator's own call: ingest keeps its
keyed hash, never the value, and logs the request id.

Who: the operator token, or an access token whose role holds ``privacy:manage`` (an
account's owner or admin). A tenant's principal names subjects, requests and campaigns
of its own account only: another account's answer 404, as if they did not exist.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from lx_platform.access import Permission, Principal
from lx_platform.crypto import open_fields
from lx_platform.db import Database
from lx_platform.deliverylog import delivery_log
from lx_platform.http import GUARD_ERRORS, not_found, principal_guard, require_visible
from lx_platform.logging import get_logger
from lx_platform.outbox import Outbox
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id, utcnow
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_ingest import domain, store
from lx_ingest.settings import IngestSettings

log = get_logger(__name__)
router = APIRouter(prefix="/v1/privacy", tags=["privacy"])
# Each route takes the principal (``who``): its account bounds what it may name.
Privacy = Annotated[Principal, Depends(principal_guard(Permission.PRIVACY))]
SubjectKind = domain.SubjectKind


class SubjectRequest(BaseModel):
    """A data subject in one account, named by exactly one of e-mail or phone."""

    model_config = ConfigDict(extra="forbid")

    account_id: uuid.UUID
    email: Annotated[str, Field(max_length=320)] | None = None
    phone: Annotated[str, Field(max_length=64)] | None = None


class PrivacyRequestView(BaseModel):
    request_id: uuid.UUID
    kind: str  # access | erasure
    account_id: uuid.UUID
    subject_kind: str  # email | phone
    received_at: dt.datetime
    due_at: dt.datetime
    status: str  # pending | completed
    completed_at: dt.datetime | None = None
    leads: int | None = None
    keys_shredded: int | None = None
    overdue: bool = False


class PrivacyRequests(BaseModel):
    requests: list[PrivacyRequestView]


class HeldLead(BaseModel):
    """One lead as held: ``pii_state`` ``readable`` (opened in ``pii``), ``shredded``
    (its key destroyed) or ``not_kept`` (stored before ingest kept a copy)."""

    lead_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    received_at: dt.datetime
    status: str
    outcome_at: dt.datetime | None = None
    reason: str | None = None
    sales: int = 0
    returns: int = 0
    payout: Decimal | None = None
    rejection_codes: list[str] = []
    ping_id: uuid.UUID | None = None
    fields: dict[str, Any] = {}
    pii: dict[str, Any] | None = None
    pii_state: str
    deliveries: list[dict[str, Any]] = []
    deliveries_error: str | None = None


class HeldRefusal(BaseModel):
    lead_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    refused_at: dt.datetime
    http_status: int
    code: str
    rejections: list[dict[str, Any]]
    ping_id: uuid.UUID | None = None


class AccessExport(BaseModel):
    """Everything held on the subject, machine-readable (the request is ``request``)."""

    request: PrivacyRequestView
    leads: list[HeldLead]
    refusals: list[HeldRefusal]


class RetentionSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # null: keep PII until erased (no automatic shredding)
    retention_days: Annotated[int, Field(ge=1, le=3650)] | None


class RetentionView(BaseModel):
    campaign_id: uuid.UUID
    retention_days: int | None
    updated_at: dt.datetime | None = None
    leads_shredded: int = 0  # by retention, ever
    last_run_at: dt.datetime | None = None


_AUTH_ERRORS = GUARD_ERRORS
_SUBJECT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    404: {"description": "`account_not_found`: another account's"},
    422: {
        "description": "`subject_required`: give exactly one of `email` and `phone`;"
        " `invalid_subject`: not an e-mail address or phone number (`field` names it);"
        " `invalid_request`: the body does not match the schema"
    },
}


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _hash_key(rt: Runtime) -> bytes:
    settings = rt.settings
    assert isinstance(settings, IngestSettings)
    return settings.hash_key.get_secret_value().encode()


def _subject(rt: Runtime, body: SubjectRequest) -> tuple[SubjectKind, bytes]:
    """The subject's kind and keyed hash, or a 422 naming what is wrong (never echoing
    the value: the answer may end up in a log)."""
    given = ((SubjectKind.EMAIL, body.email), (SubjectKind.PHONE, body.phone))
    present = [(k, v) for k, v in given if v is not None]
    if len(present) != 1:
        raise HTTPException(
            422, {"code": "subject_required", "detail": "give exactly one of email and phone"}
        )
    kind, value = present[0]
    try:
        normalised = domain.normalise_subject(kind, value)
    except domain.Invalid as exc:
        raise HTTPException(
            422,
            {
                "code": "invalid_subject",
                "detail": f"not a valid {kind.value} [{exc.code}]",
                "field": kind.value,
            },
        ) from None
    return kind, domain.subject_hash(_hash_key(rt), body.account_id, kind, normalised)


def _view(row: dict[str, Any], now: dt.datetime) -> PrivacyRequestView:
    return PrivacyRequestView(
        **row, overdue=domain.privacy_overdue(row["status"], row["due_at"], now)
    )


# --- the audit trail: admin's hash-chained log, through audit.recorded ----------------------


def _actor(request: Request) -> str:
    """Who made the request, as admin's audit log names them: the principal the guard
    put on the request, else the platform's operator token (the only other credential)."""
    actor = getattr(getattr(request.state, "principal", None), "actor", None)
    return actor if isinstance(actor, str) else "operator_token:operator"


def _audited(
    actor: str,
    action: str,
    account_id: uuid.UUID,
    entity: tuple[str, uuid.UUID],
    detail: dict[str, ev.AuditValue],
) -> ev.AuditRecorded:
    """An entry for admin's audit log. ``detail`` holds ids, counts and settings, never a
    subject's e-mail or phone: a subject is named by their request's id."""
    return ev.AuditRecorded.new(
        account_id=account_id,
        correlation_id=entity[1],
        producer="ingest",
        payload=ev.AuditRecordedPayload(
            actor=actor, action=action, entity_kind=entity[0], entity_id=entity[1], detail=detail
        ),
    )


async def _audit_retention(
    rt: Runtime, conn: AsyncConnection, request: Request, campaign_id: uuid.UUID, days: int | None
) -> None:
    account_id = await store.campaign_account(conn, campaign_id)
    if account_id is not None:
        event = _audited(
            _actor(request),
            "privacy.retention_set",
            account_id,
            ("campaign", campaign_id),
            {"retention_days": days},
        )
        await rt.outbox.stage(conn, event, account_id)


async def _open_request(
    rt: Runtime, kind: str, body: SubjectRequest, subject: tuple[SubjectKind, bytes], actor: str
) -> uuid.UUID:
    """Record the request, and its audit entry in the same transaction: neither exists
    without the other."""
    request_id = uuid.uuid4()
    async with rt.db.begin() as conn:
        await store.insert_privacy_request(
            conn,
            request_id=request_id,
            kind=kind,
            account_id=body.account_id,
            subject_kind=subject[0],
            value_hash=subject[1],
            received_at=utcnow(),
        )
        detail: dict[str, ev.AuditValue] = {
            "request_id": str(request_id),
            "subject_kind": subject[0].value,
        }
        event = _audited(
            actor,
            f"privacy.{kind}_requested",
            body.account_id,
            ("privacy_request", request_id),
            detail,
        )
        await rt.outbox.stage(conn, event, body.account_id)
    rt.relay.wake()
    return request_id


async def _request_view(rt: Runtime, request_id: uuid.UUID) -> PrivacyRequestView:
    async with rt.db.begin() as conn:
        row = await store.privacy_request(conn, request_id)
    assert row is not None
    return _view(row, utcnow())


# --- access ---------------------------------------------------------------------------------


async def _held_lead(rt: Runtime, conn: AsyncConnection, row: dict[str, Any]) -> HeldLead:
    vault: store.KeyVault = rt.extras["vault"]
    content = row.pop("content")
    shredded_at, _ = row.pop("pii_shredded_at"), row.pop("shred_cause")
    row.pop("account_id")
    fields: dict[str, Any] = {}
    pii: dict[str, Any] | None = None
    state = "not_kept"
    if shredded_at is not None:
        state = "shredded"
    elif content is not None:
        lead = ev.LeadContent.model_validate(content)
        fields = dict(lead.fields)
        state = "readable"
        if lead.pii is not None:
            key = await vault.get(conn, lead.pii.key_id)
            if key is None:
                state = "shredded"
            else:
                pii = open_fields(key, lead.pii)
    return HeldLead(
        **{**row, "rejection_codes": row["rejection_codes"] or []},
        fields=fields,
        pii=pii,
        pii_state=state,
    )


@router.post("/access", response_model=AccessExport, responses=_SUBJECT_ERRORS)
async def access(body: SubjectRequest, request: Request, who: Privacy) -> AccessExport:
    """A copy of everything held on the subject (GDPR art. 15), recorded as a request
    with its deadline and completed at once."""
    require_visible(who, body.account_id, "account")
    rt = _runtime(request)
    subject = _subject(rt, body)
    request_id = await _open_request(rt, "access", body, subject, _actor(request))
    async with rt.db.begin() as conn:
        ids = await store.subject_lead_ids(conn, body.account_id, *subject)
        leads = [await _held_lead(rt, conn, row) for row in await store.leads_held(conn, ids)]
        refusals = [HeldRefusal(**row) for row in await store.refusals_held(conn, ids)]
    for lead in leads:
        if lead.pii_state == "readable":
            lead.deliveries, lead.deliveries_error = await delivery_log(rt, lead.lead_id)
    async with rt.db.begin() as conn:
        await store.complete_privacy_request(conn, request_id, now=utcnow(), leads=len(ids))
    log.info("privacy_access_exported", request_id=str(request_id), leads=len(ids))
    return AccessExport(request=await _request_view(rt, request_id), leads=leads, refusals=refusals)


# --- erasure --------------------------------------------------------------------------------


async def perform_erasure(
    conn: AsyncConnection,
    request_id: uuid.UUID,
    account_id: uuid.UUID,
    kind: SubjectKind,
    value_hash: bytes,
    outbox: Outbox | None,
) -> tuple[int, int]:
    """Shred the subject's leads and complete the request, in the caller's transaction;
    returns (leads found, data keys destroyed). ``LeadsErased`` is staged in the same
    transaction, so that the router forgets the leads' keyed hashes too (``outbox``
    None: a direct call from a test or a tool, which announces nothing)."""
    ids = await store.subject_lead_ids(conn, account_id, kind, value_hash)
    now = utcnow()
    shredded = await store.shred_leads(conn, ids, cause="erasure", now=now)
    await store.complete_privacy_request(
        conn, request_id, now=now, leads=len(ids), keys_shredded=shredded
    )
    if outbox is not None:
        await outbox.stage_many(conn, erased(request_id, account_id, ids, now))
    elif ids:
        log.warning("erasure_not_announced", request_id=str(request_id), leads=len(ids))
    return len(ids), shredded


def erased(
    request_id: uuid.UUID, account_id: uuid.UUID, ids: list[uuid.UUID], now: dt.datetime
) -> list[tuple[Event, uuid.UUID | str]]:
    """``LeadsErased`` for ``ids``, a bounded number of leads per event. Deterministic ids:
    a retried erasure announces the same events, which consumers ignore."""
    step = ev.MAX_ERASED_LEADS
    return [
        (
            ev.LeadsErased.new(
                event_id=derived_id("leads.erased", request_id, start),
                occurred_at=now,
                account_id=account_id,
                correlation_id=request_id,
                producer="ingest",
                payload=ev.LeadsErasedPayload(
                    request_id=request_id, lead_ids=tuple(ids[start : start + step])
                ),
            ),
            account_id,
        )
        for start in range(0, len(ids), step)
    ]


async def perform_pending_erasures(db: Database, limit: int, outbox: Outbox | None = None) -> int:
    """Erasures whose first try failed (the pruner's round); returns how many were done."""
    async with db.begin() as conn:
        pending = await store.pending_erasures(conn, limit)
        for row in pending:
            await perform_erasure(
                conn,
                row["request_id"],
                row["account_id"],
                SubjectKind(row["subject_kind"]),
                bytes(row["value_hash"]),
                outbox,
            )
    return len(pending)


@router.post(
    "/erasure", status_code=202, response_model=PrivacyRequestView, responses=_SUBJECT_ERRORS
)
async def erasure(body: SubjectRequest, request: Request, who: Privacy) -> PrivacyRequestView:
    """Erase the subject (GDPR art. 17) by crypto-shredding their leads' data keys.

    Recorded first (due in 30 days), then performed at once; if that fails the request
    stays ``pending`` and the pruner's next round performs it. Billing's records keep
    their amounts under the leads' ids, which name no one once the keys are gone.
    """
    require_visible(who, body.account_id, "account")
    rt = _runtime(request)
    subject = _subject(rt, body)
    request_id = await _open_request(rt, "erasure", body, subject, _actor(request))
    try:
        async with rt.db.begin() as conn:
            leads, shredded = await perform_erasure(
                conn, request_id, body.account_id, *subject, rt.outbox
            )
        rt.relay.wake()
        log.info("privacy_erasure_done", request_id=str(request_id), leads=leads, keys=shredded)
    except Exception as exc:  # recorded: the pruner's round performs it
        log.error("privacy_erasure_deferred", request_id=str(request_id), error=repr(exc))
    return await _request_view(rt, request_id)


@router.get(
    "/requests",
    response_model=PrivacyRequests,
    responses={**_AUTH_ERRORS, 404: {"description": "`account_not_found`: another account's"}},
)
async def list_requests(
    request: Request,
    who: Privacy,
    account_id: uuid.UUID | None = None,
    status: Annotated[str | None, Query(pattern="^(pending|completed)$")] = None,
    overdue: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PrivacyRequests:
    """Requests with their deadlines, pending first by due date; ``overdue=true``: only
    those past their deadline and not completed. A tenant's: its own account's only."""
    if account_id is not None:
        require_visible(who, account_id, "account")
    elif not who.staff:
        account_id = who.account_id
    rt = _runtime(request)
    now = utcnow()
    async with rt.db.begin() as conn:
        rows = await store.privacy_requests(
            conn,
            account_id=account_id,
            status=status,
            overdue_at=now if overdue else None,
            limit=limit,
        )
    return PrivacyRequests(requests=[_view(r, now) for r in rows])


@router.get(
    "/requests/{request_id}",
    response_model=PrivacyRequestView,
    responses={**_AUTH_ERRORS, 404: {"description": "`request_not_found`"}},
)
async def get_request(request_id: uuid.UUID, request: Request, who: Privacy) -> PrivacyRequestView:
    rt = _runtime(request)
    async with rt.db.begin() as conn:
        row = await store.privacy_request(conn, request_id)
    if row is None or not who.sees(row["account_id"]):
        raise HTTPException(404, {"code": "request_not_found", "detail": "no such request"})
    return _view(row, utcnow())


# --- retention per campaign -----------------------------------------------------------------


async def _retention_view(conn: AsyncConnection, campaign_id: uuid.UUID) -> RetentionView:
    return RetentionView(campaign_id=campaign_id, **await store.retention_of(conn, campaign_id))


@router.put(
    "/campaigns/{campaign_id}/retention",
    response_model=RetentionView,
    responses={
        **_AUTH_ERRORS,
        404: {
            "description": "`campaign_not_found`: ingest does not know it (yet), or it is"
            " another account's"
        },
    },
)
async def put_retention(
    campaign_id: uuid.UUID, body: RetentionSetting, request: Request, who: Privacy
) -> RetentionView:
    """Shred the PII of the campaign's leads older than ``retention_days`` (null: keep
    until erased). Applies to leads already held too, at the pruner's next round."""
    rt = _runtime(request)
    async with rt.db.begin() as conn:
        account = await store.campaign_account(conn, campaign_id)
        if account is None or not who.sees(account):
            raise HTTPException(
                404, {"code": "campaign_not_found", "detail": "ingest knows no such campaign"}
            )
        await store.set_retention(conn, campaign_id, body.retention_days, utcnow())
        await _audit_retention(rt, conn, request, campaign_id, body.retention_days)
        view = await _retention_view(conn, campaign_id)
    log.info("retention_set", campaign_id=str(campaign_id), days=body.retention_days)
    return view


@router.get(
    "/campaigns/{campaign_id}/retention",
    response_model=RetentionView,
    responses={**_AUTH_ERRORS, 404: {"description": "`campaign_not_found`: another account's"}},
)
async def get_retention(campaign_id: uuid.UUID, request: Request, who: Privacy) -> RetentionView:
    async with _runtime(request).db.begin() as conn:
        if not who.staff:
            # A tenant asks of its own campaigns only; staff may ask of any id.
            account = await store.campaign_account(conn, campaign_id)
            if account is None or not who.sees(account):
                raise not_found("campaign")
        return await _retention_view(conn, campaign_id)
