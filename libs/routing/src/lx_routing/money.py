"""What the source earns on a sale, and whether the buyer's price leaves the margin."""

from __future__ import annotations

from decimal import Decimal

from lx_schemas.rules import Margin, Payout

CENT = Decimal("0.01")


def margin_for(margin: Margin, price: Decimal) -> Decimal:
    """The least the platform keeps on a sale at ``price``."""
    return margin.fixed + (price * margin.percent / 100).quantize(CENT)


def source_payout(payout: Payout, margin: Margin, price: Decimal) -> Decimal | None:
    """The source's payout on a sale at ``price``, or None when ``price`` does not cover
    that payout plus the margin (the buyer is then not offered the lead)."""
    earned = payout.for_price(price)
    if price - earned < margin_for(margin, price):
        return None
    return earned


def covers(price: Decimal, promised: Decimal, margin: Margin) -> bool:
    """Whether a sale at ``price`` still pays a ``promised`` fixed payout and the margin."""
    return price - promised >= margin_for(margin, price)
