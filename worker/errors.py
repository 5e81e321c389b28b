"""One base error for every domain error of tollgate, carrying the field it is about.

Every error class of ``worker/`` and ``tasks/`` derives from :class:`TollgateError`, keeping its name
and, where callers catch it so, its builtin base (``class LedgerError(InputError, ValueError)``).
An error carries:

- ``field``: the input at fault (``"wallet_id"``, ``"turns.3.prompt_tokens"``, ``"Stripe-Signature"``)
  or None.  It is set where the error is raised and never parsed back out of the message;
- ``http_status``: the HTTP status the API answers for it (a hint; a route may answer otherwise,
  e.g. 409 for a wallet the gate lost).  Named ``http_status``, not ``status``, because
  ``WebhookError.status`` is the status a receiver answered;
- ``title``: the short, stable title of the problem document;
- ``exit_code``: what the ``tollgate`` command exits with (2: bad input or usage, 1: otherwise);
- the message (``str(exc)``): human text, for a field error ``"<field>: <why>"``.

The families and their hints:

=================  ======  =====================================================================
class              status  for
=================  ======  =====================================================================
InputError         422     a value refused (names the field); nothing changed
NotFound           404     an id that names nothing (or nothing this caller may see)
Conflict           409     the request clashes with the current state (a key used for another
                           entry, a wallet whose mode takes no reservations)
Forbidden          403     the caller may never do this
Unavailable        503     a dependency cannot answer now; retrying later may succeed
=================  ======  =====================================================================

Money refusals are not errors: a denied turn is a ``Decision`` (accepted False, HTTP 200) and a
refused reservation is a ``models.wallet.ReservationPublic`` with ``granted`` False.  The API maps these errors to
``application/problem+json`` in one place (``api_stub.deps.install_error_handlers``) and the CLI to
exit codes in one place (``worker.cli.common``).

This module imports nothing of ours (root layer), so that ``models``-free code, the client and
the Celery result backend can all name these classes.
"""

from __future__ import annotations

from typing import Any


class TollgateError(Exception):
    """Base of every tollgate domain error.

    ``TollgateError(message, *, field=None, http_status=None, title=None)``: ``message`` is human
    text (``str(exc)``); ``field`` the input at fault or None; ``http_status`` and ``title`` override
    the class's hints for this instance (e.g. a ``ModeError`` about an unknown wallet is 404).
    """

    http_status: int = 500
    title: str = "Internal error"
    exit_code: int = 1

    def __init_subclass__(
        cls,
        *,
        http_status: int | None = None,
        title: str | None = None,
        exit_code: int | None = None,
        **kwargs: Any,
    ) -> None:
        """A family's hints given as class keywords, once:
        ``class NotFound(TollgateError, http_status=404, title="Not Found", exit_code=2)``; a subclass
        that gives none keeps its base's (Python's ``__init_subclass__``, PEP 487)."""
        super().__init_subclass__(**kwargs)
        if http_status is not None:
            cls.http_status = http_status
        if title is not None:
            cls.title = title
        if exit_code is not None:
            cls.exit_code = exit_code

    def __init__(
        self, message: str = "", *, field: str | None = None, http_status: int | None = None, title: str | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        if http_status is not None:
            self.http_status = http_status
        if title is not None:
            self.title = title

    @property
    def reason(self) -> str:
        """The message without its ``"<field>: "`` prefix (the message itself when there is none):
        what ``errors[].message`` of a problem document says."""
        text = str(self)
        if self.field and text.startswith(f"{self.field}: "):
            return text[len(self.field) + 2 :]
        return text


class InputError(TollgateError, http_status=422, title="Invalid request", exit_code=2):
    """A value refused at the edge or by a service; names the field; nothing changed.  HTTP 422, exit 2."""


class NotFound(TollgateError, http_status=404, title="Not Found", exit_code=2):
    """An id that names nothing (or nothing the caller may see).  HTTP 404, exit 2."""


class Conflict(TollgateError, http_status=409, title="Conflict", exit_code=2):
    """The request clashes with the current state.  HTTP 409, exit 2."""


class Forbidden(TollgateError, http_status=403, title="Forbidden", exit_code=2):
    """The caller may never do this.  HTTP 403, exit 2."""


class Unavailable(TollgateError, http_status=503, title="Service Unavailable", exit_code=1):
    """A dependency (Redis, Stripe, the gate, a worker) cannot answer now; retry later.  HTTP 503, exit 1."""


class InvalidInput(InputError, ValueError):
    """Input refused at the edge (``worker.validation``); ``field`` names it and the message starts
    with ``"<field>: "``; ``message`` is the rest."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.message = message


__all__ = ["Conflict", "Forbidden", "InputError", "InvalidInput", "NotFound", "TollgateError", "Unavailable"]
