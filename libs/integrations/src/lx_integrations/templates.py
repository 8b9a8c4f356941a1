"""Build a buyer's request from its integration: the body (JSON, form or XML, from the
field mappings) and the headers (static ones plus auth from the sealed secret).

Pure: no I/O. The caller adds the platform's own headers (delivery id, signature).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET  # building only; answers are parsed by defusedxml
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from lx_platform.secrets import ConfigKeys
from lx_schemas.events import FieldValue
from lx_schemas.integration import AuthKind, BodyFormat, Integration, Transform

# What a template may be given: lead fields, opened PII, and the specials (lead_id,
# delivery_id, ping_id, bid_ref, price; a price may come as a Decimal).
TemplateValue = FieldValue | Decimal

CONTENT_TYPES = {
    BodyFormat.JSON: "application/json",
    BodyFormat.FORM: "application/x-www-form-urlencoded",
    BodyFormat.XML: "application/xml; charset=utf-8",
}
# Characters XML 1.0 cannot carry at all, even escaped; dropped from text.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off", ""})


class TemplateError(ValueError):
    """The integration cannot render this lead (a transform that does not fit the value,
    clashing nested keys, a secret that does not open or cannot be a header)."""


@dataclass(frozen=True)
class RenderedRequest:
    """What to send. ``headers`` already holds ``Content-Type`` (= ``content_type``)."""

    headers: dict[str, str]
    body: bytes
    content_type: str


def render(
    integration: Integration, values: Mapping[str, TemplateValue], *, keys: ConfigKeys
) -> RenderedRequest:
    """The request for ``values`` under ``integration``.

    No mappings: every value, under its own name (a flat object / form / elements).
    Mappings: only what they name; a missing or empty source leaves its field out.
    """
    pairs = _mapped(integration, values)
    fmt = integration.format
    if fmt is BodyFormat.JSON:
        body = json.dumps(_nest(pairs), separators=(",", ":"), ensure_ascii=False).encode()
    elif fmt is BodyFormat.FORM:
        body = urllib.parse.urlencode([(k, _text(v)) for k, v in pairs]).encode()
    else:
        body = _xml(integration.xml_root, pairs)
    content_type = CONTENT_TYPES[fmt]
    headers = {
        **integration.headers,
        **auth_headers(integration, keys),
        "Content-Type": content_type,
    }
    return RenderedRequest(headers=headers, body=body, content_type=content_type)


def auth_headers(integration: Integration, keys: ConfigKeys) -> dict[str, str]:
    auth = integration.auth
    if auth.kind is AuthKind.NONE or auth.secret is None:
        return {}
    try:
        secret = keys.open(auth.secret)
    except ValueError as exc:
        raise TemplateError(f"auth secret: {exc}") from None
    if auth.kind is AuthKind.BASIC:
        token = base64.b64encode(f"{auth.username}:{secret}".encode()).decode()
        name, value = "Authorization", f"Basic {token}"
    elif auth.kind is AuthKind.BEARER:
        name, value = "Authorization", f"Bearer {secret}"
    else:
        name, value = str(auth.header_name), secret
    if any(c in value for c in "\r\n\x00"):
        raise TemplateError("auth secret cannot be sent in a header (line break)")
    return {name: value}


def secret_header_names(integration: Integration) -> frozenset[str]:
    """Header names (lower case) carrying a credential: redact them in stored copies."""
    auth = integration.auth
    if auth.kind in (AuthKind.BASIC, AuthKind.BEARER):
        return frozenset({"authorization"})
    if auth.kind is AuthKind.HEADER and auth.header_name:
        return frozenset({auth.header_name.lower()})
    return frozenset()


def redact_headers(headers: Mapping[str, str], integration: Integration) -> dict[str, str]:
    secret = secret_header_names(integration) | {"authorization"}
    return {k: ("[redacted]" if k.lower() in secret else v) for k, v in headers.items()}


# --- values ---------------------------------------------------------------------------------


def _mapped(
    integration: Integration, values: Mapping[str, TemplateValue]
) -> list[tuple[str, TemplateValue]]:
    if not integration.mappings:
        return [(k, v) for k, v in values.items()]
    pairs: list[tuple[str, TemplateValue]] = []
    for m in integration.mappings:
        if m.static is not None:
            value: TemplateValue = m.static
        else:
            value = values.get(str(m.source))
            if value is None or value == "":
                continue
        pairs.append((m.to, _transform(value, m.transform, m.to)))
    return pairs


def _transform(value: TemplateValue, transform: Transform, name: str) -> TemplateValue:
    if transform is Transform.NONE:
        return value
    text = _text(value)
    if transform is Transform.UPPER:
        return text.upper()
    if transform is Transform.LOWER:
        return text.lower()
    if transform is Transform.DIGITS:
        return "".join(c for c in text if c.isascii() and c.isdigit())
    if transform is Transform.PHONE_NATIONAL:
        digits = "".join(c for c in text if c.isascii() and c.isdigit())
        if len(digits) == 11 and digits.startswith("1"):
            digits = digits[1:]
        if len(digits) != 10:
            raise TemplateError(f"{name}: {transform.value} needs a US number")
        return digits
    if transform in (Transform.YES_NO, Transform.ONE_ZERO):
        flag = _flag(value, name, transform)
        yes, no = ("yes", "no") if transform is Transform.YES_NO else ("1", "0")
        return yes if flag else no
    # DATE_US
    try:
        day = dt.date.fromisoformat(text[:10])
    except ValueError:
        raise TemplateError(f"{name}: {transform.value} needs a date (YYYY-MM-DD)") from None
    return day.strftime("%m/%d/%Y")


def _flag(value: TemplateValue, name: str, transform: Transform) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TemplateError(f"{name}: {transform.value} needs a boolean")


def _text(value: TemplateValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_value(value: TemplateValue) -> FieldValue:
    # Money stays a string (as in every event): never a float on the wire.
    return str(value) if isinstance(value, Decimal) else value


def _nest(pairs: list[tuple[str, TemplateValue]]) -> dict[str, object]:
    root: dict[str, object] = {}
    for key, value in pairs:
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise TemplateError(f"{key}: {part} is both a value and an object")
            node = child
        if isinstance(node.get(leaf), dict):
            raise TemplateError(f"{key} is both a value and an object")
        node[leaf] = _json_value(value)
    return root


def _xml(root_name: str, pairs: list[tuple[str, TemplateValue]]) -> bytes:
    root = ET.Element(root_name)
    leaves: set[int] = set()
    for key, value in pairs:
        node = root
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.find(part)
            if child is None:
                child = ET.SubElement(node, part)
            elif id(child) in leaves:
                raise TemplateError(f"{key}: {part} is both a value and an element")
            node = child
        element = ET.SubElement(node, leaf)
        element.text = _XML_ILLEGAL.sub("", _text(value))
        leaves.add(id(element))
    out: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return out
