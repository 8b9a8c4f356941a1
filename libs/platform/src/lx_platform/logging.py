"""structlog set-up: JSON lines with a PII redaction step before rendering; stdlib
records (libraries) masked by a handler filter."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values are PII whatever the campaign calls its fields.
PII_KEYS = frozenset(
    {
        "email",
        "phone",
        "first_name",
        "last_name",
        "name",
        "address",
        "street",
        "ssn",
        "dob",
        "date_of_birth",
        "ip",
        "ip_address",
        "pii",
        "body",
        "request_body",
        "response_body",
        "authorization",
        "api_key",
        "password",
    }
)
REDACTED = "[redacted]"
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# Identifiers and timestamps are long digit runs too: matched first and kept, so that a
# buyer id or a date in a log line is never mistaken for a phone number.
_KEEP_OR_PHONE = re.compile(
    r"(?P<keep>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?)"
    r"|(?P<phone>\+?\d[\d ().-]{8,}\d)"
)


def _mask_phone(match: re.Match[str]) -> str:
    return match.group("keep") or REDACTED


def mask_pii(text: str) -> str:
    """``text`` with e-mail addresses and phone numbers masked (ids and dates kept): for
    free text from outside (a buyer's reason) before it is stored or published in clear."""
    return _KEEP_OR_PHONE.sub(_mask_phone, _EMAIL.sub(REDACTED, text))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, dict):
        return {k: REDACTED if k.lower() in PII_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_pii(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop values under PII keys and mask e-mail addresses and phone numbers anywhere."""
    for key in list(event_dict):
        if key.lower() in PII_KEYS:
            event_dict[key] = REDACTED
        elif key not in ("timestamp", "level", "lead_id", "correlation_id"):
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(service: str, level: str = "INFO", json_output: bool = True) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_pii,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries' stdlib logs (aiokafka, uvicorn) are masked the same way: a handler
    # filter sees every record that propagates to the root, whatever logger made it.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


class RedactingFilter(logging.Filter):
    """Masks e-mail addresses and phone numbers in a stdlib record's message (and in an
    exception's text, which may quote a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_pii(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = mask_pii(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
