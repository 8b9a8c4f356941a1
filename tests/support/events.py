"""Event factories the integration tests share."""

from __future__ import annotations

import uuid
from decimal import Decimal

from lx_schemas import derived_id
from lx_schemas import events as ev
from lx_schemas.rules import Payout


def routed(buyer: ev.BuyerState, account_id: uuid.UUID) -> ev.LeadRouted:
    """A routing decision offering a new lead (no PII: no key vault needed) to ``buyer``."""
    lead_id = uuid.uuid4()
    return ev.LeadRouted.new(
        account_id=account_id,
        correlation_id=lead_id,
        producer="test",
        payload=ev.LeadRoutedPayload(
            lead_id=lead_id,
            campaign_id=buyer.campaign_id,
            source_id=uuid.uuid4(),
            buyer_id=buyer.buyer_id,
            attempt=1,
            delivery_id=derived_id("delivery", lead_id, buyer.buyer_id, 1),
            price=buyer.price,
            payout=Payout(fixed=Decimal("0.00")),
            lead=ev.LeadContent(fields={"state": "CA", "zip": "94105"}),
        ),
    )
