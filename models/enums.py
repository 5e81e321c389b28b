"""Enumerations stored in ``str`` columns (``VARCHAR``, no PostgreSQL enum type) and used across families."""

from enum import StrEnum


# BillingMode (the docstring is /docs' text): trial counts ``wallet.trial_tokens_used`` against the
# app's allowance and then follows ``enterprise.trial_then``; track_only's fee is
# ``enterprise.flat_fee_nanos``, charged at each UTC month start.
class BillingMode(StrEnum):
    """How a wallet pays for turns (set per app, overridable per wallet):

    - `production`: every turn is debited;
    - `development`: turns are recorded but never debited nor denied;
    - `trial`: turns are free while the wallet's trial token allowance lasts, then billed as in
      production or paused, as the app is configured;
    - `track_only`: turns are recorded for analytics, never debited nor denied; the app pays a
      flat monthly fee instead.
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
    """A ledger entry's direction: `credit` (money in) or `debit` (recorded turns)."""

    credit = "credit"
    debit = "debit"


class ChatStatus(StrEnum):
    """A chat's status: `active`, `paused` (stopped until its wallet can pay), `completed` (ended)."""

    active = "active"
    paused = "paused"
    completed = "completed"


class ApiRole(StrEnum):
    """What an API key may see: ``owner`` one app's billing, ``end_user`` one wallet and its chats,
    ``admin`` aggregates across apps (no end user's detail)."""

    owner = "owner"
    end_user = "end_user"
    admin = "admin"


# DecisionAction: ``Decision.action`` and ``usage_event.action``
class DecisionAction(StrEnum):
    """What to do after a turn: `continue`, or `pause` (stop the chat until its wallet is credited)."""

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
