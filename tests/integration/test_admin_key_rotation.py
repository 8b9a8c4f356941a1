"""Config key rotation through admin, against real Kafka and PostgreSQL: a new key first
in LX_PLATFORM_CONFIG_KEYS, one reseal call, and every buyer secret is sealed under it,
stored and republished, with no plaintext anywhere; then the old key can go."""

from __future__ import annotations

import base64
import os
import time
import uuid
from typing import Any

from lx_admin import access
from lx_admin.main import create_service
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_platform.secrets import ConfigKeys
from lx_platform.settings import PlatformSettings
from lx_schemas import decode_event
from lx_schemas import events as ev
from pydantic import SecretStr

from tests.integration.test_admin_config import DNS, FIELDS, Admin
from tests.support.services import hosted, settings_for

OLD = "old1:" + base64.b64encode(os.urandom(32)).decode()
NEW = "new1:" + base64.b64encode(os.urandom(32)).decode()
BEARER = "bearer-" + uuid.uuid4().hex
PING = "ping-" + uuid.uuid4().hex


def admin_with(infra: Infra, tag: str, keys: str) -> Any:
    platform = PlatformSettings(config_keys=SecretStr(keys))
    return create_service(
        settings_for(AdminSettings, infra, tag, "admin", platform=platform), resolver=DNS
    )


OWNER = f"owner-{uuid.uuid4().hex[:8]}@rotate.example"
PASSWORD = "a long enough password"


async def enrolled_owner(admin: Admin, account_id: str) -> tuple[str, int]:
    """An owner with TOTP enrolled (sealed under the config key in force): its secret and
    the step its enrolment used."""
    await admin.created(
        f"/v1/accounts/{account_id}/users", {"email": OWNER, "password": PASSWORD, "role": "owner"}
    )
    r = await admin.client.post("/v1/auth/login", json={"email": OWNER, "password": PASSWORD})
    assert r.status_code == 200, r.text
    bearer = {"authorization": f"Bearer {r.json()['token']}"}
    r = await admin.client.post("/v1/auth/totp", headers=bearer)
    assert r.status_code == 201, r.text
    secret: str = r.json()["secret"]
    step = int(time.time() // 30)
    code = access.totp_code(secret, step)
    r = await admin.client.post("/v1/auth/totp/confirm", json={"code": code}, headers=bearer)
    assert r.status_code == 200, r.text
    return secret, step


def key_ids(state: dict[str, Any]) -> set[str]:
    ping = state["ping"]["integration"]["auth"]["secret"]
    return {
        state["integration"]["auth"]["secret"]["key_id"],
        ping["key_id"],
        state["signing_secret"]["key_id"],
    }


async def test_a_rotation_reseals_every_buyer_secret_and_the_old_key_can_go(
    infra: Infra, isolation: str
) -> None:
    async with hosted(admin_with(infra, isolation, OLD)) as (client, rt):
        admin = Admin(client, rt, infra.kafka_bootstrap)
        account = await admin.created("/v1/accounts", {"name": "Rotate Co"})
        campaign = await admin.created(
            f"/v1/accounts/{account['account_id']}/campaigns",
            {"name": "Auto", "vertical": "auto", "fields": FIELDS},
        )
        buyer = await admin.created(
            f"/v1/campaigns/{campaign['campaign_id']}/buyers",
            {
                "name": "Sealed",
                "endpoint_url": "https://buyer.example/leads",
                "price": "20.00",
                "integration": {"auth": {"kind": "bearer", "secret": BEARER}},
                "ping": {
                    "url": "https://buyer.example/ping",
                    "integration": {
                        "auth": {"kind": "header", "header_name": "X-Key", "secret": PING}
                    },
                },
            },
        )
        buyer_id = buyer["buyer_id"]
        signing = buyer["signing_secret_value"]
        totp_secret, enrolled_step = await enrolled_owner(admin, account["account_id"])
        assert key_ids((await admin.send("GET", f"/v1/buyers/{buyer_id}")).json()) == {"old1"}

    # The operator puts the new key first and keeps the old one while resealing.
    async with hosted(admin_with(infra, isolation, f"{NEW},{OLD}")) as (client, rt):
        admin = Admin(client, rt, infra.kafka_bootstrap)
        r = await admin.send("POST", "/v1/config-keys/reseal")
        assert r.status_code == 200, r.text
        assert r.json() == {"key_id": "new1", "buyers": 1, "resealed": 1, "users_resealed": 1}
        again = await admin.send("POST", "/v1/config-keys/reseal")
        assert again.json()["resealed"] == 0  # safe to run again
        stored = await admin.everything_stored()
        for plain in (BEARER, PING, signing):
            assert plain not in stored
        records = await admin.records(buyer_id, n=2)
        latest = decode_event(records[-1].value)
        assert isinstance(latest, ev.BuyerConfigured)
        assert key_ids(latest.payload.model_dump(mode="json")) == {"new1"}

    # The old key removed: every secret still opens, under the new key alone.
    async with hosted(admin_with(infra, isolation, NEW)) as (client, rt):
        admin = Admin(client, rt, infra.kafka_bootstrap)
        view = (await admin.send("GET", f"/v1/buyers/{buyer_id}")).json()
        assert key_ids(view) == {"new1"}
        state = ev.BuyerState.model_validate(latest.payload.model_dump())
        keys = ConfigKeys.parse(NEW)
        assert state.integration.auth.secret is not None and state.signing_secret is not None
        assert keys.open(state.integration.auth.secret) == BEARER
        assert state.ping is not None and state.ping.integration.auth.secret is not None
        assert keys.open(state.ping.integration.auth.secret) == PING
        assert keys.open(state.signing_secret) == signing
        # The owner's TOTP secret was re-sealed too: signing in still works.
        code = access.totp_code(totp_secret, enrolled_step + 1)
        r = await admin.client.post(
            "/v1/auth/login", json={"email": OWNER, "password": PASSWORD, "totp": code}
        )
        assert r.status_code == 200, r.text
