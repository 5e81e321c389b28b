"""Records as families (``models/``): one shape per record, shared by the gate, the ledger and the API."""

from __future__ import annotations

from tests.unit.test_gate import client, kicked, wg  # noqa: F401  (fixtures)
from models.wallet import ReservationPublic


def test_the_gate_answers_a_reservation_with_the_api_shape(wg):
    """``WalletGate.reserve`` returns the API's ``ReservationPublic`` itself (no dataclass copied
    field by field into it), and its JSON is the body ``POST /v1/wallets/{id}/reservations`` sends."""
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    hold = wg.reserve("w1", 6_000_000, reservation_id="r1")
    assert type(hold) is ReservationPublic
    assert hold.model_dump() == {"reservation_id": "r1", "wallet_id": "w1", "granted": True, "amount_nanos": 6_000_000,
                                 "balance_nanos": 10_000_000, "held_nanos": 6_000_000, "duplicate": False}
    again = wg.reserve("w1", 6_000_000, reservation_id="r1")
    assert type(again) is ReservationPublic
    assert (again.granted, again.duplicate, again.held_nanos) == (True, True, 6_000_000)
