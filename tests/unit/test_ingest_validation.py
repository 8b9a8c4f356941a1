from lx_ingest.domain import normalise_lead
from lx_schemas.events import FieldSpec, FieldType

SPECS = [
    FieldSpec(name="email", type=FieldType.EMAIL, required=True, pii=True),
    FieldSpec(name="phone", type=FieldType.PHONE, required=True, pii=True),
    FieldSpec(name="state", type=FieldType.US_STATE, required=True),
    FieldSpec(name="zip", type=FieldType.ZIP),
    FieldSpec(name="loan_amount", type=FieldType.INTEGER),
    FieldSpec(name="rate", type=FieldType.DECIMAL),
    FieldSpec(name="homeowner", type=FieldType.BOOLEAN),
    FieldSpec(name="dob", type=FieldType.DATE, pii=True),
    FieldSpec(name="purpose", type=FieldType.ENUM, options=("purchase", "refinance")),
    FieldSpec(name="note", type=FieldType.TEXT, max_length=5),
]
GOOD = {
    "email": "Ada@Example.COM",
    "phone": "(415) 555-0132",
    "state": "ca",
    "zip": "94105-1234",
    "loan_amount": "250000",
    "rate": 6.125,
    "homeowner": "yes",
    "dob": "1990-12-10",
    "purpose": "Refinance",
    "note": "hi",
}


def test_a_good_lead_is_normalised_and_its_pii_kept_apart() -> None:
    lead, errors = normalise_lead(SPECS, GOOD)
    assert errors == []
    assert lead is not None
    assert lead.pii == {"email": "ada@example.com", "phone": "+14155550132", "dob": "1990-12-10"}
    assert lead.fields == {
        "state": "CA",
        "zip": "94105",
        "loan_amount": 250000,
        "rate": "6.125",
        "homeowner": True,
        "purpose": "refinance",
        "note": "hi",
    }


def test_every_bad_field_is_reported_with_its_name_and_code() -> None:
    bad = {
        "email": "not-an-email",
        "phone": "123",
        "state": "XX",
        "zip": "9410",
        "loan_amount": "12.5",
        "rate": "abc",
        "homeowner": "maybe",
        "dob": "12/10/1990",
        "purpose": "lease",
        "note": "too long",
        "colour": "red",
    }
    lead, errors = normalise_lead(SPECS, bad)
    assert lead is None
    assert {(e.field, e.code) for e in errors} == {
        ("email", "invalid_email"),
        ("phone", "invalid_phone"),
        ("state", "invalid_state"),
        ("zip", "invalid_zip"),
        ("loan_amount", "wrong_type"),
        ("rate", "wrong_type"),
        ("homeowner", "wrong_type"),
        ("dob", "invalid_date"),
        ("purpose", "not_an_option"),
        ("note", "too_long"),
        ("colour", "unknown_field"),
    }


def test_missing_required_fields_are_named() -> None:
    _, errors = normalise_lead(SPECS, {"zip": "94105"})
    assert [(e.field, e.code) for e in errors] == [
        ("email", "required"),
        ("phone", "required"),
        ("state", "required"),
    ]


def test_booleans_are_not_integers_and_decimals_never_become_floats() -> None:
    lead, errors = normalise_lead(SPECS, {**GOOD, "loan_amount": True, "rate": "0.1"})
    assert [(e.field, e.code) for e in errors] == [("loan_amount", "wrong_type")]
    lead, _ = normalise_lead(SPECS, {**GOOD, "rate": "0.10"})
    assert lead is not None and lead.fields["rate"] == "0.10"
