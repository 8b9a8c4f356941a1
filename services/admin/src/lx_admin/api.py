"""Admin's HTTP API for operators: accounts, campaigns, sources, buyers, lead trace."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from lx_platform.egress import EgressPolicy, EgressRefusedError
from lx_platform.http import operator_guard
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.envelope import Event, Frozen
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_admin import domain, store

router = APIRouter(prefix="/v1", dependencies=[Depends(operator_guard())], tags=["config"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong operator token"},
    404: {"description": "no such entity"},
}
BUYER_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    422: {
        "description": "invalid buyer; `endpoint_not_allowed` when the endpoint URL is not an"
        " http(s) URL without credentials whose host resolves only to publicly routable"
        " addresses (`reason`: `loopback`, `private`, `link_local`, `cloud_metadata`,"
        " `unresolvable_host`...)"
    },
}


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


Rt = Annotated[Runtime, Depends(runtime)]


def _not_found(kind: str) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND, {"code": f"{kind}_not_found", "detail": f"no such {kind}"}
    )


async def _check_endpoint(rt: Runtime, url: str) -> None:
    """Refuse an endpoint delivery would refuse to connect to (SSRF, OWASP API7).

    Delivery checks again at every connection: a name may resolve elsewhere later.
    """
    egress: EgressPolicy = rt.extras["egress"]
    try:
        await egress.check_url(url)
    except EgressRefusedError as exc:
        raise HTTPException(
            422,
            {
                "code": "endpoint_not_allowed",
                "detail": f"endpoint_url: {exc.detail}",
                "field": "endpoint_url",
                "reason": exc.reason,
            },
        ) from exc


async def _publish(
    rt: Runtime,
    conn: AsyncConnection,
    event_cls: type[Event],
    state: Frozen,
    entity_id: uuid.UUID,
    account_id: uuid.UUID,
) -> None:
    event = event_cls.new(
        account_id=account_id, correlation_id=entity_id, producer="admin", payload=state
    )
    # Keyed by entity id: the compacted topic keeps each entity's latest full state.
    await rt.outbox.stage(conn, event, entity_id)


@router.post("/accounts", status_code=201, response_model=ev.AccountState, responses=ERRORS)
async def create_account(body: domain.AccountCreate, rt: Rt) -> ev.AccountState:
    state = ev.AccountState(account_id=uuid.uuid4(), name=body.name)
    async with rt.db.begin() as conn:
        await store.insert_entity(conn, "account", state.account_id, state)
        await _publish(rt, conn, ev.AccountConfigured, state, state.account_id, state.account_id)
    rt.relay.wake()
    return state


@router.get("/accounts/{account_id}", response_model=ev.AccountState, responses=ERRORS)
async def get_account(account_id: uuid.UUID, rt: Rt) -> dict[str, Any]:
    async with rt.db.begin() as conn:
        state = await store.get_state(conn, "account", account_id)
    if state is None:
        raise _not_found("account")
    return state


@router.post(
    "/accounts/{account_id}/campaigns",
    status_code=201,
    response_model=ev.CampaignState,
    responses={**ERRORS, 422: {"description": "invalid campaign"}},
)
async def create_campaign(
    account_id: uuid.UUID, body: domain.CampaignCreate, rt: Rt
) -> ev.CampaignState:
    dupes = domain.check_unique_fields(body.fields)
    if dupes:
        raise HTTPException(422, {"code": "duplicate_field", "detail": f"fields repeated: {dupes}"})
    errors = [
        *domain.enum_fields_without_options(body.fields),
        *domain.dedupe_rule_errors(body.fields, body.dedupe),
    ]
    if errors:
        raise HTTPException(
            422,
            {
                "code": "invalid_request",
                "errors": errors,
                "detail": "the request does not match the schema",
            },
        )
    state = ev.CampaignState(
        campaign_id=uuid.uuid4(),
        account_id=account_id,
        name=body.name,
        vertical=body.vertical,
        fields=tuple(body.fields),
        dedupe=body.dedupe,
    )
    async with rt.db.begin() as conn:
        if await store.get_state(conn, "account", account_id) is None:
            raise _not_found("account")
        await store.insert_entity(conn, "campaign", state.campaign_id, state, account_id=account_id)
        await _publish(rt, conn, ev.CampaignConfigured, state, state.campaign_id, account_id)
    rt.relay.wake()
    return state


@router.get("/campaigns/{campaign_id}", response_model=ev.CampaignState, responses=ERRORS)
async def get_campaign(campaign_id: uuid.UUID, rt: Rt) -> dict[str, Any]:
    async with rt.db.begin() as conn:
        state = await store.get_state(conn, "campaign", campaign_id)
    if state is None:
        raise _not_found("campaign")
    return state


class SourceCreated(ev.SourceState):
    api_key: str  # shown once; only its hash is kept


@router.post(
    "/campaigns/{campaign_id}/sources",
    status_code=201,
    response_model=SourceCreated,
    responses=ERRORS,
)
async def create_source(campaign_id: uuid.UUID, body: domain.SourceCreate, rt: Rt) -> SourceCreated:
    key = domain.new_api_key()
    async with rt.db.begin() as conn:
        campaign = await store.get_state(conn, "campaign", campaign_id)
        if campaign is None:
            raise _not_found("campaign")
        account_id = uuid.UUID(campaign["account_id"])
        state = ev.SourceState(
            source_id=uuid.uuid4(),
            account_id=account_id,
            campaign_id=campaign_id,
            name=body.name,
            api_key_prefix=domain.display_prefix(key),
            api_key_sha256=domain.api_key_sha256(key),
            payout=body.payout,
        )
        await store.insert_entity(
            conn, "source", state.source_id, state, account_id=account_id, campaign_id=campaign_id
        )
        await _publish(rt, conn, ev.SourceConfigured, state, state.source_id, account_id)
    rt.relay.wake()
    return SourceCreated(**state.model_dump(), api_key=key)


@router.get("/campaigns/{campaign_id}/sources", response_model=list[ev.SourceState])
async def list_sources(campaign_id: uuid.UUID, rt: Rt) -> list[dict[str, Any]]:
    async with rt.db.begin() as conn:
        return await store.list_states(conn, "source", "campaign", campaign_id)


@router.post(
    "/campaigns/{campaign_id}/buyers",
    status_code=201,
    response_model=ev.BuyerState,
    responses=BUYER_ERRORS,
)
async def create_buyer(campaign_id: uuid.UUID, body: domain.BuyerCreate, rt: Rt) -> ev.BuyerState:
    await _check_endpoint(rt, str(body.endpoint_url))
    async with rt.db.begin() as conn:
        campaign = await store.get_state(conn, "campaign", campaign_id)
        if campaign is None:
            raise _not_found("campaign")
        account_id = uuid.UUID(campaign["account_id"])
        state = ev.BuyerState(
            buyer_id=uuid.uuid4(),
            account_id=account_id,
            campaign_id=campaign_id,
            **body.model_dump(),
        )
        await store.insert_entity(
            conn, "buyer", state.buyer_id, state, account_id=account_id, campaign_id=campaign_id
        )
        await _publish(rt, conn, ev.BuyerConfigured, state, state.buyer_id, account_id)
    rt.relay.wake()
    return state


@router.get("/campaigns/{campaign_id}/buyers", response_model=list[ev.BuyerState])
async def list_buyers(campaign_id: uuid.UUID, rt: Rt) -> list[dict[str, Any]]:
    async with rt.db.begin() as conn:
        return await store.list_states(conn, "buyer", "campaign", campaign_id)


@router.patch("/buyers/{buyer_id}", response_model=ev.BuyerState, responses=BUYER_ERRORS)
async def update_buyer(buyer_id: uuid.UUID, body: domain.BuyerUpdate, rt: Rt) -> ev.BuyerState:
    """Change a buyer's price, priority, endpoint or status (pause / resume)."""
    if body.endpoint_url is not None:
        await _check_endpoint(rt, str(body.endpoint_url))
    async with rt.db.begin() as conn:
        current = await store.get_state(conn, "buyer", buyer_id, for_update=True)
        if current is None:
            raise _not_found("buyer")
        changes = body.model_dump(exclude_none=True)
        state = ev.BuyerState.model_validate({**current, **changes})
        await store.update_entity(conn, "buyer", buyer_id, state)
        await _publish(rt, conn, ev.BuyerConfigured, state, buyer_id, state.account_id)
    rt.relay.wake()
    return state
