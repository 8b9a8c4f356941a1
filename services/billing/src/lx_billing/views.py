"""An invoice as operators read it: JSON, CSV and an HTML page."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from decimal import Decimal
from html import escape
from typing import Any

from lx_schemas import events as ev
from lx_schemas.envelope import Frozen

from lx_billing import domain


class InvoiceLineView(Frozen):
    line_no: int
    kind: ev.InvoiceLineKind
    description: str
    quantity: int
    unit_price: Decimal | None
    amount: Decimal
    buyer_id: uuid.UUID | None
    reference: str | None


class InvoiceView(Frozen):
    """``totals``: each kind's sum, ``platform_fees`` (plan fee and overage),
    ``amount_due`` (fees less payments: owed to the platform) and ``net_lead_charges``
    (buyers' charges less returns: the account's own, shown for reconciliation)."""

    invoice_id: uuid.UUID
    account_id: uuid.UUID
    period: str
    period_start: dt.date
    period_end: dt.date
    plan_id: uuid.UUID | None
    status: str
    issued_at: dt.datetime
    paid_at: dt.datetime | None = None
    payment_id: uuid.UUID | None = None
    voided_at: dt.datetime | None = None
    void_reason: str | None = None
    lines: tuple[InvoiceLineView, ...]
    totals: dict[str, Decimal]


def invoice_view(row: dict[str, Any]) -> InvoiceView:
    lines = tuple(
        InvoiceLineView(**{k: line[k] for k in InvoiceLineView.model_fields})
        for line in row["lines"]
    )
    as_lines = [
        ev.InvoiceLine(
            kind=line.kind,
            description=line.description,
            quantity=line.quantity,
            unit_price=line.unit_price,
            amount=line.amount,
        )
        for line in lines
    ]
    return InvoiceView(
        invoice_id=row["invoice_id"],
        account_id=row["account_id"],
        period=row["period_start"].strftime("%Y-%m"),
        period_start=row["period_start"],
        period_end=row["period_end"],
        plan_id=row["plan_id"],
        status=row["status"],
        issued_at=row["issued_at"],
        paid_at=row.get("paid_at"),
        payment_id=row.get("payment_id"),
        voided_at=row.get("voided_at"),
        void_reason=row.get("void_reason"),
        lines=lines,
        totals=domain.invoice_totals(as_lines),
    )


CSV_COLUMNS = (
    "line_no",
    "kind",
    "description",
    "buyer_id",
    "reference",
    "quantity",
    "unit_price",
    "amount",
)


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    # A cell a spreadsheet would run as a formula is quoted as text (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


def invoice_csv(view: InvoiceView) -> str:
    """One row per line, then one per total (``kind`` = ``total``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in view.lines:
        row = line.model_dump(mode="json")
        writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
    for name, amount in view.totals.items():
        writer.writerow(["", "total", name, "", "", "", "", str(amount)])
    return out.getvalue()


def invoice_html(view: InvoiceView) -> str:
    """A printable page; every value escaped (descriptions and references are operators'
    words)."""

    def e(value: object) -> str:
        return escape("" if value is None else str(value), quote=True)

    rows = "\n".join(
        "<tr>"
        f"<td>{e(line.line_no)}</td><td>{e(line.kind.value)}</td>"
        f"<td>{e(line.description)}</td><td>{e(line.reference)}</td>"
        f'<td class="n">{e(line.quantity)}</td><td class="n">{e(line.unit_price)}</td>'
        f'<td class="n">{e(line.amount)}</td>'
        "</tr>"
        for line in view.lines
    )
    totals = "\n".join(
        f'<tr><th colspan="6">{e(name.replace("_", " "))}</th><td class="n">{e(v)}</td></tr>'
        for name, v in view.totals.items()
    )
    title = f"Invoice {e(view.invoice_id)}"
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}"
        ".n{text-align:right}</style></head><body>\n"
        f"<h1>{title}</h1>\n"
        f"<p>Account {e(view.account_id)}, period {e(view.period)} (UTC), status "
        f"<strong>{e(view.status)}</strong>, issued {e(view.issued_at.isoformat())}</p>\n"
        "<table><thead><tr><th>#</th><th>kind</th><th>description</th><th>reference</th>"
        '<th class="n">quantity</th><th class="n">unit price</th><th class="n">amount (USD)'
        "</th></tr></thead>\n"
        f"<tbody>\n{rows}\n</tbody>\n<tfoot>\n{totals}\n</tfoot></table>\n"
        "</body></html>\n"
    )
