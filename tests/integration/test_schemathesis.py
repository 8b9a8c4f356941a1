"""Schemathesis against the ingest and admin OpenAPI documents: whatever it sends, no
answer is a 5xx (its ``not_a_server_error`` check).

Each service runs in-process (ASGI) with real Kafka and PostgreSQL behind it. The
requests go through Schemathesis' own ASGI client, which runs the app's lifespan on its
event loop thread (the service's pools and consumers live there, not on the test's
loop), so the fixtures hand the lifespan to it and stop it at the end of the module.
Every request carries a valid credential (a source's API key, the operator token) so
that the generated bodies, headers and paths get past authentication to the handlers.
Examples are bounded per operation (``MAX_EXAMPLES``) and Hypothesis keeps no database,
so each run explores afresh.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from lx_admin.main import create_service as create_admin
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_ingest.main import create_service as create_ingest
from lx_ingest.settings import IngestSettings
from lx_platform.settings import PlatformSettings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from schemathesis.python import asgi
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.support.dns import StubDns
from tests.support.http import free_port
from tests.support.ingest import campaign_configured, new_sources, source_configured
from tests.support.kafka import publish
from tests.support.services import OPERATOR, settings_for

# Per operation; LX_TEST_FUZZ_EXAMPLES=500 for a deeper run by hand.
MAX_EXAMPLES = int(os.environ.get("LX_TEST_FUZZ_EXAMPLES", "20"))
# Schemathesis' own strategies draw from `random`; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
# The fuzzer must reach the handlers, not the operator's rate limit.
UNLIMITED = "1000000/second"
credentials: dict[str, dict[str, str]] = {}
CREDENTIAL_HEADERS = {"authorization", "x-api-key"}


async def _load(app: Any) -> OpenApiSchema:
    """The app's OpenAPI document; loading it starts the app's lifespan on Schemathesis'
    event loop thread (where every later request runs)."""
    return await asyncio.to_thread(schemathesis.openapi.from_asgi, "/openapi.json", app)


async def _stop() -> None:
    await asyncio.to_thread(asgi.shutdown_lifespans)


@pytest.fixture(scope="module")
async def ingest_schema(infra: Infra, isolation: str) -> AsyncIterator[OpenApiSchema]:
    # No auction service answers here, whatever else runs on this machine.
    platform = PlatformSettings(auction_url=f"http://127.0.0.1:{free_port()}")
    config = settings_for(IngestSettings, infra, isolation, "ingest", platform=platform)
    app = create_ingest(config)
    schema = await _load(app)
    try:
        account_id, campaign_id = uuid.uuid4(), uuid.uuid4()
        (src,) = new_sources(account_id, campaign_id, 1)
        prefix = config.kafka.topic_prefix
        await publish(
            infra.kafka_bootstrap,
            prefix,
            [
                (campaign_configured(account_id, campaign_id), campaign_id),
                (source_configured(src), src.source_id),
            ],
        )
        credentials["ingest"] = src.auth
        await asyncio.to_thread(_until_key_is_known, app, src.auth)
        yield schema
    finally:
        await _stop()


def _until_key_is_known(app: Any, auth: dict[str, str]) -> None:
    import time

    with asgi.get_client(app) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = client.get(f"http://{asgi.HOST}/v1/leads/{uuid.uuid4()}", headers=auth)
            if r.status_code == 404:
                return
            time.sleep(0.1)
    raise AssertionError("ingest never learned the source's key")


@pytest.fixture(scope="module")
async def admin_schema(infra: Infra, isolation: str) -> AsyncIterator[OpenApiSchema]:
    platform = PlatformSettings(
        delivery_url=f"http://127.0.0.1:{free_port()}",
        internal_timeout_s=0.5,
        operator_rate_limit=UNLIMITED,
    )
    config = settings_for(AdminSettings, infra, isolation, "admin", platform=platform)
    # Names the fuzzer makes up do not resolve (no DNS lookups leave the machine).
    app = create_admin(config, resolver=StubDns({}, fallback=None))
    schema = await _load(app)
    credentials["admin"] = OPERATOR
    try:
        yield schema
    finally:
        await _stop()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in doc["paths"].items() for method in item]


# Collected from the documents of apps built with default settings (building connects to
# nothing); each operation is one test, run against the module's running service.
INGEST_OPERATIONS = _operations(create_ingest(IngestSettings()).openapi())
ADMIN_OPERATIONS = _operations(create_admin(AdminSettings()).openapi())


def fuzz(schema: OpenApiSchema, method: str, path: str, auth: dict[str, str]) -> None:
    """``MAX_EXAMPLES`` generated requests to one operation, each with ``auth``; fails,
    with the request to replay, on the first 5xx."""

    operation = schema[path][method]
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @BOUNDED
    @given(case=cases)
    def run(case: Case[Any]) -> None:
        # The credentials the fuzzer makes up would stop most requests at the door.
        for name in list(case.headers or {}):
            if name.lower() in CREDENTIAL_HEADERS:
                del case.headers[name]
        response = case.call(headers=auth)
        case.validate_response(response, checks=[not_a_server_error], headers=auth)

    run()


@pytest.mark.parametrize(("method", "path"), INGEST_OPERATIONS)
def test_ingest_answers_whatever_it_is_sent_without_a_server_error(
    ingest_schema: OpenApiSchema, method: str, path: str
) -> None:
    fuzz(ingest_schema, method, path, credentials["ingest"])


@pytest.mark.parametrize(("method", "path"), ADMIN_OPERATIONS)
def test_admin_answers_whatever_it_is_sent_without_a_server_error(
    admin_schema: OpenApiSchema, method: str, path: str
) -> None:
    fuzz(admin_schema, method, path, credentials["admin"])
