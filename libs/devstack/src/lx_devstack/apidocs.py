"""Generated API documentation, written into ``docs/`` and kept current by a unit test.

    python -m lx_devstack.apidocs           # (re)write the files below
    python -m lx_devstack.apidocs --check   # exit 1 if a committed file is stale

- ``docs/api/<service>.openapi.json``: each service's HTTP API (FastAPI's OpenAPI);
- ``docs/asyncapi.json``: every service's Kafka subscriptions (FastStream's AsyncAPI);
- ``docs/events.schema.json``: the JSON Schema of every event version, by topic. The
  subscribers take raw bytes (one decoder for every event type), so the AsyncAPI
  document cannot say what a message holds: this file does.

Each service is built by its own composition root, ``lx_<service>.main.create_service``,
which wires without connecting, from its settings' code defaults: never from the
caller's ``LX_*`` variables, so the documents do not depend on who generated them.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from faststream.specification import AsyncAPI
from lx_platform.settings import KafkaSettings, LogSettings, PlatformSettings, ServiceSettings
from lx_schemas import ALL_TOPICS, registered_events, topic_for

from lx_devstack.paths import project_root
from lx_devstack.stack import SERVICES

API_DIR = Path("docs/api")
ASYNCAPI_FILE = Path("docs/asyncapi.json")
EVENTS_FILE = Path("docs/events.schema.json")
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE = "python -m lx_devstack.apidocs"


def settings_class(service: str) -> type[ServiceSettings]:
    """The one ``ServiceSettings`` subclass defined in ``lx_<service>.settings``."""
    module = importlib.import_module(f"lx_{service}.settings")
    found = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ServiceSettings) and cls.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise LookupError(f"expected one ServiceSettings subclass in {module.__name__}: {found}")
    return found[0]


def default_settings(service: str) -> ServiceSettings:
    """The service's settings as the code defines them, ignoring the environment."""
    # model_construct skips BaseSettings.__init__, the only place LX_* variables are read.
    return settings_class(service).model_construct(
        kafka=KafkaSettings.model_construct(),
        log=LogSettings.model_construct(),
        platform=PlatformSettings.model_construct(),
    )


def build_apps(services: Sequence[str] = SERVICES) -> dict[str, FastAPI]:
    apps = {}
    for service in services:
        main = importlib.import_module(f"lx_{service}.main")
        apps[service] = main.create_service(default_settings(service))
    return apps


def asyncapi_document(apps: Mapping[str, FastAPI]) -> dict[str, Any]:
    brokers = [app.state.runtime.broker for app in apps.values()]
    spec = AsyncAPI(
        *brokers,
        title="LeadExchange event consumers",
        version="1.0.0",
        description=(
            "What each service consumes: one channel per consumer group and topic. "
            "Messages are decoded by the event envelope's `type` and `schema_version`; "
            "their schemas, grouped by topic, are in docs/events.schema.json."
        ),
    )
    document: dict[str, Any] = spec.to_specification().to_jsonable()
    return document


def events_document() -> dict[str, Any]:
    topics: dict[str, dict[str, Any]] = {
        spec.name: {
            "description": spec.description,
            "key": spec.key,
            "partitions": spec.partitions,
            "config": dict(spec.config),
            "dead_letter_topic": spec.dead_letter_name,
            "events": {},
        }
        for spec in ALL_TOPICS
    }
    for cls in registered_events():
        # topic_for raises for an event no topic carries: that is a bug worth failing on.
        schema = {"$schema": JSON_SCHEMA_DIALECT, **cls.model_json_schema()}
        topics[topic_for(cls).name]["events"][f"{cls.TYPE}.v{cls.VERSION}"] = schema
    return {
        "title": "LeadExchange events",
        "description": (
            "The JSON Schema of every event version, grouped by the topic that carries it. "
            "Every event travels in the same envelope; its `type` and `schema_version` are "
            "also in the Kafka headers `lx-event-type` and `lx-schema-version`. Generated "
            f"from lx_schemas by `{REGENERATE}`."
        ),
        "topics": topics,
    }


def render(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate(services: Sequence[str] = SERVICES) -> dict[Path, str]:
    """Every generated file (path relative to the project root) and its content."""
    apps = build_apps(services)
    files = {API_DIR / f"{name}.openapi.json": render(app.openapi()) for name, app in apps.items()}
    files[ASYNCAPI_FILE] = render(asyncapi_document(apps))
    files[EVENTS_FILE] = render(events_document())
    return files


def orphans(root: Path, files: Mapping[Path, str]) -> list[Path]:
    """OpenAPI files of services that no longer exist."""
    return sorted(
        p.relative_to(root)
        for p in (root / API_DIR).glob("*.openapi.json")
        if p.relative_to(root) not in files
    )


def stale(root: Path, files: Mapping[Path, str]) -> list[Path]:
    """Generated files that are missing, differ from ``files``, or should not exist."""
    changed = [
        path
        for path, text in files.items()
        if not (root / path).is_file() or (root / path).read_text(encoding="utf-8") != text
    ]
    return sorted(changed + orphans(root, files))


def write(root: Path, files: Mapping[Path, str]) -> tuple[list[Path], list[Path]]:
    """Write the files that changed and delete orphans; returns both lists."""
    changed = [p for p in stale(root, files) if p in files]
    removed = orphans(root, files)
    for path in removed:
        (root / path).unlink()
    for path in changed:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(files[path], encoding="utf-8")
    return changed, removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is stale"
    )
    parser.add_argument("--root", type=Path, default=None, help="project root (default: found)")
    args = parser.parse_args(argv)
    root: Path = args.root or project_root()
    files = generate()
    if args.check:
        outdated = stale(root, files)
        for path in outdated:
            sys.stderr.write(f"stale: {path}\n")
        if outdated:
            sys.stderr.write(f"API docs are out of date: run `{REGENERATE}`\n")
            return 1
        return 0
    changed, removed = write(root, files)
    for path in changed:
        sys.stdout.write(f"wrote {path}\n")
    for path in removed:
        sys.stdout.write(f"removed {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
