"""One base error (worker.errors): every domain error derives from TollgateError, keeps its builtin
base, and carries the field it is about on the error, never only in its message text."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

from worker.errors import Conflict, InputError, InvalidInput, NotFound, TollgateError, Unavailable

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: every domain error: (module, class, builtin base it keeps, family, http_status)
ERRORS = [
    ("worker.gate.gate", "WrongEnterprise", LookupError, NotFound, 404),
    ("worker.gate.gate", "GateConfigError", RuntimeError, Conflict, 409),
    ("worker.gate.gate", "GateBatchError", RuntimeError, Unavailable, 503),
    ("worker.gate.gate", "UnknownWallet", LookupError, NotFound, 404),
    ("worker.gate.outbox", "BadEntry", ValueError, InputError, 422),
    ("worker.access.apikeys", "ApiKeyError", ValueError, InputError, 422),
    ("worker.ledger.accounts", "LedgerError", ValueError, InputError, 422),
    ("worker.ledger.accounts", "GatePending", RuntimeError, Unavailable, 503),
    ("worker.ledger.isolation", "IsolationError", ValueError, InputError, 422),
    ("worker.ledger.deadletter", "DeadLetterNotFound", LookupError, NotFound, 404),
    ("worker.billing.report", "ReportError", ValueError, InputError, 422),
    ("worker.billing.budgets", "BudgetError", ValueError, InputError, 422),
    ("worker.billing.stripe", "StripeBillingError", ValueError, InputError, 422),
    ("worker.billing.stripe", "StripeConfigError", RuntimeError, Unavailable, 503),
    ("worker.billing.stripe", "EventError", ValueError, InputError, 400),
    ("worker.billing.allowances", "AllowanceError", ValueError, InputError, 422),
    ("worker.billing.modes", "ModeError", ValueError, InputError, 422),
    ("worker.client.adapters", "AdapterError", ValueError, InputError, 422),
    ("worker.client.adapters", "UnknownModel", ValueError, InputError, 422),
    ("worker.events", "SignatureError", ValueError, InputError, 400),
    ("worker.pricing.meters", "UnknownMeter", LookupError, InputError, 422),
    ("worker.pricing.prices", "PricingError", ValueError, InputError, 422),
    ("worker.pricing.prices", "TurnLimitExceeded", ValueError, InputError, 422),
    ("worker.devtools.traces", "TraceError", ValueError, InputError, 422),
    ("worker.devtools.replay", "ReplayError", RuntimeError, TollgateError, 500),
    ("worker.errors", "InvalidInput", ValueError, InputError, 422),
    ("worker.chats.rollups", "UnknownChat", LookupError, NotFound, 404),
    ("worker.chats.lifecycle", "NotAWalletOfTheApp", LookupError, NotFound, 404),
    ("worker.chats.lifecycle", "WalletCannotPay", PermissionError, Conflict, 409),
    ("tasks.usage", "TurnRejected", ValueError, InputError, 422),
]


@pytest.mark.parametrize("module,name,builtin,family,status", ERRORS, ids=[e[1] for e in ERRORS])
def test_every_domain_error_derives_from_the_base_and_keeps_its_builtin(module, name, builtin, family, status):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, TollgateError)
    assert issubclass(cls, family)
    assert issubclass(cls, builtin)
    assert cls.http_status == status
    assert cls.exit_code == (2 if issubclass(cls, (InputError, NotFound, Conflict)) else 1)


def test_services_raise_no_bare_builtin_error_naming_a_field():
    """A field error is raised as a TollgateError carrying ``field`` (``raise ValueError("x: …")``
    would leave the field in the text only)."""
    import re

    bare = re.compile(r'raise (ValueError|LookupError|KeyError|PermissionError)\(f?"[A-Za-z_][\w.]*: ')
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in [*ROOT.joinpath("worker").rglob("*.py"), *ROOT.joinpath("tasks").rglob("*.py")]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert found == []


def test_no_error_class_in_worker_or_tasks_is_left_outside_the_base():
    """Every class in worker/ and tasks/ whose bases include an exception derives from TollgateError."""
    outside = []
    for path in [*ROOT.joinpath("worker").rglob("*.py"), *ROOT.joinpath("tasks").rglob("*.py")]:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.bases:
                cls = getattr(importlib.import_module(module), node.name, None)
                if isinstance(cls, type) and issubclass(cls, BaseException) and not issubclass(cls, TollgateError):
                    outside.append(f"{module}.{node.name}")
    assert outside == []


def test_the_field_is_carried_on_the_error_and_the_message_is_unchanged():
    from worker.billing.modes import ModeError
    from worker.gate.gate import UnknownWallet
    from worker.pricing.prices import TurnLimitExceeded
    from worker.validation import check_text

    with pytest.raises(InvalidInput) as bad:
        check_text("a b", "wallet_id")
    assert (bad.value.field, bad.value.http_status, bad.value.exit_code) == ("wallet_id", 422, 2)
    assert str(bad.value) == "wallet_id: contains whitespace (U+0020) at index 1"
    assert bad.value.reason == "contains whitespace (U+0020) at index 1"
    assert isinstance(bad.value, ValueError)

    lost = UnknownWallet("w-9")
    assert (lost.field, lost.http_status, lost.title, str(lost)) == (
        "wallet_id",
        404,
        "Unknown wallet",
        "unknown wallet 'w-9'",
    )
    assert lost.reason == "unknown wallet 'w-9'"
    limit = TurnLimitExceeded("quantity", "too many", index=3)
    assert (limit.field, limit.message, limit.index, str(limit)) == ("quantity", "too many", 3, "quantity: too many")
    # an instance may override its class's hints
    gone = ModeError("wallet_id: unknown wallet 'w'", field="wallet_id", http_status=404, title="Unknown wallet")
    assert (gone.http_status, gone.title, ModeError("x").http_status) == (404, "Unknown wallet", 422)


def test_services_name_the_field_on_the_error(db, redis_client, gate):
    """Errors raised by the services carry ``field`` (the message prefix is no longer the only place)."""
    from tests.committed import credit_wallet
    from worker.billing.report import ReportError, validate_period
    from worker.ledger.accounts import LedgerError, record_credit
    from worker.pricing.prices import PricingError, usd_to_nanos

    with pytest.raises(LedgerError) as bad:
        credit_wallet(gate, wallet_id="w 1", amount_nanos=5, idempotency_key="k")
    assert bad.value.field == "wallet_id"
    with pytest.raises(LedgerError) as bad:
        record_credit(None, wallet_id="w1", amount_nanos=0, idempotency_key="k")  # refused before any read
    assert bad.value.field == "amount_nanos"
    with pytest.raises(ReportError) as period:
        validate_period("2026-13")
    assert period.value.field == "period"
    with pytest.raises(PricingError) as usd:
        usd_to_nanos("abc")
    assert usd.value.field is None and str(usd.value) == "not a decimal USD amount: 'abc' (ASCII digits, e.g. 25.00)"


def test_one_gate_per_process_shared_by_the_api_the_tasks_and_the_cli(settings):
    """api_stub, the Celery tasks, the CLI and the in-process client all use worker.gate's process_gate;
    it is reset with cache_clear (tests, and a forked child does it itself)."""
    import os

    import worker
    from api_stub import deps
    from tasks import billing as billing_tasks
    from tasks import stripe as stripe_tasks
    from tasks import usage as usage_tasks
    from worker.client.transports import InProcessTransport
    from worker.gate.gate import process_gate
    from worker.gate.outbox import celery_kicker

    process_gate.cache_clear()
    gate = process_gate()
    assert gate is process_gate() is deps.get_gate() is worker.process_gate()
    assert usage_tasks.process_gate is billing_tasks.process_gate is stripe_tasks.process_gate is process_gate
    assert InProcessTransport().gate is gate
    assert gate.kicker is celery_kicker  # drain kicks without a result, as the API's own copy did
    process_gate.cache_clear()
    assert process_gate() is not gate
    pid = os.fork()
    if pid == 0:  # the child's first call builds its own gate
        os._exit(0 if process_gate.cache_info().currsize == 0 else 1)
    assert os.waitpid(pid, 0)[1] == 0


def test_a_domain_error_a_route_lets_through_is_one_problem_document_from_its_hints():
    """api_stub.deps.install_error_handlers maps any TollgateError to problem+json: its http_status,
    title, detail (the message) and errors[].field from exc.field, never parsed from the text."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api_stub.deps import install_error_handlers
    from worker.gate.gate import GateBatchError, UnknownWallet
    from worker.ledger.accounts import LedgerError

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/lost")
    def lost():
        raise UnknownWallet("w-1")

    @app.get("/partly")
    def partly():
        raise GateBatchError(RuntimeError("down"), [None, None])

    @app.get("/used")
    def used():
        # the text names another field first: the document names the error's field all the same
        raise LedgerError("amount_nanos: 5 was already used", field="idempotency_key", http_status=409)

    @app.get("/n/{n}")
    def n(n: int):
        return n

    client = TestClient(app)
    r = client.get("/lost")
    assert (r.status_code, r.headers["content-type"]) == (404, "application/problem+json")
    assert r.json() == {
        "type": "about:blank",
        "title": "Unknown wallet",
        "status": 404,
        "detail": "unknown wallet 'w-1'",
        "errors": [{"field": "wallet_id", "message": "unknown wallet 'w-1'"}],
    }
    r = client.get("/partly")
    assert r.status_code == 503
    assert r.json() == {
        "type": "about:blank",
        "title": "Partly recorded",
        "status": 503,
        "detail": "2 of 2 turn(s) not recorded: down",
    }
    r = client.get("/used")
    assert r.status_code == 409
    assert r.json()["errors"] == [{"field": "idempotency_key", "message": "amount_nanos: 5 was already used"}]
    r = client.get("/n/x")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "n"


def test_a_domain_error_a_command_lets_through_exits_its_code_naming_the_flag(cli):
    """worker.cli: one place maps a TollgateError to an exit code and its field to the command
    group's flag or ARGUMENT (commands no longer catch and rename by hand)."""
    mode = cli("app", "mode", "acme", "nonsense")
    assert mode.returncode == 2
    assert mode.stderr.strip() == ("error: MODE: 'nonsense' is not one of production, development, trial, track_only")
    lost = cli("deadletter", "discard", "0:1-0")
    assert lost.returncode == 2
    assert lost.stderr.strip() == "error: OUTBOX_ID: no open dead letter '0:1-0'"
    by = cli("analytics", "acme", "--by", "year")
    assert by.returncode == 2
    assert by.stderr.strip() == "error: --by: 'year' is not one of day, week, month"


def test_flag_message_reads_the_field_from_the_error_not_its_text():
    from worker.billing.modes import ModeError
    from worker.cli.common import flag_message, flags_of

    # a message that starts with another field's name is not renamed by it
    exc = ModeError("wallet_id: is not a mode", field="mode")
    assert flag_message(exc, flags_of("app")) == "wallet_id: is not a mode"
    assert (
        flag_message(ModeError("mode: 'x' is not a mode", field="mode"), flags_of("app")) == "MODE: 'x' is not a mode"
    )
    assert flags_of("budget")["wallet_id"] == "--wallet" and flags_of("wallet")["wallet_id"] == "WALLET_ID"
