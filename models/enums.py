"""Enumerations stored in ``str`` columns (``VARCHAR``, no PostgreSQL enum type) and used across families."""

from enum import StrEnum


class BillingMode(StrEnum):
    """How a wallet pays for turns (set per app, overridable per wallet):

    - ``production``: every turn is debited;
    - ``development``: turns are recorded, marked non-billable, never debited nor blocked;
    - ``trial``: turns are free while the wallet's trial token allowance lasts (``trial_tokens_used``),
      then billed as in production or paused (the app's ``trial_then``);
    - ``track_only``: self-hosted apps: turns are recorded for analytics, never debited nor blocked;
      the app pays a flat monthly fee instead (``enterprise.flat_fee_nanos``).
    """

    production = "production"
    development = "development"
    trial = "trial"
    track_only = "track_only"


class TrialThen(StrEnum):
    """What a trial wallet does once its token allowance is used up."""

    bill = "bill"
    pause = "pause"


class ConnectionState(StrEnum):
    """A chat's connection as the orchestrator sees it: ``connected`` (turns flow), ``paused``
    (stopped, waiting for funds or a budget), ``resumable`` (paused, and the wallet can pay again),
    ``ended`` (finalized)."""

    connected = "connected"
    paused = "paused"
    resumable = "resumable"
    ended = "ended"


class PayerLevel(StrEnum):
    """Who pays: ``platform`` (the app creator, for building apps) or ``app_usage`` (an app's end user)."""

    platform = "platform"
    app_usage = "app_usage"


class TransactionKind(StrEnum):
    """Direction of a ledger entry."""

    credit = "credit"
    debit = "debit"


class ChatStatus(StrEnum):
    """Lifecycle of a chat session."""

    active = "active"
    paused = "paused"
    completed = "completed"


class ApiRole(StrEnum):
    """What an API key may see: ``owner`` one app's billing, ``end_user`` one wallet and its chats,
    ``admin`` aggregates across apps (no end user's detail)."""

    owner = "owner"
    end_user = "end_user"
    admin = "admin"


class DecisionAction(StrEnum):
    """What the gate tells the orchestrator after a turn (``Decision.action``, ``usage_event.action``):
    ``continue``, or ``pause`` (the chat must stop until the wallet is credited)."""

    continue_ = "continue"
    pause = "pause"


class Meter(StrEnum):
    """What a turn records (``TurnIn.meter``, ``usage_event.meter``): ``llm`` (tokens of an LLM
    response), or a non-LLM meter of ``worker.pricing.meters.METERS`` counting a ``quantity``:
    ``emails`` (emails sent), ``storage_gb_month`` (MB-months stored), ``function_calls`` (invocations)."""

    llm = "llm"
    emails = "emails"
    storage_gb_month = "storage_gb_month"
    function_calls = "function_calls"


class DeadLetterStatus(StrEnum):
    """Where a dead letter (``dead_letter.status``) stands: ``open`` (kept, waiting for an operator),
    ``retried`` (persisted by a retry) or ``discarded`` (given up, its charge refunded)."""

    open = "open"
    retried = "retried"
    discarded = "discarded"
