"""Non-LLM meters: emails sent, storage held and function invocations, priced from a table and
recorded through the same gate, outbox and ledger as LLM turns (a ``TurnIn`` with ``meter`` and
``quantity``; ``usage_event.meter`` / ``quantity`` keep them apart in reports).

Default prices are the seed's (the Mozaiks token manager's non-LLM rates):

=================  =================  ===============  ======================================  ===================
meter              unit of quantity   nanos per unit   seed price                              max per turn
=================  =================  ===============  ======================================  ===================
emails             one email          100,000          $0.10 per 1,000 emails                  1,000,000 ($100)
storage_gb_month   one MB-month       23,000           $0.023 per GB-month (1 GB = 1,000 MB)   1,000,000,000 (1 PB-month, $23,000)
function_calls     one invocation     200              $0.20 per 1M invocations                1,000,000,000 ($200)
=================  =================  ===============  ======================================  ===================

Units are chosen so every price is a whole number of nanos: the cost of ``quantity`` units is
``quantity × nanos_per_unit`` exactly, no rounding.  A turn above its meter's ``max_quantity`` is
refused (:class:`~worker.pricing.prices.TurnLimitExceeded` naming ``quantity``; HTTP 422), whatever the
wallet holds: a quantity that large is a client's bug, not usage.  The app's
``max_turn_cost_nanos`` bounds the cost of every turn as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import InputError, InvalidInput
from worker.pricing.prices import TurnLimitExceeded, TurnPrice

#: provider recorded for non-LLM meters
METER_PROVIDER = "tollgate"


@dataclass(frozen=True, slots=True)
class MeterPrice:
    """The price of one unit of a non-LLM meter, nano-USD, and the unit's name."""

    meter: str
    unit: str
    nanos_per_unit: int
    source: str
    #: the most units one turn may record (more is refused, naming ``quantity``)
    max_quantity: int


METERS: dict[str, MeterPrice] = {
    "emails": MeterPrice("emails", "email", 100_000, "seed: $0.10 per 1,000 emails", 1_000_000),
    "storage_gb_month": MeterPrice("storage_gb_month", "MB-month", 23_000, "seed: $0.023 per GB-month", 1_000_000_000),
    "function_calls": MeterPrice("function_calls", "invocation", 200, "seed: $0.20 per 1M invocations", 1_000_000_000),
}


class UnknownMeter(InputError, LookupError):
    """A meter name that is not in :data:`METERS`."""

    title = "Unknown meter"


def meter_price(meter: str, quantity: int) -> TurnPrice:
    """Price ``quantity`` units of ``meter``: a :class:`~worker.pricing.prices.TurnPrice` whose
    ``cost_nanos = quantity × nanos_per_unit`` (token rates 0, model = the meter's name, provider
    ``tollgate``).  Raises :class:`UnknownMeter` (names the meter), ValueError for a negative quantity,
    :class:`~worker.pricing.prices.TurnLimitExceeded` (``quantity``) above the meter's ``max_quantity``."""
    price = METERS.get(meter)
    if price is None:
        raise UnknownMeter(f"meter: {meter!r} is not one of {', '.join(METERS)}", field="meter")
    if not isinstance(quantity, int) or quantity < 0:
        raise InvalidInput("quantity", f"{quantity!r} is not an integer >= 0")
    if quantity > price.max_quantity:
        raise TurnLimitExceeded(
            "quantity",
            f"{quantity:,} {price.unit}s exceed the {meter} meter's maximum of {price.max_quantity:,} per turn",
        )
    return TurnPrice(quantity * price.nanos_per_unit, 0, 0, 0, meter, METER_PROVIDER)
