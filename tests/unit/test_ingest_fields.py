"""The IP, URL and consent-certificate field types: normalised, or refused with a code."""

import pytest
from lx_ingest.domain import normalise_lead
from lx_schemas.events import FieldSpec, FieldType

SPECS = [
    FieldSpec(name="ip_address", type=FieldType.IP),
    FieldSpec(name="landing_page", type=FieldType.URL, max_length=60),
    FieldSpec(name="consent", type=FieldType.CONSENT),
]
CERT = "0123456789abcdef0123456789abcdef01234567"


def one(field: str, value: object) -> object:
    lead, errors = normalise_lead(SPECS, {field: value})
    assert errors == [], errors
    assert lead is not None
    return lead.fields[field]


def code_of(field: str, value: object) -> str:
    lead, errors = normalise_lead(SPECS, {field: value})
    assert lead is None
    [(name, code)] = [(e.field, e.code) for e in errors]
    assert name == field
    return code


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        (" 192.0.2.1 ", "192.0.2.1"),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("::ffff:192.0.2.1", "::ffff:c000:201"),
    ],
)
def test_an_ip_is_kept_in_its_compressed_form(given: str, normalised: str) -> None:
    assert one("ip_address", given) == normalised


@pytest.mark.parametrize("bad", ["192.0.2.256", "192.0.2", "not an ip", "2001:db8:::1", 12])
def test_anything_but_an_ip_is_invalid_ip(bad: object) -> None:
    assert code_of("ip_address", bad) in {"invalid_ip"}


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("HTTPS://Example.COM/Quote?src=fb", "https://example.com/Quote?src=fb"),
        ("http://example.com", "http://example.com/"),
        ("https://bücher.example/a b", "https://xn--bcher-kva.example/a%20b"),
        ("https://example.com:443/x", "https://example.com/x"),
    ],
)
def test_a_url_is_normalised(given: str, normalised: str) -> None:
    assert one("landing_page", given) == normalised


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://example.com/file",
        "javascript:alert(1)",
        "example.com/no-scheme",
        "http://",
        "https://user:secret@example.com/",
        "https://exa mple.com/",
    ],
)
def test_a_url_that_is_not_http_with_a_host_is_invalid_url(bad: str) -> None:
    assert code_of("landing_page", bad) == "invalid_url"


def test_a_url_longer_than_the_field_allows_is_too_long_even_once_normalised() -> None:
    assert code_of("landing_page", "https://example.com/" + "a" * 60) == "too_long"
    # 30 characters as sent, 80 once the path is percent-encoded.
    assert code_of("landing_page", "https://example.com/" + "ü" * 10) == "too_long"


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        (f"https://cert.trustedform.com/{CERT}", f"https://cert.trustedform.com/{CERT}"),
        (f"HTTPS://CERT.TrustedForm.com/{CERT.upper()}/", f"https://cert.trustedform.com/{CERT}"),
        (f"http://cert.trustedform.com/{CERT}", f"https://cert.trustedform.com/{CERT}"),
        ("db6c6d47-7a4b-6a0a-2c7c-3b3a6c0f1f2a", "DB6C6D47-7A4B-6A0A-2C7C-3B3A6C0F1F2A"),
    ],
)
def test_a_consent_certificate_is_a_trustedform_url_or_a_leadid_token(
    given: str, normalised: str
) -> None:
    assert one("consent", given) == normalised


@pytest.mark.parametrize(
    "bad",
    [
        f"https://cert.trustedform.com/{CERT[:-1]}",  # 39 hex digits
        f"https://cert.trustedform.com/{CERT[:-1]}g",
        f"https://evil.example/{CERT}",
        f"https://cert.trustedform.com.evil.example/{CERT}",
        "db6c6d47-7a4b-6a0a-2c7c-3b3a6c0f1f2",  # 35 characters
        "db6c6d477a4b6a0a2c7c3b3a6c0f1f2a",  # no dashes
        "yes",
    ],
)
def test_anything_else_is_invalid_consent(bad: str) -> None:
    assert code_of("consent", bad) == "invalid_consent"
