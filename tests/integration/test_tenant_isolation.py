"""Tenant isolation beyond admin: billing, analytics and ingest's privacy API (real Kafka
and PostgreSQL).

Two tenants whose accounts and campaigns are made through admin's API (so their
campaigns reach analytics and ingest on config.changed, as in production). Callers: an
access token of every account role of the first tenant, a staff user's, the operator
token, and credentials that must fail (none, an expired token, a token signed by
another key, admin's own API token). Then the matrix: every route of the three APIs
(enumerated from the apps, so a new route missing from ROUTES fails here) x every caller
x the own tenant's entities and the other's -> the status the permission table says:

- no valid credential: 401;
- the role lacks the route's permission: 403, whichever tenant (a refusal tells nothing
  of what exists);
- the permission held: the own tenant's entity answers, the other's is 404 (as if it
  did not exist), except for staff (superuser, operator token), who see every account;
- lists and reports have no tenant in the path: they hold the caller's rows only.

One case runs the real flow end to end: admin mints an access token from an API token,
billing takes it, and once the API token is revoked admin mints no more.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from lx_admin.main import create_service as create_admin
from lx_admin.settings import AdminSettings
from lx_analytics.main import create_service as create_analytics
from lx_analytics.settings import AnalyticsSettings
from lx_billing.main import create_service as create_billing
from lx_billing.settings import BillingSettings
from lx_devstack.infra import Infra
from lx_ingest.main import create_service as create_ingest
from lx_ingest.settings import IngestSettings
from lx_platform import access
from lx_platform.access import (
    ACCOUNT_ROLES,
    ROLE_PERMISSIONS,
    AccessTokenSigner,
    Permission,
    Principal,
    PrincipalKind,
    Role,
)
from lx_platform.settings import PlatformSettings
from lx_schemas import events as ev
from sqlalchemy import text

from tests.support.dns import StubDns
from tests.support.kafka import publish
from tests.support.services import (
    ACCESS_SIGNING_KEY,
    OPERATOR,
    access_header,
    eventually,
    hosted,
    settings_for,
)

P = Permission
DNS = StubDns({"buyer.example": ["93.184.216.34"]})
FIELDS = [{"name": "email", "type": "email", "required": True, "pii": True}]
MONTH = dt.datetime.now(dt.UTC).strftime("%Y-%m")
NEXT_MONTH = (dt.datetime.now(dt.UTC).replace(day=1) + dt.timedelta(days=32)).strftime("%Y-%m")
HOUR = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
OPERATIONS = {("GET", "/health/live"), ("GET", "/health/ready"), ("GET", "/metrics")}
_months = itertools.count()


def fresh_month() -> str:
    """A month no invoice or subscription of these tests covers yet (one per call)."""
    n = next(_months)
    return f"{2040 + n // 12}-{n % 12 + 1:02d}"


@dataclass
class Tenant:
    account_id: str
    campaign_id: str
    buyer_id: str = ""  # prepaid in billing
    plan_id: str = ""
    subscription_id: str = ""
    invoice_id: str = ""
    export_id: str = ""
    request_id: str = ""  # a privacy request


@dataclass
class Caller:
    name: str
    header: dict[str, str]
    role: Role | None  # None: no valid credential


@dataclass
class World:
    admin: httpx.AsyncClient
    apps: dict[str, FastAPI]
    clients: dict[str, httpx.AsyncClient]
    rts: dict[str, Any]
    own: Tenant
    other: Tenant
    callers: list[Caller] = field(default_factory=list)

    async def staff(self, service: str, method: str, url: str, body: Any = None) -> httpx.Response:
        return await self.clients[service].request(method, url, json=body, headers=OPERATOR)


def tenant_principal(role: Role, account_id: str) -> Principal:
    return Principal(PrincipalKind.API_TOKEN, str(uuid.uuid4()), role, uuid.UUID(account_id))


async def _made(world: World, url: str, body: Any) -> dict[str, Any]:
    r = await world.admin.post(url, json=body, headers=OPERATOR)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


async def _projected(world: World, service: str, url: str) -> None:
    async def there() -> bool:
        return (await world.staff(service, "GET", url)).status_code == 200

    await eventually(there, what=f"{service} {url}")


async def _tenant(world: World, name: str) -> Tenant:
    account = await _made(world, "/v1/accounts", {"name": name})
    a = account["account_id"]
    campaign = await _made(
        world,
        f"/v1/accounts/{a}/campaigns",
        {"name": "C", "vertical": "mortgage", "fields": FIELDS},
    )
    return Tenant(account_id=a, campaign_id=campaign["campaign_id"])


async def _billing(world: World, t: Tenant, plan_id: str) -> None:
    t.plan_id = plan_id
    r = await world.staff(
        "billing",
        "POST",
        f"/v1/accounts/{t.account_id}/subscriptions",
        {"plan_id": plan_id, "start_month": MONTH, "end_month": "2039-12"},
    )
    assert r.status_code == 202, r.text
    t.subscription_id = r.json()["id"]

    async def subscribed() -> bool:
        r = await world.staff("billing", "GET", f"/v1/accounts/{t.account_id}/subscriptions")
        return t.subscription_id in r.text

    await eventually(subscribed, what="the subscription projected")
    t.buyer_id = str(uuid.uuid4())
    r = await world.staff(
        "billing",
        "PUT",
        f"/v1/accounts/{t.account_id}/buyers/{t.buyer_id}/credit-limit",
        {"credit_limit": "100.00"},
    )
    assert r.status_code == 202, r.text
    r = await world.staff(
        "billing", "POST", f"/v1/accounts/{t.account_id}/invoices", {"month": MONTH}
    )
    assert r.status_code == 202, r.text
    t.invoice_id = r.json()["invoice_id"]
    usage = ev.UsageIncremented.new(
        account_id=uuid.UUID(t.account_id),
        correlation_id=uuid.uuid4(),
        producer="test",
        payload=ev.UsageIncrementedPayload(
            metric=ev.UsageMetric.LEADS_RECEIVED, subject_id=uuid.uuid4()
        ),
    )
    rt = world.rts["billing"]
    await publish(
        rt.settings.kafka.bootstrap_servers,
        rt.settings.kafka.topic_prefix,
        [(usage, uuid.UUID(t.account_id))],
    )
    await _projected(world, "billing", f"/v1/invoices/{t.invoice_id}")
    await _projected(world, "billing", f"/v1/accounts/{t.account_id}/buyers/{t.buyer_id}/funds")
    await _projected(world, "billing", f"/v1/accounts/{t.account_id}/limit")


async def _analytics(world: World, t: Tenant) -> None:
    """A stats row of the tenant's campaign, and an export the tenant's own analyst made."""
    rt = world.rts["analytics"]
    async with rt.db.begin() as conn:
        await conn.execute(
            text(
                "insert into hourly_stats (hour, campaign_id, source_id, buyer_id, received)"
                " values (:h, :c, :s, :nil, 3)"
            ),
            {"h": HOUR, "c": t.campaign_id, "s": uuid.uuid4(), "nil": uuid.UUID(int=0)},
        )
    analyst = access_header(tenant_principal(Role.ANALYST, t.account_id))
    r = await world.clients["analytics"].post("/v1/exports", json=export_body(), headers=analyst)
    assert r.status_code == 202, r.text
    t.export_id = r.json()["export_id"]

    async def listed() -> bool:
        return t.export_id in (await world.staff("analytics", "GET", "/v1/exports")).text

    await eventually(listed, what="the export projected")

    async def scoped() -> bool:  # the campaign's account, from admin's CampaignConfigured
        async with rt.db.begin() as conn:
            found = await conn.scalar(
                text("select account_id from campaign_accounts where campaign_id = :c"),
                {"c": t.campaign_id},
            )
        return str(found) == t.account_id

    await eventually(scoped, what="analytics knowing the campaign's account")


async def _privacy(world: World, t: Tenant) -> None:
    async def known() -> bool:
        r = await world.staff("ingest", "GET", f"/v1/privacy/campaigns/{t.campaign_id}/retention")
        put = await world.staff(
            "ingest",
            "PUT",
            f"/v1/privacy/campaigns/{t.campaign_id}/retention",
            {"retention_days": 30},
        )
        return r.status_code == 200 and put.status_code == 200

    await eventually(known, what="ingest knowing the campaign")
    r = await world.staff("ingest", "POST", "/v1/privacy/access", subject(t))
    assert r.status_code == 200, r.text
    t.request_id = r.json()["request"]["request_id"]


def export_body() -> dict[str, Any]:
    return {
        "name": "daily",
        "query": {"granularity": "day", "group_by": ["campaign"]},
        "every_hours": 24,
        "retention_days": 7,
        "configured_by": "test",
    }


def one_month_subscription(plan_id: str) -> dict[str, Any]:
    month = fresh_month()
    return {"plan_id": plan_id, "start_month": month, "end_month": month}


def subject(t: Tenant) -> dict[str, Any]:
    return {"account_id": t.account_id, "email": f"s-{uuid.uuid4().hex[:8]}@example.com"}


@pytest.fixture(scope="module")
async def world(
    infra: Infra, isolation: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    quiet = PlatformSettings(operator_rate_limit="100000/second")
    admin = settings_for(AdminSettings, infra, isolation, "admin", platform=quiet)
    billing = settings_for(BillingSettings, infra, isolation, "billing", platform=quiet)
    analytics = settings_for(
        AnalyticsSettings,
        infra,
        isolation,
        "analytics",
        platform=quiet,
        export_folder=Path(tmp_path_factory.mktemp("exports")),
        exports_enabled=False,
    )
    ingest = settings_for(IngestSettings, infra, isolation, "ingest", platform=quiet)
    apps = {
        "billing": create_billing(billing),
        "analytics": create_analytics(analytics),
        "ingest": create_ingest(ingest),
    }
    admin_app = create_admin(admin, resolver=DNS)
    async with (
        hosted(admin_app) as (admin_client, _),
        hosted(apps["billing"]) as (billing_client, billing_rt),
        hosted(apps["analytics"]) as (analytics_client, analytics_rt),
        hosted(apps["ingest"]) as (ingest_client, ingest_rt),
    ):
        world = World(
            admin=admin_client,
            apps=apps,
            clients={
                "billing": billing_client,
                "analytics": analytics_client,
                "ingest": ingest_client,
            },
            rts={"billing": billing_rt, "analytics": analytics_rt, "ingest": ingest_rt},
            own=None,  # type: ignore[arg-type]
            other=None,  # type: ignore[arg-type]
        )
        world.own = await _tenant(world, "own")
        world.other = await _tenant(world, "other")
        r = await world.staff(
            "billing",
            "POST",
            "/v1/plans",
            {"name": "Basic", "monthly_fee": "100.00", "included_leads": 10, "overage_price": "1"},
        )
        assert r.status_code == 202, r.text
        plan_id = r.json()["id"]
        await _projected(world, "billing", f"/v1/plans/{plan_id}")
        for t in (world.own, world.other):
            await _billing(world, t, plan_id)
            await _analytics(world, t)
            await _privacy(world, t)
        for role in ACCOUNT_ROLES:
            who = tenant_principal(role, world.own.account_id)
            world.callers.append(Caller(f"{role.value} (access token)", access_header(who), role))
        staff = Principal(PrincipalKind.USER, str(uuid.uuid4()), Role.SUPERUSER, None)
        owner = tenant_principal(Role.OWNER, world.own.account_id)
        expired = AccessTokenSigner.from_setting(ACCESS_SIGNING_KEY).mint(
            owner, now=time.time() - 3600
        )
        forged = AccessTokenSigner("test1", Ed25519PrivateKey.generate()).mint(owner)
        world.callers += [
            Caller("superuser (access token)", access_header(staff), Role.SUPERUSER),
            Caller("operator token", OPERATOR, Role.SUPERUSER),
            Caller("no credential", {}, None),
            Caller("expired owner token", {"authorization": f"Bearer {expired.token}"}, None),
            Caller("owner token of another key", {"authorization": f"Bearer {forged.token}"}, None),
        ]
        yield world


# --- the table --------------------------------------------------------------------------------

Request = tuple[str, Any]
Make = Callable[[World, Tenant, Caller], Awaitable[Request]]


def at(template: str, body: Any = None) -> Make:
    async def make(world: World, t: Tenant, caller: Caller) -> Request:
        return template.format(**vars(t)), body(t) if callable(body) else body

    return make


async def fresh_invoice(world: World, t: Tenant) -> str:
    """An invoice issued just now (a staff command may pay or void it once)."""
    r = await world.staff(
        "billing", "POST", f"/v1/accounts/{t.account_id}/invoices", {"month": fresh_month()}
    )
    assert r.status_code == 202, r.text
    invoice_id: str = r.json()["invoice_id"]
    await _projected(world, "billing", f"/v1/invoices/{invoice_id}")
    return invoice_id


def invoice_command(action: str, body: Any) -> Make:
    async def make(world: World, t: Tenant, caller: Caller) -> Request:
        staff = caller.role is Role.SUPERUSER
        invoice = await fresh_invoice(world, t) if staff else t.invoice_id
        return f"/v1/invoices/{invoice}/{action}", body

    return make


@dataclass(frozen=True)
class Route:
    service: str
    permission: Permission
    ok: int
    make: Make
    tenant: bool = True  # names an entity of an account (else: the platform's, or a list)


def payment(_: Tenant) -> dict[str, str]:
    return {"amount": "10.00", "method": "wire", "reference": f"r-{uuid.uuid4().hex[:6]}"}


ROUTES: dict[tuple[str, str], Route] = {
    # billing: the account's figures
    ("GET", "/v1/accounts/{account_id}/statement"): Route(
        "billing", P.BILLING_READ, 200, at("/v1/accounts/{account_id}/statement?month=" + MONTH)
    ),
    ("GET", "/v1/accounts/{account_id}/balances"): Route(
        "billing", P.BILLING_READ, 200, at("/v1/accounts/{account_id}/balances")
    ),
    ("GET", "/v1/plans/{plan_id}"): Route(
        "billing", P.BILLING_READ, 200, at("/v1/plans/{plan_id}"), tenant=False
    ),
    ("GET", "/v1/accounts/{account_id}/subscriptions"): Route(
        "billing", P.BILLING_READ, 200, at("/v1/accounts/{account_id}/subscriptions")
    ),
    ("GET", "/v1/accounts/{account_id}/limit"): Route(
        "billing", P.BILLING_READ, 200, at("/v1/accounts/{account_id}/limit")
    ),
    ("GET", "/v1/accounts/{account_id}/buyers/{buyer_id}/funds"): Route(
        "billing", P.BILLING_READ, 200, at("/v1/accounts/{account_id}/buyers/{buyer_id}/funds")
    ),
    ("GET", "/v1/invoices/{invoice_id}"): Route(
        "billing", P.BILLING_READ, 200, at("/v1/invoices/{invoice_id}")
    ),
    ("GET", "/v1/invoices/{invoice_id}.csv"): Route(
        "billing", P.BILLING_READ, 200, at("/v1/invoices/{invoice_id}.csv")
    ),
    ("GET", "/v1/invoices/{invoice_id}.html"): Route(
        "billing", P.BILLING_READ, 200, at("/v1/invoices/{invoice_id}.html")
    ),
    ("GET", "/v1/accounts/{account_id}/ledger-totals"): Route(
        "billing",
        P.BILLING_READ,
        200,
        at("/v1/accounts/{account_id}/ledger-totals?month=" + MONTH),
    ),
    ("GET", "/v1/ledger/check"): Route(
        "billing", P.PLATFORM, 200, at("/v1/ledger/check"), tenant=False
    ),
    # billing: the account's own prepaid buyers
    ("POST", "/v1/accounts/{account_id}/buyers/{buyer_id}/deposits"): Route(
        "billing",
        P.BILLING_WRITE,
        202,
        at("/v1/accounts/{account_id}/buyers/{buyer_id}/deposits", payment),
    ),
    ("PUT", "/v1/accounts/{account_id}/buyers/{buyer_id}/credit-limit"): Route(
        "billing",
        P.BILLING_WRITE,
        202,
        at("/v1/accounts/{account_id}/buyers/{buyer_id}/credit-limit", {"credit_limit": "50"}),
    ),
    # billing: what an account owes the platform, staff's
    ("POST", "/v1/plans"): Route(
        "billing",
        P.PLATFORM,
        202,
        at(
            "/v1/plans",
            {"name": "P", "monthly_fee": "1", "included_leads": 1, "overage_price": "1"},
        ),
        tenant=False,
    ),
    ("POST", "/v1/accounts/{account_id}/subscriptions"): Route(
        "billing",
        P.PLATFORM,
        202,
        at(
            "/v1/accounts/{account_id}/subscriptions",
            lambda t: one_month_subscription(t.plan_id),
        ),
    ),
    ("POST", "/v1/subscriptions/{subscription_id}/change"): Route(
        "billing",
        P.PLATFORM,
        202,
        at(
            "/v1/subscriptions/{subscription_id}/change",
            lambda t: {"plan_id": t.plan_id, "from_month": NEXT_MONTH},
        ),
    ),
    ("POST", "/v1/subscriptions/{subscription_id}/end"): Route(
        "billing",
        P.PLATFORM,
        202,
        at("/v1/subscriptions/{subscription_id}/end", {"last_month": "2039-12"}),
    ),
    ("POST", "/v1/accounts/{account_id}/payments"): Route(
        "billing", P.PLATFORM, 202, at("/v1/accounts/{account_id}/payments", payment)
    ),
    ("POST", "/v1/accounts/{account_id}/invoices"): Route(
        "billing",
        P.PLATFORM,
        202,
        at("/v1/accounts/{account_id}/invoices", lambda t: {"month": fresh_month()}),
    ),
    ("POST", "/v1/invoices/{invoice_id}/pay"): Route(
        "billing", P.PLATFORM, 202, invoice_command("pay", {})
    ),
    ("POST", "/v1/invoices/{invoice_id}/void"): Route(
        "billing", P.PLATFORM, 202, invoice_command("void", {"reason": "test"})
    ),
    # analytics
    ("GET", "/v1/stats/hourly"): Route(
        "analytics", P.REPORTS_READ, 200, at("/v1/stats/hourly?campaign_id={campaign_id}"), False
    ),
    ("GET", "/v1/reports"): Route(
        "analytics",
        P.REPORTS_READ,
        200,
        at(
            "/v1/reports?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&granularity=all"
            "&campaign_id={campaign_id}"
        ),
        tenant=False,
    ),
    ("POST", "/v1/exports"): Route(
        "analytics", P.EXPORTS, 202, at("/v1/exports", lambda t: export_body()), tenant=False
    ),
    ("PUT", "/v1/exports/{export_id}"): Route(
        "analytics", P.EXPORTS, 202, at("/v1/exports/{export_id}", lambda t: export_body())
    ),
    ("GET", "/v1/exports"): Route("analytics", P.EXPORTS, 200, at("/v1/exports"), tenant=False),
    ("GET", "/v1/exports/{export_id}/runs"): Route(
        "analytics", P.EXPORTS, 200, at("/v1/exports/{export_id}/runs")
    ),
    # ingest's privacy API
    ("POST", "/v1/privacy/access"): Route(
        "ingest", P.PRIVACY, 200, at("/v1/privacy/access", subject)
    ),
    ("POST", "/v1/privacy/erasure"): Route(
        "ingest", P.PRIVACY, 202, at("/v1/privacy/erasure", subject)
    ),
    ("GET", "/v1/privacy/requests"): Route(
        "ingest", P.PRIVACY, 200, at("/v1/privacy/requests?account_id={account_id}")
    ),
    ("GET", "/v1/privacy/requests/{request_id}"): Route(
        "ingest", P.PRIVACY, 200, at("/v1/privacy/requests/{request_id}")
    ),
    ("PUT", "/v1/privacy/campaigns/{campaign_id}/retention"): Route(
        "ingest",
        P.PRIVACY,
        200,
        at("/v1/privacy/campaigns/{campaign_id}/retention", {"retention_days": 60}),
    ),
    ("GET", "/v1/privacy/campaigns/{campaign_id}/retention"): Route(
        "ingest", P.PRIVACY, 200, at("/v1/privacy/campaigns/{campaign_id}/retention")
    ),
}


def expected(route: Route, caller: Caller, own: bool) -> int:
    if caller.role is None:
        return 401
    if route.permission not in ROLE_PERMISSIONS[caller.role]:
        return 403
    if not own and route.tenant and caller.role is not Role.SUPERUSER:
        return 404
    return route.ok


def served(world: World, service: str) -> set[tuple[str, str]]:
    app = world.apps[service]
    app.openapi_schema = None
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    } - OPERATIONS
    if service == "ingest":  # its sources' and the internal API are not principals'
        routes = {r for r in routes if r[1].startswith("/v1/privacy/")}
    return routes


# --- the matrix -------------------------------------------------------------------------------


async def test_every_route_of_the_three_apis_is_in_the_table(world: World) -> None:
    for service in world.apps:
        table = {k for k, r in ROUTES.items() if r.service == service}
        assert served(world, service) == table, service


async def test_every_route_answers_every_caller_of_either_tenant_as_the_table_says(
    world: World,
) -> None:
    wrong = []
    asked = 0
    for (method, path), route in ROUTES.items():
        for caller in world.callers:
            for own in (True, False):
                tenant = world.own if own else world.other
                url, body = await route.make(world, tenant, caller)
                client = world.clients[route.service]
                r = await client.request(method, url, json=body, headers=caller.header)
                asked += 1
                want = expected(route, caller, own)
                if r.status_code != want:
                    wrong.append(
                        f"{method} {path} by {caller.name} on {'own' if own else 'other'}:"
                        f" {r.status_code} (expected {want}) {r.text[:200]}"
                    )
                elif want in (401, 403, 404):
                    # Machine-readable, and never another tenant's data.
                    error = r.json()["error"]
                    assert error["code"], r.text
                    if want == 404:
                        assert tenant.account_id not in r.text, r.text
    assert not wrong, "\n".join(wrong)
    assert asked == len(ROUTES) * len(world.callers) * 2


async def test_lists_and_reports_hold_only_the_callers_own_tenant(world: World) -> None:
    own, other = world.own, world.other
    lists = [
        ("analytics", "/v1/stats/hourly", P.REPORTS_READ),
        (
            "analytics",
            "/v1/reports?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&granularity=all"
            "&group_by=campaign",
            P.REPORTS_READ,
        ),
        ("analytics", "/v1/exports", P.EXPORTS),
        ("ingest", "/v1/privacy/requests", P.PRIVACY),
    ]
    for role in ACCOUNT_ROLES:
        header = access_header(tenant_principal(role, own.account_id))
        for service, url, permission in lists:
            r = await world.clients[service].get(url, headers=header)
            if permission not in ROLE_PERMISSIONS[role]:
                assert r.status_code == 403, (role, url, r.text)
                continue
            assert r.status_code == 200, (role, url, r.text)
            body = r.text
            assert other.campaign_id not in body and other.account_id not in body, (role, url)
            assert other.export_id not in body and other.request_id not in body, (role, url)
            assert own.campaign_id in body or own.export_id in body or own.request_id in body, (
                role,
                url,
                body[:300],
            )
    # Naming the other tenant's campaign gives what an unknown campaign gives: nothing.
    analyst = access_header(tenant_principal(Role.ANALYST, own.account_id))
    for url in (
        f"/v1/stats/hourly?campaign_id={other.campaign_id}",
        "/v1/reports?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&granularity=all"
        f"&campaign_id={other.campaign_id}",
    ):
        r = await world.clients["analytics"].get(url, headers=analyst)
        assert r.status_code == 200 and other.campaign_id not in r.text, r.text
        rows = r.json() if isinstance(r.json(), list) else r.json()["rows"]
        assert rows == []
    # Staff see both tenants.
    r = await world.staff("analytics", "GET", "/v1/stats/hourly")
    assert own.campaign_id in r.text and other.campaign_id in r.text


async def test_an_export_stays_its_tenants_and_runs_on_its_campaigns_only(world: World) -> None:
    """The scheduler reports a tenant's export over its own campaigns, whatever the query."""
    rt = world.rts["analytics"]
    scheduler = rt.extras["exports"]
    tick = await scheduler.tick(HOUR + dt.timedelta(hours=1))
    assert tick.ran
    for t, stranger in ((world.own, world.other), (world.other, world.own)):
        owner = access_header(tenant_principal(Role.OWNER, t.account_id))
        r = await world.clients["analytics"].get(f"/v1/exports/{t.export_id}/runs", headers=owner)
        assert r.status_code == 200, r.text
        (run,) = r.json()
        written = (scheduler.folder / run["file_name"]).read_text()
        assert t.campaign_id in written and stranger.campaign_id not in written


async def test_admin_mints_access_tokens_that_billing_takes_until_the_api_token_is_revoked(
    world: World,
) -> None:
    made = await _made(
        world, f"/v1/accounts/{world.own.account_id}/api-tokens", {"name": "b", "role": "billing"}
    )
    api_token = {"authorization": f"Bearer {made['token']}"}
    r = await world.admin.post("/v1/auth/access-token", headers=api_token)
    assert r.status_code == 200, r.text
    minted = r.json()
    assert minted["token_type"] == "bearer" and minted["expires_in"] == access.DEFAULT_TTL_S
    bearer = {"authorization": f"Bearer {minted['access_token']}"}
    billing = world.clients["billing"]
    own = await billing.get(f"/v1/accounts/{world.own.account_id}/balances", headers=bearer)
    assert own.status_code == 200, own.text
    other = await billing.get(f"/v1/accounts/{world.other.account_id}/balances", headers=bearer)
    assert other.status_code == 404 and other.json()["error"]["code"] == "account_not_found"
    # Analytics and ingest take it too, within the billing role's permissions.
    reports = await world.clients["analytics"].get("/v1/stats/hourly", headers=bearer)
    assert reports.status_code == 200
    privacy = await world.clients["ingest"].get("/v1/privacy/requests", headers=bearer)
    assert privacy.status_code == 403
    # Revoked: no more tokens; the one minted lives out its minutes (docs/security.md).
    r = await world.admin.delete(f"/v1/api-tokens/{made['token_id']}", headers=OPERATOR)
    assert r.status_code == 204, r.text
    r = await world.admin.post("/v1/auth/access-token", headers=api_token)
    assert r.status_code == 401
    r = await world.admin.post("/v1/auth/access-token", headers=OPERATOR)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "operator_token_not_exchangeable"


async def test_a_service_without_public_keys_takes_no_access_tokens(
    infra: Infra, isolation: str
) -> None:
    """Production's default: no keys configured, only the operator token is accepted."""
    settings = settings_for(
        BillingSettings, infra, isolation, "billing_nokeys", consumer_group="billing-nokeys"
    )
    settings = settings.model_copy(
        update={"platform": settings.platform.model_copy(update={"access_token_public_keys": ""})}
    )
    async with hosted(create_billing(settings)) as (client, _):
        owner = access_header(tenant_principal(Role.OWNER, str(uuid.uuid4())))
        r = await client.get("/v1/ledger/check", headers=owner)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "access_tokens_disabled"
        assert (await client.get("/v1/ledger/check", headers=OPERATOR)).status_code == 200
