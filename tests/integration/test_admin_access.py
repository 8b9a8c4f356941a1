"""Who may do what in the admin API (real Kafka and PostgreSQL).

The authorization matrix: every route of the app (enumerated from the app itself, so a
new route missing from ROUTES fails here) x every caller (each role's API token, a
user's login session, the operator token, a buyer token, none) x its own account and
another's -> the status the table of permissions says. Another account's entity is
404, never 403 and never 2xx. Then login with TOTP (a code accepted once), API tokens
shown once and revocable, and what the audit log records of it all.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from lx_admin import access
from lx_admin.access import ROLE_PERMISSIONS, Permission, Role
from lx_admin.main import create_service
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_platform.settings import PlatformSettings
from sqlalchemy import text

from tests.support.dns import StubDns
from tests.support.http import ThreadedServer
from tests.support.services import OPERATOR, hosted, settings_for

P = Permission
DNS = StubDns({"buyer.example": ["93.184.216.34"]})
FIELDS = [{"name": "email", "type": "email", "required": True, "pii": True}]
PASSWORD = "correct horse battery staple"
CANARY = "pii-canary@example.com"
# Routes outside /v1: operations, open to the platform's probes and scrapers.
OPERATIONS = {("GET", "/health/live"), ("GET", "/health/ready"), ("GET", "/metrics")}


@dataclass
class Tenant:
    account_id: str
    campaign_id: str
    source_id: str
    buyer_id: str
    lead_id: str  # a lead with a trace
    victim_buyer_token: str  # ids the DELETE routes revoke (idempotently)
    victim_user: str
    victim_api_token: str
    buyer_token: str  # the buyer's own credential (lxbt_)


@dataclass
class Caller:
    name: str
    header: dict[str, str]
    role: Role | None  # None: no admin principal (no credential, a buyer token)
    kind: str  # "api_token", "session", "operator", "buyer", "none"


@dataclass
class World:
    client: httpx.AsyncClient
    rt: Runtime
    app: FastAPI
    own: Tenant
    other: Tenant
    callers: list[Caller] = field(default_factory=list)
    totp_secret: str = ""

    async def as_operator(self, method: str, url: str, body: Any = None) -> httpx.Response:
        return await self.client.request(method, url, json=body, headers=OPERATOR)

    async def made(self, url: str, body: Any = None) -> dict[str, Any]:
        r = await self.as_operator("POST", url, body)
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    async def sale(self, tenant: Tenant) -> str:
        """A fresh lead sold to the tenant's buyer just now: one return each."""
        lead = uuid.uuid4()
        async with self.rt.db.begin() as conn:
            await conn.execute(
                text(
                    "insert into sales (delivery_id, lead_id, account_id, campaign_id, source_id,"
                    " buyer_id, price, payout, sale, sold_at, event_id) values (:d, :l, :a, :c,"
                    " :s, :b, 20, 5, 1, now(), :e)"
                ),
                {
                    "d": uuid.uuid4(),
                    "l": lead,
                    "a": tenant.account_id,
                    "c": tenant.campaign_id,
                    "s": tenant.source_id,
                    "b": tenant.buyer_id,
                    "e": uuid.uuid4(),
                },
            )
        return str(lead)


async def _tenant(world: World, name: str) -> Tenant:
    account = await world.made("/v1/accounts", {"name": name})
    a = account["account_id"]
    campaign = await world.made(
        f"/v1/accounts/{a}/campaigns", {"name": "C", "vertical": "mortgage", "fields": FIELDS}
    )
    c = campaign["campaign_id"]
    source = await world.made(f"/v1/campaigns/{c}/sources", {"name": "S"})
    buyer = await world.made(
        f"/v1/campaigns/{c}/buyers",
        {
            "name": "B",
            "endpoint_url": "https://buyer.example/leads",
            "price": "20.00",
            "return_window_days": 30,
        },
    )
    b = buyer["buyer_id"]
    victim_token = await world.made(f"/v1/buyers/{b}/tokens", {"name": "victim"})
    buyer_token = await world.made(f"/v1/buyers/{b}/tokens", {"name": "own"})
    victim_user = await world.made(
        f"/v1/accounts/{a}/users",
        {
            "email": f"victim-{uuid.uuid4().hex[:8]}@{name}.example",
            "password": PASSWORD,
            "role": "read_only",
        },
    )
    victim_api = await world.made(
        f"/v1/accounts/{a}/api-tokens", {"name": "victim", "role": "read_only"}
    )
    lead = uuid.uuid4()
    async with world.rt.db.begin() as conn:
        await conn.execute(
            text(
                "insert into lead_events (event_id, lead_id, account_id, type, occurred_at, topic,"
                " \"offset\", payload) values (:e, :l, :a, 'LeadReceived', now(), 'lead.received',"
                " 0, cast(:p as jsonb))"
            ),
            {
                "e": uuid.uuid4(),
                "l": lead,
                "a": a,
                "p": f'{{"lead_id": "{lead}", "campaign_id": "{c}", "source_id":'
                f' "{source["source_id"]}", "fields": {{}}, "pii_fields": ["email"]}}',
            },
        )
    return Tenant(
        account_id=a,
        campaign_id=c,
        source_id=source["source_id"],
        buyer_id=b,
        lead_id=str(lead),
        victim_buyer_token=victim_token["token_id"],
        victim_user=victim_user["user_id"],
        victim_api_token=victim_api["token_id"],
        buyer_token=buyer_token["token"],
    )


async def _owner_session(world: World) -> str:
    """An owner of the own account signed in with password and TOTP: a session token."""
    email = f"owner-{uuid.uuid4().hex[:8]}@own.example"
    await world.made(
        f"/v1/accounts/{world.own.account_id}/users",
        {"email": email, "password": PASSWORD, "role": "owner"},
    )
    r = await world.client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200 and r.json()["mfa"] is False, r.text
    bearer = {"authorization": f"Bearer {r.json()['token']}"}
    r = await world.client.post("/v1/auth/totp", headers=bearer)
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    code = access.totp_code(secret, int(time.time() // 30))
    r = await world.client.post("/v1/auth/totp/confirm", json={"code": code}, headers=bearer)
    assert r.status_code == 200, r.text
    return str(bearer["authorization"])


def fake_delivery() -> FastAPI:
    """Delivery's request log, holding what was sent to the buyer: PII."""
    app = FastAPI()

    @app.get("/internal/v1/leads/{lead_id}/deliveries")
    async def deliveries(lead_id: str) -> dict[str, Any]:
        return {"deliveries": [{"lead_id": lead_id, "request": {"email": CANARY}}]}

    return app


@pytest.fixture(scope="module")
async def world(infra: Infra, isolation: str) -> AsyncIterator[World]:
    with ThreadedServer(fake_delivery()) as delivery:
        async for world in _world(infra, isolation, delivery.url):
            yield world


async def _world(infra: Infra, isolation: str, delivery_url: str) -> AsyncIterator[World]:
    platform = PlatformSettings(
        delivery_url=delivery_url,
        internal_timeout_s=2.0,
        operator_rate_limit="100000/second",
    )
    # The matrix signs in once per caller and route: far above the guessing limit, which
    # test_login_attempts_per_address_are_limited checks on its own.
    settings = settings_for(
        AdminSettings, infra, isolation, "admin", platform=platform, login_rate_limit="10000/minute"
    )
    app = create_service(settings, resolver=DNS)
    async with hosted(app) as (client, rt):
        world = World(client, rt, app, own=None, other=None)  # type: ignore[arg-type]
        world.own = await _tenant(world, "own")
        world.other = await _tenant(world, "other")
        for role in access.ACCOUNT_ROLES:
            token = await world.made(
                f"/v1/accounts/{world.own.account_id}/api-tokens",
                {"name": role.value, "role": role.value},
            )
            world.callers.append(
                Caller(
                    f"{role.value} (API token)",
                    {"authorization": f"Bearer {token['token']}"},
                    role,
                    "api_token",
                )
            )
        session = await _owner_session(world)
        world.callers += [
            Caller("owner (session)", {"authorization": session}, Role.OWNER, "session"),
            Caller("superuser (operator token)", OPERATOR, Role.SUPERUSER, "operator"),
            Caller(
                "buyer token",
                {"authorization": f"Bearer {world.own.buyer_token}"},
                None,
                "buyer",
            ),
            Caller("no credential", {}, None, "none"),
        ]
        yield world


# --- the table --------------------------------------------------------------------------------

Request = tuple[str, Any]  # url, JSON body
Make = Callable[[World, Tenant], Awaitable[Request]]


def at(template: str, body: Any = None) -> Make:
    async def make(world: World, t: Tenant) -> Request:
        return template.format(**vars(t)), body() if callable(body) else body

    return make


def unique_email() -> dict[str, str]:
    return {"email": f"u-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD}


async def fresh_sale(world: World, t: Tenant) -> Request:
    return f"/v1/leads/{await world.sale(t)}/returns", {"reason_code": "fraud"}


async def buyer_return(world: World, t: Tenant) -> Request:
    return f"/v1/buyer/leads/{await world.sale(t)}/returns", {"reason_code": "fraud"}


@dataclass(frozen=True)
class Route:
    permission: Permission | None  # None: not a permission of a role (see ``expect``)
    ok: int
    make: Make
    tenant: bool = True  # names an entity of an account (else: the platform's)
    # The status for a caller, where the rule is not the permission table's.
    expect: Callable[[Caller, bool], int] | None = None


def _self_only(session_status: int) -> Callable[[Caller, bool], int]:
    """A route of the caller's own login session."""
    return lambda c, _: (
        401 if c.kind in ("none", "buyer") else session_status if c.kind == "session" else 403
    )


def _buyer_only(ok: int) -> Callable[[Caller, bool], int]:
    return lambda c, own: (ok if own else 404) if c.kind == "buyer" else 401


ROUTES: dict[tuple[str, str], Route] = {
    # access
    ("POST", "/v1/auth/login"): Route(
        None,
        401,
        at("/v1/auth/login", {"email": "nobody@example.com", "password": "wrong password"}),
        tenant=False,
        expect=lambda c, _: 401,  # whoever asks: the body's credentials count, and are wrong
    ),
    ("GET", "/v1/auth/me"): Route(
        None,
        200,
        at("/v1/auth/me"),
        tenant=False,
        expect=lambda c, _: 401 if c.kind in ("none", "buyer") else 200,
    ),
    ("POST", "/v1/auth/totp"): Route(
        None, 201, at("/v1/auth/totp"), tenant=False, expect=_self_only(409)
    ),
    ("POST", "/v1/auth/totp/confirm"): Route(
        None,
        200,
        at("/v1/auth/totp/confirm", {"code": "000000"}),
        tenant=False,
        expect=_self_only(409),  # enrolled already: nothing pending
    ),
    # Asked last, twice by the session: the second time its session has ended.
    ("POST", "/v1/auth/logout"): Route(
        None,
        204,
        at("/v1/auth/logout"),
        tenant=False,
        expect=lambda c, own: _self_only(204 if own else 401)(c, own),
    ),
    # An access token for the other services: any credential but the operator token.
    ("POST", "/v1/auth/access-token"): Route(
        None,
        200,
        at("/v1/auth/access-token"),
        tenant=False,
        expect=lambda c, _: (
            401 if c.kind in ("none", "buyer") else 403 if c.kind == "operator" else 200
        ),
    ),
    ("POST", "/v1/accounts/{account_id}/users"): Route(
        P.USERS,
        201,
        at("/v1/accounts/{account_id}/users", lambda: {**unique_email(), "role": "read_only"}),
    ),
    ("GET", "/v1/accounts/{account_id}/users"): Route(
        P.USERS, 200, at("/v1/accounts/{account_id}/users")
    ),
    ("DELETE", "/v1/users/{user_id}"): Route(P.USERS, 204, at("/v1/users/{victim_user}")),
    ("POST", "/v1/staff"): Route(P.PLATFORM, 201, at("/v1/staff", unique_email), tenant=False),
    ("POST", "/v1/accounts/{account_id}/api-tokens"): Route(
        P.API_TOKENS, 201, at("/v1/accounts/{account_id}/api-tokens", {"role": "read_only"})
    ),
    ("GET", "/v1/accounts/{account_id}/api-tokens"): Route(
        P.API_TOKENS, 200, at("/v1/accounts/{account_id}/api-tokens")
    ),
    ("DELETE", "/v1/api-tokens/{token_id}"): Route(
        P.API_TOKENS, 204, at("/v1/api-tokens/{victim_api_token}")
    ),
    # configuration
    ("POST", "/v1/accounts"): Route(P.PLATFORM, 201, at("/v1/accounts", {"name": "N"}), False),
    ("GET", "/v1/accounts/{account_id}"): Route(
        P.CONFIG_READ, 200, at("/v1/accounts/{account_id}")
    ),
    ("POST", "/v1/accounts/{account_id}/campaigns"): Route(
        P.CONFIG_WRITE,
        201,
        at(
            "/v1/accounts/{account_id}/campaigns",
            {"name": "M", "vertical": "solar", "fields": FIELDS},
        ),
    ),
    ("GET", "/v1/campaigns/{campaign_id}"): Route(
        P.CONFIG_READ, 200, at("/v1/campaigns/{campaign_id}")
    ),
    ("PATCH", "/v1/campaigns/{campaign_id}"): Route(
        P.CONFIG_WRITE, 200, at("/v1/campaigns/{campaign_id}", {"status": "active"})
    ),
    ("POST", "/v1/campaigns/{campaign_id}/sources"): Route(
        P.CONFIG_WRITE, 201, at("/v1/campaigns/{campaign_id}/sources", {"name": "S2"})
    ),
    ("GET", "/v1/campaigns/{campaign_id}/sources"): Route(
        P.CONFIG_READ, 200, at("/v1/campaigns/{campaign_id}/sources")
    ),
    ("PATCH", "/v1/sources/{source_id}"): Route(
        P.CONFIG_WRITE, 200, at("/v1/sources/{source_id}", {"status": "active"})
    ),
    ("POST", "/v1/campaigns/{campaign_id}/buyers"): Route(
        P.CONFIG_WRITE,
        201,
        at(
            "/v1/campaigns/{campaign_id}/buyers",
            {"name": "B2", "endpoint_url": "https://buyer.example/x", "price": "1.00"},
        ),
    ),
    ("GET", "/v1/campaigns/{campaign_id}/buyers"): Route(
        P.CONFIG_READ, 200, at("/v1/campaigns/{campaign_id}/buyers")
    ),
    ("GET", "/v1/buyers/{buyer_id}"): Route(P.CONFIG_READ, 200, at("/v1/buyers/{buyer_id}")),
    ("PATCH", "/v1/buyers/{buyer_id}"): Route(
        P.CONFIG_WRITE, 200, at("/v1/buyers/{buyer_id}", {"priority": 7})
    ),
    ("POST", "/v1/buyers/{buyer_id}/signing-secret"): Route(
        P.CONFIG_WRITE, 200, at("/v1/buyers/{buyer_id}/signing-secret")
    ),
    ("POST", "/v1/config-keys/reseal"): Route(
        P.PLATFORM, 200, at("/v1/config-keys/reseal"), tenant=False
    ),
    # buyer tokens, returns, trace, audit
    ("POST", "/v1/buyers/{buyer_id}/tokens"): Route(
        P.BUYER_TOKENS, 201, at("/v1/buyers/{buyer_id}/tokens", {"name": "t"})
    ),
    ("GET", "/v1/buyers/{buyer_id}/tokens"): Route(
        P.BUYER_TOKENS, 200, at("/v1/buyers/{buyer_id}/tokens")
    ),
    ("DELETE", "/v1/buyers/{buyer_id}/tokens/{token_id}"): Route(
        P.BUYER_TOKENS, 204, at("/v1/buyers/{buyer_id}/tokens/{victim_buyer_token}")
    ),
    ("POST", "/v1/leads/{lead_id}/returns"): Route(P.RETURNS, 201, fresh_sale),
    ("GET", "/v1/leads/{lead_id}/trace"): Route(P.TRACE_READ, 200, at("/v1/leads/{lead_id}/trace")),
    ("GET", "/v1/audit"): Route(P.AUDIT_READ, 200, at("/v1/audit?account_id={account_id}")),
    # the buyer's own API: its token only, its own leads only
    ("GET", "/v1/buyer/deliveries"): Route(
        None,
        200,
        at("/v1/buyer/deliveries"),
        tenant=False,
        expect=lambda c, _: 200 if c.kind == "buyer" else 401,
    ),
    ("POST", "/v1/buyer/leads/{lead_id}/returns"): Route(
        None, 201, buyer_return, expect=_buyer_only(201)
    ),
}
LAST = ("POST", "/v1/auth/logout")  # ends the session caller's session


def expected(route: Route, caller: Caller, own: bool) -> int:
    if route.expect is not None:
        return route.expect(caller, own)
    if caller.role is None:
        return 401
    assert route.permission is not None
    if route.permission not in ROLE_PERMISSIONS[caller.role]:
        return 403
    if not own and route.tenant and caller.role is not Role.SUPERUSER:
        return 404
    return route.ok


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every route the app serves, from its OpenAPI document (the route tree itself is
    FastAPI's private business since included routers are resolved lazily)."""
    app.openapi_schema = None  # built afresh: nothing cached from before a route was added
    return {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }


# --- the matrix -------------------------------------------------------------------------------


async def test_every_route_of_the_app_is_in_the_table(world: World) -> None:
    routes = app_routes(world.app) - OPERATIONS
    assert routes - ROUTES.keys() == set(), "routes missing from ROUTES: add their row"
    assert ROUTES.keys() - routes == set(), "ROUTES names routes the app does not have"


async def test_every_route_answers_every_caller_of_either_account_as_the_table_says(
    world: World,
) -> None:
    wrong = []
    order = sorted(app_routes(world.app) - OPERATIONS, key=lambda r: (r == LAST, r))
    asked = 0
    for key in order:
        route = ROUTES.get(key)
        if route is None:
            wrong.append(f"{key}: not in ROUTES")
            continue
        for caller in world.callers:
            for own in (True, False):
                url, body = await route.make(world, world.own if own else world.other)
                r = await world.client.request(key[0], url, json=body, headers=caller.header)
                asked += 1
                want = expected(route, caller, own)
                if r.status_code != want:
                    tenant = "own" if own else "other"
                    wrong.append(
                        f"{key[0]} {key[1]} by {caller.name} on {tenant} account:"
                        f" {r.status_code} (expected {want}) {r.text[:200]}"
                    )
                if not own and route.tenant and caller.role is not Role.SUPERUSER:
                    assert r.status_code >= 400, f"cross-tenant access: {key} by {caller.name}"
    assert not wrong, "\n".join(wrong)
    assert asked == len(order) * len(world.callers) * 2


async def test_no_caller_of_one_account_changed_anything_of_the_other(world: World) -> None:
    """What the audit log of the other account holds was done by the operator alone."""
    async with world.rt.db.begin() as conn:
        actors = set(
            await conn.scalars(
                text("select distinct actor from audit_log where account_id = :a"),
                {"a": world.other.account_id},
            )
        )
    assert actors == {"operator_token:operator"}


# --- login, TOTP, sessions ---------------------------------------------------------------------


async def _user(world: World, role: str = "operator") -> str:
    email = f"{role}-{uuid.uuid4().hex[:8]}@own.example"
    await world.made(
        f"/v1/accounts/{world.own.account_id}/users",
        {"email": email, "password": PASSWORD, "role": role},
    )
    return email


async def _login(world: World, email: str, **extra: Any) -> httpx.Response:
    return await world.client.post(
        "/v1/auth/login", json={"email": email, "password": PASSWORD, **extra}
    )


async def test_a_password_alone_only_enrols_totp_and_then_every_login_needs_a_code_once(
    world: World,
) -> None:
    email = await _user(world)
    r = await _login(world, email.upper())  # addresses compare without case
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["mfa"] is False and first["token"].startswith("lxss_")
    bearer = {"authorization": f"Bearer {first['token']}"}
    # Without a second factor the session reads nothing...
    r = await world.client.get(f"/v1/campaigns/{world.own.campaign_id}", headers=bearer)
    assert r.status_code == 403 and r.json()["error"]["code"] == "totp_enrolment_required"
    # ...but may enrol one.
    r = await world.client.post("/v1/auth/totp", headers=bearer)
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    assert r.json()["otpauth_uri"].startswith("otpauth://totp/")
    step = int(time.time() // 30)
    r = await world.client.post(
        "/v1/auth/totp/confirm", json={"code": access.totp_code(secret, step - 5)}, headers=bearer
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_totp"
    r = await world.client.post(
        "/v1/auth/totp/confirm", json={"code": access.totp_code(secret, step)}, headers=bearer
    )
    assert r.status_code == 200, r.text
    r = await world.client.get(f"/v1/campaigns/{world.own.campaign_id}", headers=bearer)
    assert r.status_code == 200, r.text

    # From now on: password and a code, each code once.
    r = await _login(world, email)
    assert r.status_code == 401 and r.json()["error"]["code"] == "totp_required"
    r = await _login(world, email, totp=access.totp_code(secret, step))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_totp"  # used: confirm
    fresh = access.totp_code(secret, step + 1)
    r = await _login(world, email, totp=fresh)
    assert r.status_code == 200 and r.json()["mfa"] is True, r.text
    r = await _login(world, email, totp=fresh)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_totp"  # replayed


async def test_a_wrong_password_and_an_unknown_address_are_refused_alike(world: World) -> None:
    email = await _user(world)
    wrong = await world.client.post(
        "/v1/auth/login", json={"email": email, "password": "not the password"}
    )
    unknown = await world.client.post(
        "/v1/auth/login", json={"email": "nobody@own.example", "password": PASSWORD}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_logout_and_disabling_a_user_end_their_sessions(world: World) -> None:
    email = await _user(world)
    r = await _login(world, email)
    bearer = {"authorization": f"Bearer {r.json()['token']}"}
    assert (await world.client.get("/v1/auth/me", headers=bearer)).status_code == 200
    assert (await world.client.post("/v1/auth/logout", headers=bearer)).status_code == 204
    assert (await world.client.get("/v1/auth/me", headers=bearer)).status_code == 401

    email = await _user(world)
    r = await _login(world, email)
    bearer = {"authorization": f"Bearer {r.json()['token']}"}
    user_id = r.json()["user_id"]
    r = await world.as_operator("DELETE", f"/v1/users/{user_id}")
    assert r.status_code == 204, r.text
    assert (await world.client.get("/v1/auth/me", headers=bearer)).status_code == 401
    assert (await _login(world, email)).status_code == 401


async def test_sessions_and_passwords_are_kept_only_hashed(world: World) -> None:
    email = await _user(world)
    token = (await _login(world, email)).json()["token"]
    async with world.rt.db.begin() as conn:
        hashed = await conn.scalar(
            text("select password_hash from users where email = :e"), {"e": email}
        )
        sessions = (await conn.execute(text("select * from sessions"))).all()
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert token not in str(sessions)
    assert access.token_sha256(token) in str(sessions)


# --- API tokens ----------------------------------------------------------------------------------


async def test_an_api_token_is_shown_once_acts_with_its_role_and_stops_when_revoked(
    world: World,
) -> None:
    created = await world.made(
        f"/v1/accounts/{world.own.account_id}/api-tokens", {"name": "ci", "role": "analyst"}
    )
    token = created["token"]
    assert token.startswith("lxat_") and created["token_prefix"] == token[:11]
    bearer = {"authorization": f"Bearer {token}"}
    r = await world.client.get(f"/v1/leads/{world.own.lead_id}/trace", headers=bearer)
    assert r.status_code == 200, r.text
    assert r.json()["deliveries_withheld"] is True and r.json()["deliveries"] == []
    r = await world.client.patch(
        f"/v1/campaigns/{world.own.campaign_id}", json={"status": "paused"}, headers=bearer
    )
    assert r.status_code == 403
    r = await world.as_operator("GET", f"/v1/accounts/{world.own.account_id}/api-tokens")
    listed = [t for t in r.json() if t["token_id"] == created["token_id"]]
    assert listed and "token" not in listed[0] and token not in r.text
    r = await world.as_operator("DELETE", f"/v1/api-tokens/{created['token_id']}")
    assert r.status_code == 204
    r = await world.client.get(f"/v1/leads/{world.own.lead_id}/trace", headers=bearer)
    assert r.status_code == 401


async def test_nobody_grants_a_role_above_their_own(world: World) -> None:
    admin = await world.made(
        f"/v1/accounts/{world.own.account_id}/api-tokens", {"name": "a", "role": "admin"}
    )
    bearer = {"authorization": f"Bearer {admin['token']}"}
    for url, body in (
        (f"/v1/accounts/{world.own.account_id}/api-tokens", {"role": "owner"}),
        (f"/v1/accounts/{world.own.account_id}/users", {**unique_email(), "role": "owner"}),
        (f"/v1/accounts/{world.own.account_id}/users", {**unique_email(), "role": "superuser"}),
    ):
        r = await world.client.post(url, json=body, headers=bearer)
        assert r.status_code == 403 and r.json()["error"]["code"] == "role_not_grantable", r.text
    owner = await world.made(
        f"/v1/accounts/{world.own.account_id}/api-tokens", {"name": "o", "role": "owner"}
    )
    r = await world.client.delete(f"/v1/api-tokens/{owner['token_id']}", headers=bearer)
    assert r.status_code == 403


async def test_the_pii_of_a_trace_is_the_owners_and_each_read_is_audited(world: World) -> None:
    async def pii_reads() -> int:
        async with world.rt.db.begin() as conn:
            return int(
                await conn.scalar(text("select count(*) from audit_log where action = 'pii.read'"))
                or 0
            )

    before = await pii_reads()
    operator = await world.made(
        f"/v1/accounts/{world.own.account_id}/api-tokens", {"name": "op", "role": "operator"}
    )
    r = await world.client.get(
        f"/v1/leads/{world.own.lead_id}/trace",
        headers={"authorization": f"Bearer {operator['token']}"},
    )
    assert r.status_code == 200 and r.json()["deliveries_withheld"] is True
    assert CANARY not in r.text
    assert await pii_reads() == before
    owner = await world.made(
        f"/v1/accounts/{world.own.account_id}/api-tokens", {"name": "ow", "role": "owner"}
    )
    r = await world.client.get(
        f"/v1/leads/{world.own.lead_id}/trace",
        headers={"authorization": f"Bearer {owner['token']}"},
    )
    assert r.status_code == 200 and r.json()["deliveries_withheld"] is False, r.text
    assert CANARY in r.text
    assert await pii_reads() == before + 1
    async with world.rt.db.begin() as conn:
        last = (
            await conn.execute(
                text("select * from audit_log where action = 'pii.read' order by seq desc limit 1")
            )
        ).one()
    assert last.actor == f"api_token:{owner['token_id']}"
    assert str(last.entity_id) == world.own.lead_id and str(last.account_id) == world.own.account_id
    assert CANARY not in str(last.after)


async def test_login_attempts_per_address_are_limited(infra: Infra, isolation: str) -> None:
    settings = settings_for(
        AdminSettings, infra, isolation, "admin_login", login_rate_limit="3/minute"
    )
    async with hosted(create_service(settings, resolver=DNS)) as (client, _):
        wrong = {"email": "guess@example.com", "password": "not the password"}
        answers = [(await client.post("/v1/auth/login", json=wrong)).status_code for _ in range(4)]
        assert answers == [401, 401, 401, 429]
        r = await client.post("/v1/auth/login", json=wrong)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        other = {"email": "someone.else@example.com", "password": "x" * 12}
        assert (await client.post("/v1/auth/login", json=other)).status_code == 401
