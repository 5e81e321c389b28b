"""What ``/docs`` and ``/redoc`` say about a route's answers, written for the API's users.

The routes keep their status codes in ``responses=`` (:data:`api_stub.deps.ERROR_RESPONSES` and
their own); :func:`described` only adds the text the caller reads.  Internal names (the gate's
scripts, the outbox, the workers) stay out of it: ``tests/unit/test_api_docs.py`` checks every
text of the OpenAPI document against :data:`INTERNAL_WORDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    422: "Invalid input: `errors[].field` names each field at fault (`turns.3.prompt_tokens` in a batch). Nothing was done.",
    429: "Over your key's rate limit: nothing was done; retry after the `Retry-After` header's seconds.",
    502: "Stripe refused or failed the request. Nothing was charged.",
    503: "A service tollgate needs is unavailable right now: retry later (after `Retry-After` when given).",
}


def described(
    responses: Mapping[int | str, dict[str, Any]], notes: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses`` (FastAPI's ``responses=`` of a route: status → OpenAPI response object) with a
    ``description`` on each: ``notes[status]`` when given, else :data:`STATUS_TEXT`'s for an error
    status.  The statuses and any ``content`` are kept as they are.

    Raises KeyError for a note on a status the route does not answer (a note must not document a
    status that is not in ``responses``)."""
    notes = dict(notes or {})
    out: dict[int | str, dict[str, Any]] = {}
    for status, spec in responses.items():
        text = notes.pop(int(status), None) or STATUS_TEXT.get(int(status))
        out[status] = {**spec, "description": text} if text else dict(spec)
    if notes:
        raise KeyError(f"notes for statuses the route does not answer: {sorted(notes)}")
    return out
