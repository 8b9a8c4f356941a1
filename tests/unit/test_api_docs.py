"""The committed API documents in docs/ are what the code generates today."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from lx_devstack import apidocs
from lx_devstack.paths import project_root
from lx_devstack.stack import SERVICES
from lx_schemas import ALL_TOPICS, registered_events

ROOT = project_root()


@pytest.fixture(scope="module")
def generated() -> dict[Path, str]:
    return apidocs.generate()


def test_committed_api_docs_are_current() -> None:
    # Fails after a change to an HTTP route, a subscriber or an event: regenerate with
    # `python -m lx_devstack.apidocs` and commit the result with the change.
    assert apidocs.main(["--check", "--root", str(ROOT)]) == 0


def test_check_mode_fails_on_a_stale_or_orphaned_file(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    assert apidocs.main(["--check", "--root", str(tmp_path)]) == 0

    (tmp_path / apidocs.EVENTS_FILE).write_text("{}\n")
    (tmp_path / apidocs.API_DIR / "gone.openapi.json").write_text("{}\n")
    assert apidocs.main(["--check", "--root", str(tmp_path)]) == 1

    assert apidocs.main(["--root", str(tmp_path)]) == 0
    assert not (tmp_path / apidocs.API_DIR / "gone.openapi.json").exists()
    assert apidocs.main(["--check", "--root", str(tmp_path)]) == 0


def test_generation_ignores_the_callers_environment(
    monkeypatch: pytest.MonkeyPatch, generated: dict[Path, str]
) -> None:
    monkeypatch.setenv("LX_KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092")
    monkeypatch.setenv("LX_KAFKA_TOPIC_PREFIX", "someone-else.")
    monkeypatch.setenv("LX_BILLING_CONSUMER_GROUP", "billing-rebuild")
    assert apidocs.generate() == generated


def test_every_service_has_an_openapi_document(generated: dict[Path, str]) -> None:
    for service in SERVICES:
        document = json.loads(generated[apidocs.API_DIR / f"{service}.openapi.json"])
        assert "/health/ready" in document["paths"]


def test_asyncapi_lists_a_channel_for_every_topic_consumed(generated: dict[Path, str]) -> None:
    document = json.loads(generated[apidocs.ASYNCAPI_FILE])
    consumed = Counter(
        topic
        for app in apidocs.build_apps().values()
        for consumer in app.state.runtime.consumers
        for topic in consumer.topics
    )
    channels = Counter(channel["address"] for channel in document["channels"].values())
    assert channels == consumed


def test_event_schemas_cover_every_event_version_under_its_topic(
    generated: dict[Path, str],
) -> None:
    topics = json.loads(generated[apidocs.EVENTS_FILE])["topics"]
    assert set(topics) == {spec.name for spec in ALL_TOPICS}
    for spec in ALL_TOPICS:
        documented = topics[spec.name]["events"]
        assert set(documented) == {f"{cls.TYPE}.v{cls.VERSION}" for cls in spec.events}
        for cls in spec.events:
            schema = documented[f"{cls.TYPE}.v{cls.VERSION}"]
            assert schema["properties"]["type"]["const"] == cls.TYPE
    assert sum(len(t["events"]) for t in topics.values()) == len(registered_events())
