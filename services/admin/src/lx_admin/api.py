"""Admin's HTTP API for operators: accounts, campaigns, sources, buyers, lead trace."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from lx_platform.egress import EgressPolicy, EgressRefusedError
from lx_platform.http import not_found
from lx_platform.runtime import Runtime
from lx_platform.secrets import ConfigKeys
from lx_schemas import events as ev
from lx_schemas.envelope import Event, Frozen, decode_event
from lx_schemas.integration import Auth, Integration, PingConfig, SealedSecret
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_admin import audit, domain, store
from lx_admin.access import Permission, Principal
from lx_admin.auth import (
    AccessToken,
    Authenticated,
    allow,
    authenticate,
    mint_access_token,
)

# Every route also names the permission it needs (``allow``); an entity of another
# account is 404 to the caller, as one that does not exist.
router = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], tags=["config"])
M = TypeVar("M", bound=BaseModel)
Reader = Annotated[Principal, Depends(allow(Permission.CONFIG_READ))]
Writer = Annotated[Principal, Depends(allow(Permission.CONFIG_WRITE))]
Staff = Annotated[Principal, Depends(allow(Permission.PLATFORM))]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid operator token, session token or API token"},
    403: {"description": "`forbidden`: the caller's role lacks the permission"},
    404: {"description": "no such entity (or one of another account)"},
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "invalid request: `invalid_request` with `errors`, each naming its"
        " `field` path and a `code`"
    }
}
BUYER_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    422: {
        "description": "invalid buyer: `invalid_request` with `errors` naming each field"
        " path (`unknown_filter_field`, `filter_type_mismatch`, `unknown_mapping_source`,"
        " `pii_in_ping`, `missing_secret`, a regex that does not compile, an unknown time"
        " zone, a cap without a limit...); `endpoint_not_allowed` when `endpoint_url` or"
        " `ping.url` is not an http(s) URL without credentials whose host resolves only to"
        " publicly routable addresses (`reason`: `loopback`, `private`, `link_local`,"
        " `cloud_metadata`, `unresolvable_host`...)"
    },
}


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


Rt = Annotated[Runtime, Depends(runtime)]


_not_found = not_found


def _invalid(errors: Sequence[domain.FieldError]) -> HTTPException:
    return HTTPException(
        422,
        {
            "code": "invalid_request",
            "errors": list(errors),
            "detail": "the request does not match the schema",
        },
    )


def _validated(cls: type[M], data: Any) -> M:
    """``cls`` from ``data``, or a 422 naming each field path, as a request body's would."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _invalid(
            [
                {"field": ".".join(str(p) for p in e["loc"]), "code": e["type"], "detail": e["msg"]}
                for e in exc.errors()
            ]
        ) from None


def config_keys(rt: Runtime) -> ConfigKeys:
    keys: ConfigKeys = rt.extras["config_keys"]
    return keys


async def _check_endpoint(rt: Runtime, url: str, field: str = "endpoint_url") -> None:
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
                "detail": f"{field}: {exc.detail}",
                "field": field,
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


# Stored states older than their event's newest version (a buyer with v1's acceptance
# rule, a source with v1's plain payout) are read through the events' own upcasters.
_STATE_EVENTS = {
    "campaign": ev.CampaignConfigured,
    "source": ev.SourceConfigured,
    "buyer": ev.BuyerConfigured,
}


def _stored_version(kind: str, state: dict[str, Any]) -> int:
    if kind == "buyer" and "acceptance" in state:
        return 1
    if kind == "source" and not isinstance(state.get("payout"), dict):
        return 1
    return _STATE_EVENTS[kind].VERSION if kind in _STATE_EVENTS else 1


def upgraded(kind: str, state: dict[str, Any]) -> dict[str, Any]:
    cls = _STATE_EVENTS.get(kind)
    version = _stored_version(kind, state)
    if cls is None or version == cls.VERSION:
        return state
    nil = str(uuid.UUID(int=0))
    envelope = {
        "type": cls.TYPE,
        "schema_version": version,
        "occurred_at": "2000-01-01T00:00:00Z",
        "account_id": state.get("account_id", nil),
        "correlation_id": nil,
        "producer": "admin",
        "payload": state,
    }
    payload: Frozen = decode_event(envelope).payload
    result: dict[str, Any] = payload.model_dump(mode="json")
    return result


async def _current(
    conn: AsyncConnection,
    kind: str,
    entity_id: uuid.UUID,
    who: Principal,
    *,
    for_update: bool = False,
) -> dict[str, Any]:
    """The entity's state, if it exists for ``who``: else 404, whether missing or of
    another account."""
    state = await store.get_state(conn, kind, entity_id, for_update=for_update)
    if state is None or not who.sees(state.get("account_id")):
        raise _not_found(kind)
    return upgraded(kind, state)


async def _audit(
    conn: AsyncConnection,
    who: Principal,
    action: str,
    kind: str,
    entity_id: uuid.UUID,
    account_id: uuid.UUID | str,
    before: Frozen | dict[str, Any] | None,
    after: Frozen | dict[str, Any] | None,
) -> None:
    def plain(state: Frozen | dict[str, Any] | None) -> Any:
        return state.model_dump(mode="json") if isinstance(state, Frozen) else state

    await audit.record(
        conn,
        who,
        f"{kind}.{action}",
        account_id=account_id,
        entity_kind=kind,
        entity_id=entity_id,
        before=plain(before),
        after=plain(after),
    )


# --- what answers show of a buyer ----------------------------------------------------------


class AuthView(Auth):
    secret: domain.SecretShown | None = None  # type: ignore[assignment]


class IntegrationView(Integration):
    auth: AuthView = AuthView()


class PingConfigView(PingConfig):
    integration: IntegrationView = IntegrationView()


class BuyerView(ev.BuyerState):
    """A buyer as answers show it: each sealed secret only by the id of its key."""

    integration: IntegrationView = IntegrationView()
    ping: PingConfigView | None = None
    signing_secret: domain.SecretShown | None = None  # type: ignore[assignment]


class BuyerCreated(BuyerView):
    # The key of the X-LeadExchange-Signature header, shown once; only sealed it is kept.
    signing_secret_value: str


class SigningSecret(Frozen):
    buyer_id: uuid.UUID
    key_id: str
    signing_secret_value: str  # shown once


def buyer_view(state: dict[str, Any] | ev.BuyerState) -> BuyerView:
    data = state.model_dump(mode="json") if isinstance(state, ev.BuyerState) else state
    return BuyerView.model_validate(domain.redact_secrets(data))


# --- accounts ------------------------------------------------------------------------------


@router.post("/accounts", status_code=201, response_model=ev.AccountState, responses=ERRORS)
async def create_account(body: domain.AccountCreate, rt: Rt, who: Staff) -> ev.AccountState:
    """A new account (tenant): the platform's staff only."""
    state = ev.AccountState(account_id=uuid.uuid4(), name=body.name)
    async with rt.db.begin() as conn:
        await store.insert_entity(conn, "account", state.account_id, state)
        await _audit(
            conn, who, "created", "account", state.account_id, state.account_id, None, state
        )
        await _publish(rt, conn, ev.AccountConfigured, state, state.account_id, state.account_id)
    rt.relay.wake()
    return state


@router.get("/accounts/{account_id}", response_model=ev.AccountState, responses=ERRORS)
async def get_account(account_id: uuid.UUID, rt: Rt, who: Reader) -> dict[str, Any]:
    async with rt.db.begin() as conn:
        return await _current(conn, "account", account_id, who)


# --- campaigns -----------------------------------------------------------------------------


def _campaign_errors(state: ev.CampaignState) -> list[domain.FieldError]:
    return [
        *domain.enum_fields_without_options(state.fields),
        *domain.dedupe_rule_errors(state.fields, state.dedupe),
    ]


@router.post(
    "/accounts/{account_id}/campaigns",
    status_code=201,
    response_model=ev.CampaignState,
    responses={**ERRORS, **INVALID},
)
async def create_campaign(
    account_id: uuid.UUID, body: domain.CampaignCreate, rt: Rt, who: Writer
) -> ev.CampaignState:
    """A campaign: its fields, duplicate check, distribution, margin and auctions."""
    dupes = domain.check_unique_fields(body.fields)
    if dupes:
        raise HTTPException(422, {"code": "duplicate_field", "detail": f"fields repeated: {dupes}"})
    state = ev.CampaignState(
        campaign_id=uuid.uuid4(),
        account_id=account_id,
        name=body.name,
        vertical=body.vertical,
        fields=tuple(body.fields),
        dedupe=body.dedupe,
        distribution=body.distribution,
        margin=body.margin,
        ping_post=body.ping_post,
    )
    errors = _campaign_errors(state)
    if errors:
        raise _invalid(errors)
    async with rt.db.begin() as conn:
        await _current(conn, "account", account_id, who)
        await store.insert_entity(conn, "campaign", state.campaign_id, state, account_id=account_id)
        await _audit(conn, who, "created", "campaign", state.campaign_id, account_id, None, state)
        await _publish(rt, conn, ev.CampaignConfigured, state, state.campaign_id, account_id)
    rt.relay.wake()
    return state


@router.get("/campaigns/{campaign_id}", response_model=ev.CampaignState, responses=ERRORS)
async def get_campaign(campaign_id: uuid.UUID, rt: Rt, who: Reader) -> dict[str, Any]:
    async with rt.db.begin() as conn:
        return await _current(conn, "campaign", campaign_id, who)


@router.patch(
    "/campaigns/{campaign_id}", response_model=ev.CampaignState, responses={**ERRORS, **INVALID}
)
async def update_campaign(
    campaign_id: uuid.UUID, body: domain.CampaignUpdate, rt: Rt, who: Writer
) -> ev.CampaignState:
    """Pause or resume a campaign; change its duplicate check (null: none), distribution,
    margin or auctions. Its fields are fixed once leads may have been sent against them."""
    async with rt.db.begin() as conn:
        current = await _current(conn, "campaign", campaign_id, who, for_update=True)
        state = _validated(ev.CampaignState, {**current, **domain.changes(body)})
        errors = _campaign_errors(state)
        if errors:
            raise _invalid(errors)
        await store.update_entity(conn, "campaign", campaign_id, state)
        await _audit(
            conn, who, "updated", "campaign", campaign_id, state.account_id, current, state
        )
        await _publish(rt, conn, ev.CampaignConfigured, state, campaign_id, state.account_id)
    rt.relay.wake()
    return state


# --- sources -------------------------------------------------------------------------------


class SourceCreated(ev.SourceState):
    api_key: str  # shown once; only its hash is kept


@router.post(
    "/campaigns/{campaign_id}/sources",
    status_code=201,
    response_model=SourceCreated,
    responses={**ERRORS, **INVALID},
)
async def create_source(
    campaign_id: uuid.UUID, body: domain.SourceCreate, rt: Rt, who: Writer
) -> SourceCreated:
    """A source and its API key (shown once). ``payout``: a plain amount (fixed),
    ``{"fixed": ...}`` or ``{"percent": ...}`` of the sale price."""
    key = domain.new_api_key()
    async with rt.db.begin() as conn:
        campaign = await _current(conn, "campaign", campaign_id, who)
        account_id = uuid.UUID(campaign["account_id"])
        state = ev.SourceState(
            source_id=uuid.uuid4(),
            account_id=account_id,
            campaign_id=campaign_id,
            name=body.name,
            api_key_prefix=domain.display_prefix(key),
            api_key_sha256=domain.api_key_sha256(key),
            payout=domain.as_payout(body.payout),
            controls=body.controls,
        )
        await store.insert_entity(
            conn, "source", state.source_id, state, account_id=account_id, campaign_id=campaign_id
        )
        await _audit(conn, who, "created", "source", state.source_id, account_id, None, state)
        await _publish(rt, conn, ev.SourceConfigured, state, state.source_id, account_id)
    rt.relay.wake()
    return SourceCreated(**state.model_dump(), api_key=key)


@router.get("/campaigns/{campaign_id}/sources", response_model=list[ev.SourceState])
async def list_sources(campaign_id: uuid.UUID, rt: Rt, who: Reader) -> list[dict[str, Any]]:
    async with rt.db.begin() as conn:
        await _current(conn, "campaign", campaign_id, who)
        rows = await store.list_states(conn, "source", "campaign", campaign_id)
    return [upgraded("source", r) for r in rows]


@router.patch(
    "/sources/{source_id}", response_model=ev.SourceState, responses={**ERRORS, **INVALID}
)
async def update_source(
    source_id: uuid.UUID, body: domain.SourceUpdate, rt: Rt, who: Writer
) -> ev.SourceState:
    """Pause or resume a source; change its payout or its controls."""
    patch = domain.changes(body)
    if body.payout is not None:
        patch["payout"] = domain.as_payout(body.payout).model_dump(mode="json")
    async with rt.db.begin() as conn:
        current = await _current(conn, "source", source_id, who, for_update=True)
        state = _validated(ev.SourceState, {**current, **patch})
        await store.update_entity(conn, "source", source_id, state)
        await _audit(conn, who, "updated", "source", source_id, state.account_id, current, state)
        await _publish(rt, conn, ev.SourceConfigured, state, source_id, state.account_id)
    rt.relay.wake()
    return state


# --- buyers --------------------------------------------------------------------------------


def _sealed_parts(
    body: domain.BuyerCreate | domain.BuyerUpdate,
    keys: ConfigKeys,
    current: ev.BuyerState | None,
) -> dict[str, Any]:
    """The request's integration and ping with their secrets sealed (JSON)."""
    parts: dict[str, Any] = {}
    try:
        if body.integration is not None:
            parts["integration"] = domain.seal_integration(
                body.integration, keys.seal, current.integration if current else None
            ).model_dump(mode="json")
        if body.ping is not None:
            parts["ping"] = domain.seal_ping(
                body.ping, keys.seal, current.ping if current else None
            ).model_dump(mode="json")
    except domain.MissingSecretError as exc:
        raise _invalid(
            [{"field": exc.field, "code": "missing_secret", "detail": exc.detail}]
        ) from None
    return parts


async def _check_endpoints(rt: Runtime, body: domain.BuyerCreate | domain.BuyerUpdate) -> None:
    # Before any transaction: resolving a name may take a while.
    if body.endpoint_url is not None:
        await _check_endpoint(rt, str(body.endpoint_url))
    if body.ping is not None:
        await _check_endpoint(rt, str(body.ping.url), "ping.url")


async def _check_buyer(conn: AsyncConnection, state: ev.BuyerState, who: Principal) -> None:
    campaign = ev.CampaignState.model_validate(
        await _current(conn, "campaign", state.campaign_id, who)
    )
    errors = domain.buyer_errors(campaign.fields, state)
    if errors:
        raise _invalid(errors)


@router.post(
    "/campaigns/{campaign_id}/buyers",
    status_code=201,
    response_model=BuyerCreated,
    responses=BUYER_ERRORS,
)
async def create_buyer(
    campaign_id: uuid.UUID, body: domain.BuyerCreate, rt: Rt, who: Writer
) -> BuyerCreated:
    """A buyer: its endpoint and integration, filters, schedule, caps, pricing, auctions.
    Secrets come in clear and are sealed at once; the signing secret is made here and
    shown once."""
    if body.acceptance is not None and body.integration is not None:
        raise _invalid(
            [
                {
                    "field": "acceptance",
                    "code": "acceptance_with_integration",
                    "detail": "acceptance is the first API version's answer rule; give"
                    " integration.rules instead",
                }
            ]
        )
    await _check_endpoints(rt, body)
    keys = config_keys(rt)
    signing_secret = domain.new_signing_secret()
    data = body.model_dump(mode="json", exclude={"acceptance", "integration", "ping"})
    data.update(_sealed_parts(body, keys, None))
    if body.acceptance is not None:
        data["integration"] = domain.acceptance_integration(body.acceptance).model_dump(mode="json")
    async with rt.db.begin() as conn:
        campaign = await _current(conn, "campaign", campaign_id, who)
        account_id = uuid.UUID(campaign["account_id"])
        state = _validated(
            ev.BuyerState,
            {
                **data,
                "buyer_id": str(uuid.uuid4()),
                "account_id": str(account_id),
                "campaign_id": str(campaign_id),
                "signing_secret": keys.seal(signing_secret).model_dump(),
            },
        )
        await _check_buyer(conn, state, who)
        await store.insert_entity(
            conn, "buyer", state.buyer_id, state, account_id=account_id, campaign_id=campaign_id
        )
        await _audit(conn, who, "created", "buyer", state.buyer_id, account_id, None, state)
        await _publish(rt, conn, ev.BuyerConfigured, state, state.buyer_id, account_id)
    rt.relay.wake()
    view = buyer_view(state)
    return BuyerCreated(**view.model_dump(), signing_secret_value=signing_secret)


@router.get("/campaigns/{campaign_id}/buyers", response_model=list[BuyerView])
async def list_buyers(campaign_id: uuid.UUID, rt: Rt, who: Reader) -> list[BuyerView]:
    async with rt.db.begin() as conn:
        await _current(conn, "campaign", campaign_id, who)
        rows = await store.list_states(conn, "buyer", "campaign", campaign_id)
    return [buyer_view(upgraded("buyer", r)) for r in rows]


@router.get("/buyers/{buyer_id}", response_model=BuyerView, responses=ERRORS)
async def get_buyer(buyer_id: uuid.UUID, rt: Rt, who: Reader) -> BuyerView:
    async with rt.db.begin() as conn:
        return buyer_view(await _current(conn, "buyer", buyer_id, who))


@router.patch("/buyers/{buyer_id}", response_model=BuyerView, responses=BUYER_ERRORS)
async def update_buyer(
    buyer_id: uuid.UUID, body: domain.BuyerUpdate, rt: Rt, who: Writer
) -> BuyerView:
    """Change any of a buyer's settings, pause or resume it. Only what is sent changes."""
    await _check_endpoints(rt, body)
    async with rt.db.begin() as conn:
        current_json = await _current(conn, "buyer", buyer_id, who, for_update=True)
        current = ev.BuyerState.model_validate(current_json)
        patch = domain.changes(body)
        patch.update(_sealed_parts(body, config_keys(rt), current))
        state = _validated(ev.BuyerState, {**current_json, **patch})
        await _check_buyer(conn, state, who)
        await store.update_entity(conn, "buyer", buyer_id, state)
        await _audit(conn, who, "updated", "buyer", buyer_id, state.account_id, current_json, state)
        await _publish(rt, conn, ev.BuyerConfigured, state, buyer_id, state.account_id)
    rt.relay.wake()
    return buyer_view(state)


@router.post(
    "/buyers/{buyer_id}/signing-secret",
    response_model=SigningSecret,
    responses=ERRORS,
)
async def rotate_signing_secret(buyer_id: uuid.UUID, rt: Rt, who: Writer) -> SigningSecret:
    """A new signing secret for the buyer's requests, shown once; the old one stops."""
    secret = domain.new_signing_secret()
    sealed = config_keys(rt).seal(secret)
    async with rt.db.begin() as conn:
        current = await _current(conn, "buyer", buyer_id, who, for_update=True)
        state = ev.BuyerState.model_validate({**current, "signing_secret": sealed.model_dump()})
        await store.update_entity(conn, "buyer", buyer_id, state)
        await _audit(
            conn, who, "signing_secret_rotated", "buyer", buyer_id, state.account_id, current, state
        )
        await _publish(rt, conn, ev.BuyerConfigured, state, buyer_id, state.account_id)
    rt.relay.wake()
    return SigningSecret(buyer_id=buyer_id, key_id=sealed.key_id, signing_secret_value=secret)


class Resealed(BaseModel):
    key_id: str  # the config key every buyer secret is now sealed under
    buyers: int  # buyers looked at
    resealed: int  # buyers whose secrets were re-sealed and republished
    users_resealed: int = 0  # users whose TOTP secret was re-sealed


@router.post("/config-keys/reseal", response_model=Resealed, responses=ERRORS)
async def reseal_secrets(rt: Rt, who: Staff) -> Resealed:
    """Re-seal every buyer secret under the current config key and republish the buyers
    that changed: the step of a config key rotation between adding the new key (first in
    ``LX_PLATFORM_CONFIG_KEYS``) and removing the old one. Safe to run again."""
    keys = config_keys(rt)
    async with rt.db.begin() as conn:
        ids = await store.entity_ids(conn, "buyer")
    resealed = 0
    for buyer_id in ids:  # one transaction per buyer: a long rotation holds no big lock
        async with rt.db.begin() as conn:
            state = ev.BuyerState.model_validate(
                await _current(conn, "buyer", buyer_id, who, for_update=True)
            )
            fresh = domain.reseal_buyer(state, keys)
            if fresh is None:
                continue
            await store.update_entity(conn, "buyer", buyer_id, fresh)
            await _audit(conn, who, "resealed", "buyer", buyer_id, fresh.account_id, state, fresh)
            await _publish(rt, conn, ev.BuyerConfigured, fresh, buyer_id, fresh.account_id)
            resealed += 1
    rt.relay.wake()
    users = 0
    async with rt.db.begin() as conn:
        for user_id, column, sealed in await store.sealed_user_secrets(conn):
            secret = SealedSecret.model_validate(sealed)
            if secret.key_id != keys.current:
                await store.set_user_secret(conn, user_id, column, keys.reseal(secret))
                users += 1
    return Resealed(key_id=keys.current, buyers=len(ids), resealed=resealed, users_resealed=users)


# --- access tokens (the principal, signed, for billing, analytics and ingest) -----------------


@router.post(
    "/auth/access-token",
    response_model=AccessToken,
    tags=["access"],
    responses={
        401: ERRORS[401],
        403: {
            "description": "`totp_enrolment_required`; `operator_token_not_exchangeable`"
            " (the operator token is accepted everywhere as it is)"
        },
        503: {"description": "`access_tokens_disabled`: no signing key is configured"},
    },
)
async def access_token(who: Authenticated, rt: Rt) -> AccessToken:
    """A short-lived access token (an EdDSA JWT, 5 minutes by default) carrying the
    caller's principal (kind, id, role, account) to billing, analytics and ingest's
    privacy API, which verify it with admin's public key. Made from a login session
    with both factors or an API token; ask again when it expires."""
    return mint_access_token(who, rt)
