"""The two levels of payer and how a turn finds its wallet.

- Level 1, ``platform``: the platform bills an app creator (``mozaiks_user_id``) for app-building
  workflows (``workflow`` such as ``app_generation``).  One wallet per creator, across their apps:
  ``plat:<mozaiks_user_id>``; it has no owning app, so turns of any of the creator's apps may charge it.
- Level 2, ``app_usage``: an app (``enterprise_id``) bills its end user (``platform_user_id``).  One
  wallet per (app, end user): ``app:<enterprise_id>:<platform_user_id>``, owned by the app (the gate
  refuses another app's turns on it).  Each charge is split into the creator's revenue share
  (``enterprise.creator_share_bps``, default 7000 = 70 %, rounded down to whole nanos) and the
  platform fee (the rest), so the two always sum to the charge exactly.

Resolution is a pure function of the turn, so the gate needs no lookup on the hot path.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from models.enums import PayerLevel
from models.wallet import DEFAULT_MAX_TURN_COST_NANOS, Enterprise, Wallet
from worker.errors import InvalidInput

#: default revenue share of the app creator, basis points (DESIGN.md: 70 % creator, 30 % platform)
DEFAULT_CREATOR_SHARE_BPS = 7000


def wallet_id_for(level: str, *, enterprise_id: str | None, payer_id: str) -> str:
    """The wallet id of a payer: ``plat:<payer_id>`` (level ``platform``, payer = the app creator's
    ``mozaiks_user_id``) or ``app:<enterprise_id>:<payer_id>`` (level ``app_usage``, payer = the end
    user's ``platform_user_id``).  Raises ValueError naming the argument."""
    if not payer_id or any(c.isspace() for c in payer_id) or ":" in payer_id:
        raise InvalidInput("payer_id", f"{payer_id!r} must be non-empty, without spaces or ':'")
    if level == PayerLevel.platform:
        return f"plat:{payer_id}"
    if level == PayerLevel.app_usage:
        if not enterprise_id or ":" in enterprise_id:
            raise InvalidInput("enterprise_id", f"{enterprise_id!r} is required for level 'app_usage' (no ':')")
        return f"app:{enterprise_id}:{payer_id}"
    raise InvalidInput("level", f"{level!r} is not 'platform' or 'app_usage'")


def split_charge(billed_nanos: int, creator_share_bps: int) -> tuple[int, int]:
    """``(creator_share_nanos, platform_fee_nanos)`` of a level-2 charge: the share rounded down to
    whole nanos, the fee the rest, so they sum to ``billed_nanos`` exactly."""
    share = billed_nanos * creator_share_bps // 10_000
    return share, billed_nanos - share


def gate_profile(session: Session, wallet: Wallet) -> dict[str, Any]:
    """What the gate needs to know about a wallet besides its balance (the keyword arguments of
    :meth:`worker.gate.gate.WalletGate.load_wallet`): mode, limit, block, owning app, payer level, the
    app's revenue share (bps), trial rule and per-turn cost limit (nano-USD), the trial tokens left
    (allowance − used), and whether reservations are required."""
    app = session.get(Enterprise, wallet.enterprise_id) if wallet.enterprise_id else None
    allowance = app.trial_token_allowance if app is not None else 0
    return {
        "mode": wallet.mode,
        "limited": wallet.limited,
        "blocked_reason": wallet.blocked_reason,
        "enterprise_id": wallet.enterprise_id,
        "level": wallet.level,
        "share_bps": app.creator_share_bps if app is not None else DEFAULT_CREATOR_SHARE_BPS,
        "trial_left": allowance - wallet.trial_tokens_used,
        "trial_then": app.trial_then if app is not None else "pause",
        "max_turn_cost_nanos": app.max_turn_cost_nanos if app is not None else DEFAULT_MAX_TURN_COST_NANOS,
        "reservations_required": reservations_required(wallet, app),
    }


def reservations_required(wallet: Wallet, app: Enterprise | None) -> bool:
    """Whether every charged turn of ``wallet`` needs a live reservation of its own: the wallet's
    own setting, else its app's (a platform wallet without an app: its own, default False)."""
    if wallet.reservations_required is not None:
        return wallet.reservations_required
    return bool(app is not None and app.reservations_required)
