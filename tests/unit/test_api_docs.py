"""What /docs and /redoc show is written for API users (issue 17): every operation of the OpenAPI
document has a summary, a description that says which keys may call it, a tag that has a
description, and a description on each parameter and each answer; every schema and every field of
it has a description; and no text names an internal (the gate's scripts, the outbox, the workers,
the databases, module paths).  The document is built in-process: no server, database or Redis."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, Iterator

import pytest

from api_stub.app import create_app

#: names of the implementation that an API user has no use for (matched as whole words, any case)
INTERNAL_WORDS = (
    "Lua",
    "EVALSHA",
    "XADD",
    "XREADGROUP",
    "outbox",
    "drain",
    "drained",
    "drains",
    "GateCore",
    "WalletGate",
    "the gate",
    "gate's",
    "Celery",
    "beat",
    "stream",
    "streams",
    "Redis",
    "Valkey",
    "PostgreSQL",
    "SQL",
    "Alembic",
    "thread pool",
    "event loop",
    "asyncio",
    "pipelined",
    "model_validate",
    "wallet_transaction",
    "usage_turn_key",
    "worker",
    "api_stub",
    "models.validation",
    "genai-prices",
    "sweep",
    "seed",
)
_INTERNAL = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(w) for w in INTERNAL_WORDS) + r")(?![\w-])", re.I)

#: FastAPI's own schemas of its default 422 answer (the API answers problem+json documents instead)
FASTAPI_SCHEMAS = {"HTTPValidationError", "ValidationError"}


def internal_words(text: str) -> list[str]:
    """The internal words :data:`INTERNAL_WORDS` found in ``text``, in order."""
    return [m.group(1) for m in _INTERNAL.finditer(text)]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app().openapi()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            yield f"{method.upper()} {path}", op


def texts(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``summary``, ``description`` and ``title`` string of an OpenAPI (sub)document, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("summary", "description") and isinstance(value, str):
                yield f"{where}.{key}", value
            else:
                yield from texts(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from texts(value, f"{where}[{i}]")


def test_the_detector_finds_internal_words_and_only_them():
    assert internal_words("settled by the drain, via the Outbox stream (XADD in Lua)") == [
        "drain",
        "Outbox",
        "stream",
        "XADD",
        "Lua",
    ]
    assert internal_words("the gate's balance; Celery beat; worker.ledger") == ["the gate", "Celery", "beat", "worker"]
    assert internal_words("tollgate streams nothing: `gate_balance_nanos`, upstream, streaming, redistribute") == [
        "streams"
    ]


def test_every_operation_has_a_summary_a_description_naming_the_keys_and_a_described_tag(spec):
    tags = {t["name"]: t.get("description", "") for t in spec["tags"]}
    assert all(len(d) > 20 for d in tags.values()), tags
    used = set()
    for name, op in operations(spec):
        summary, description = op.get("summary", ""), op.get("description", "")
        # FastAPI's default summary is the function's name in title case ("Record Turn"): not written
        assert summary and summary != op["operationId"].split("_v1_")[0].replace("_", " ").title(), name
        assert len(description) >= 80, name
        assert "**Key:**" in description or "No API key" in description, name
        assert len(op.get("tags", [])) == 1 and op["tags"][0] in tags, (name, op.get("tags"))
        used.add(op["tags"][0])
    assert used == set(tags)


def test_every_parameter_and_answer_is_described(spec):
    for name, op in operations(spec):
        for param in op.get("parameters", []):
            assert param.get("description"), (name, param["name"])
        for status, answer in op["responses"].items():
            default = "Successful Response" if status == "200" else HTTPStatus(int(status)).phrase
            assert answer.get("description") and answer["description"] != default, (name, status)


def test_every_schema_and_field_is_described(spec):
    schemas = spec["components"]["schemas"]
    for schema_name, schema in schemas.items():
        if schema_name in FASTAPI_SCHEMAS:
            continue
        assert schema.get("description"), schema_name
        for field, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{schema_name}.{field}"


def test_no_text_of_the_document_names_an_internal(spec):
    document = {k: v for k, v in spec.items() if k != "components"}
    document["schemas"] = {k: v for k, v in spec["components"]["schemas"].items() if k not in FASTAPI_SCHEMAS}
    document["securitySchemes"] = spec["components"].get("securitySchemes", {})
    found = [(where, internal_words(text)) for where, text in texts(document) if internal_words(text)]
    assert found == []


def test_every_error_answer_declares_the_problem_document(spec):
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for name, op in operations(spec):
        for status, answer in op["responses"].items():
            if int(status) >= 400:
                assert answer.get("content") == problem, (name, status)
        if "requestBody" in op:  # the body-size cap answers every route with a body
            assert "413" in op["responses"], name
    schemas = spec["components"]["schemas"]
    assert set(schemas["Problem"]["required"]) == {"title", "status", "detail"}
    assert schemas["ProblemField"]["required"] == ["field", "message"]
    assert not FASTAPI_SCHEMAS & set(schemas)  # FastAPI's own 422 body is never what the API answers


@pytest.mark.parametrize(
    ("operation", "statuses"),
    [
        ("POST /v1/turns", {"409", "429"}),  # a reservation held for another wallet; the key's rate limit
        ("POST /v1/turns/batch", {"409", "429"}),
        ("GET /v1/wallets/{wallet_id}", {"429"}),
        ("POST /v1/wallets/{wallet_id}/credits", {"409", "429", "503"}),  # 503: credit pending, retry
    ],
)
def test_the_statuses_a_route_really_answers_are_declared(spec, operation, statuses):
    ops = dict(operations(spec))
    assert statuses <= set(ops[operation]["responses"]), operation


def test_real_error_bodies_fit_the_declared_schema():
    from fastapi.testclient import TestClient

    from api_stub.api_docs import ProblemDocument

    client = TestClient(create_app())
    for method, url, status in (
        ("post", "/v1/turns", 401),  # no key: refused before anything is read
        ("get", "/v1/no-such-route", 404),
        ("put", "/v1/turns", 405),
    ):
        answer = client.request(method, url, json={})
        assert answer.status_code == status
        assert answer.headers["content-type"] == "application/problem+json"
        body = answer.json()
        assert set(body) <= set(ProblemDocument.model_fields)
        assert ProblemDocument.model_validate(body).status == status
