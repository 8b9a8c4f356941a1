"""The order eligible buyers are offered a lead in, per the campaign's distribution.

- waterfall: priority (lower first), then the higher price;
- highest_price: the higher price, then priority;
- weighted: a weighted random order, seeded by the lead id, so a replay of the same
  lead gives the same order (Efraimidis-Spirakis keys ``u ** (1 / weight)``, with
  ``u`` drawn from a hash of the lead and the buyer);
- round_robin: the waterfall order rotated by a per-campaign counter.

Ties end on the buyer id, so an order never depends on how the input was listed.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from lx_schemas.rules import DistributionMode


@dataclass(frozen=True)
class Candidate:
    """An eligible buyer as ordering sees it; ``price`` is its offer price now."""

    buyer_id: uuid.UUID
    priority: int
    price: Decimal
    weight: int = 100


def waterfall(candidates: Sequence[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (c.priority, -c.price, str(c.buyer_id)))


def highest_price(candidates: Sequence[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (-c.price, c.priority, str(c.buyer_id)))


def _uniform(lead_id: uuid.UUID, buyer_id: uuid.UUID) -> float:
    digest = hashlib.sha256(f"{lead_id}:{buyer_id}".encode()).digest()
    # 53 bits in the open interval (0, 1): a float's whole mantissa, never 0.
    return (int.from_bytes(digest[:7], "big") >> 3 | 1) / 2**53


def weighted(candidates: Sequence[Candidate], lead_id: uuid.UUID) -> list[Candidate]:
    # log(u) / w orders as u ** (1 / w) does, without underflow for large weights.
    def key(c: Candidate) -> tuple[float, str]:
        return (-math.log(_uniform(lead_id, c.buyer_id)) / c.weight, str(c.buyer_id))

    return sorted(candidates, key=key)


def round_robin(candidates: Sequence[Candidate], counter: int) -> list[Candidate]:
    ordered = waterfall(candidates)
    if not ordered:
        return ordered
    shift = counter % len(ordered)
    return ordered[shift:] + ordered[:shift]


def order(
    candidates: Sequence[Candidate],
    mode: DistributionMode,
    *,
    lead_id: uuid.UUID,
    counter: int = 0,
) -> list[Candidate]:
    """``candidates`` in the order they are offered the lead."""
    match mode:
        case DistributionMode.HIGHEST_PRICE:
            return highest_price(candidates)
        case DistributionMode.WEIGHTED:
            return weighted(candidates, lead_id)
        case DistributionMode.ROUND_ROBIN:
            return round_robin(candidates, counter)
        case _:
            return waterfall(candidates)
