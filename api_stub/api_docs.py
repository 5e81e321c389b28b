"""What ``/docs`` and ``/redoc`` say about a route's answers, written for the API's users.

The routes keep their status codes in ``responses=`` (:data:`api_stub.deps.ERROR_RESPONSES` and
their own); :func:`described` adds the text the caller reads and the error body's schema
(:class:`ProblemDocument`, ``application/problem+json``), and :func:`install_problem_schema` puts that
schema in the document and declares the ``413`` every request body may get.  Internal names (the
gate's scripts, the outbox, the workers) stay out of it: ``tests/unit/test_api_docs.py`` checks every
text of the OpenAPI document against ``INTERNAL_WORDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

#: the media type of every error answer (RFC 9457)
PROBLEM_MEDIA_TYPE = "application/problem+json"
#: the error body of every error answer, as an OpenAPI ``content`` object
PROBLEM_CONTENT: dict[str, Any] = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}

#: what an error status means for the caller, unless the route says more (Markdown)
STATUS_TEXT: dict[int, str] = {
    400: "The request is malformed.",
    401: ("No API key, or an unknown or revoked one: send `Authorization: Bearer tg_…`. Nothing was done."),
    403: "Your key's role may not do this, or the input names another app. Nothing was done.",
    404: (
        "Not found, or outside your key's scope (another app's ids answer the same 404); "
        "`errors[].field` names the id. Nothing was done."
    ),
    409: "The request conflicts with the resource's current state; `detail` says why. Nothing was done.",
    413: "The request body is larger than the server accepts (1 MiB unless configured). Nothing was done.",
    422: "Invalid input: `errors[].field` names each field at fault (`turns.3.prompt_tokens` in a batch). Nothing was done.",
    429: "Over your key's rate limit: nothing was done; retry after the `Retry-After` header's seconds.",
    502: "Stripe refused or failed the request. Nothing was charged.",
    503: "A service tollgate needs is unavailable right now: retry later (after `Retry-After` when given).",
}


class ProblemField(BaseModel):
    """One input at fault in an error answer."""

    model_config = ConfigDict(title="ProblemField")

    field: str = Field(
        description=(
            "The input at fault: a body field (`amount_nanos`; in a batch `turns.3.prompt_tokens`), a "
            "path or query parameter (`wallet_id`, `period`), or `body` for the body as a whole."
        )
    )
    message: str = Field(description="What is wrong with it.")


class ProblemDocument(BaseModel):
    """Every error answer (status 4xx or 5xx) is a problem document (RFC 9457), media type
    `application/problem+json`. Nothing was done when one is answered, unless its `detail` says otherwise."""

    model_config = ConfigDict(title="Problem")

    type: str = Field("about:blank", description="Always `about:blank`: the status and `title` say what happened.")
    title: str = Field(description="A short, fixed summary of the kind of error (`Invalid request`, `Unauthorized`).")
    status: int = Field(description="The HTTP status code, repeated.")
    detail: str = Field(description="What went wrong with this request, for a person to read.")
    errors: list[ProblemField] | None = Field(
        None, description="The inputs at fault, when the error is about named inputs (422, some 403/404/409)."
    )


def problem_schemas() -> dict[str, dict[str, Any]]:
    """The OpenAPI component schemas of :class:`ProblemDocument`: ``Problem`` and ``ProblemField``."""
    schema = ProblemDocument.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = schema.pop("$defs", {})
    return {"Problem": schema, **nested}


def install_problem_schema(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe error bodies: the ``Problem`` schemas in its components, a
    ``413`` (the body-size cap, :mod:`api_stub.body_limit`) on every operation with a request body,
    and FastAPI's own 422 schemas (``HTTPValidationError``) dropped when no answer refers to them
    (every route's 422 is a problem document)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = build()
        for methods in spec.get("paths", {}).values():
            for op in methods.values():
                if "requestBody" in op:
                    op["responses"].setdefault("413", described({413: {}})[413])
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(problem_schemas())
        if "HTTPValidationError" not in str(spec.get("paths")):
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def described(
    responses: Mapping[int | str, dict[str, Any]], notes: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses`` (FastAPI's ``responses=`` of a route: status → OpenAPI response object) with a
    ``description`` on each: ``notes[status]`` when given, else :data:`STATUS_TEXT`'s for an error
    status; an error status (≥ 400) without ``content`` gets :data:`PROBLEM_CONTENT`.  The statuses
    and any ``content`` given are kept as they are.

    Raises KeyError for a note on a status the route does not answer (a note must not document a
    status that is not in ``responses``)."""
    notes = dict(notes or {})
    out: dict[int | str, dict[str, Any]] = {}
    for status, spec in responses.items():
        text = notes.pop(int(status), None) or STATUS_TEXT.get(int(status))
        out[status] = {**spec, "description": text} if text else dict(spec)
        if int(status) >= 400 and "content" not in spec:
            out[status]["content"] = PROBLEM_CONTENT
    if notes:
        raise KeyError(f"notes for statuses the route does not answer: {sorted(notes)}")
    return out
