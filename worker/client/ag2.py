"""AG2 (AutoGen, import name ``autogen``) integration: bill every agent reply of a GroupChat as a turn
and stop the chat cleanly when its wallet runs out or its workflow crosses its cost threshold.

How it hooks in (AG2 0.9+; no AG2 internals are patched):

- each LLM agent's ``client`` (``autogen.OpenAIWrapper``) gets its ``create`` wrapped on that
  instance: the response of every LLM call the agent makes is recorded at once as a turn with the
  agent's ``name``, the model and token counts the response reports (:mod:`worker.client.adapters`)
  and the call's response time (ms).  A turn is recorded even if the reply is later discarded: the
  tokens were spent.  Turn ids are ``<chat_id>:<response id>``, so a replayed response is one turn.
- a reply function registered first (``register_reply(..., position=0)``) refuses to call the LLM
  while the session is stopped (the agent replies ``None``, which ends the round);
- the manager's termination test (``is_termination_msg``) also answers True once the session is
  stopped, so the manager ends the round right after the message whose turn exhausted the wallet
  (that message was paid for and is kept in the chat).

After a stop, ``billing.stop_reason`` says why (``wallet_exhausted`` or ``cost_threshold``) and
``billing.error`` holds the :class:`~worker.client.session.WalletExhausted` /
:class:`~worker.client.session.CostThresholdExceeded`; the chat's messages stay in
``groupchat.messages``.  When the wallet is credited (``await session.wait_for_resume(...)``, or
from AG2's sync code, even inside its running loop, ``session.wait_for_resume_sync(...)``),
:meth:`GroupChatBilling.resume` continues the chat where it stopped (AG2's
``GroupChatManager.resume``).

- speaker selection by LLM (``speaker_selection_method='auto'``): AG2 makes a new internal
  ``speaker_selection_agent`` for every selection (``GroupChat._create_internal_agents``, on a copy
  of the group chat that AG2 keeps in the manager's reply function).  That one private method is
  wrapped, once per process, at class level: for a selection run by an attached manager it
  instruments the agent as it is made, so its calls are turns of agent ``speaker_selection_agent``;
  for any other manager it changes nothing.  If an AG2 release renames the method, attach() logs a
  warning and those calls go unbilled (``tests/integration/clients`` pins the behaviour).

Only the synchronous :class:`~worker.client.session.BillingSession` is supported (AG2 runs its LLM
calls in threads also in its async API).
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from typing import Any

from worker.client.session import BillingSession, CostThresholdExceeded, WalletExhausted

log = logging.getLogger(__name__)


#: attached managers → their billing (weakly held: a manager gone is forgotten)
_SELECTORS: "weakref.WeakKeyDictionary[Any, GroupChatBilling]" = weakref.WeakKeyDictionary()
_HOOKED = "_tollgate_hooked"


def _hook_speaker_selection() -> bool:
    """Wrap ``GroupChat._create_internal_agents`` once; False if this AG2 has no such method."""
    from autogen import GroupChat

    make = getattr(GroupChat, "_create_internal_agents", None)
    if make is None:
        return False
    if getattr(make, _HOOKED, False):
        return True

    @functools.wraps(make)
    def create_internal_agents(groupchat, *args: Any, **kwargs: Any):
        checking_agent, speaker_selection_agent = make(groupchat, *args, **kwargs)
        selector = kwargs.get("selector", args[4] if len(args) > 4 else None)
        billing = _SELECTORS.get(selector) if selector is not None else None
        if billing is not None:
            billing.instrument(speaker_selection_agent)
        return checking_agent, speaker_selection_agent

    setattr(create_internal_agents, _HOOKED, True)
    GroupChat._create_internal_agents = create_internal_agents  # type: ignore[method-assign,assignment]  # the hook (above)
    return True


class GroupChatBilling:
    """Bills an AG2 group chat through a :class:`BillingSession`.

    Args:
        session: the chat's billing session (its ``cost_threshold_nanos``, if any, is the workflow's
            cost threshold: a warning is logged at ``warn_at_bps`` of it and the chat stops at 100 %).

    Attributes:
        stop_reason: None while the chat may go on; ``'wallet_exhausted'`` or ``'cost_threshold'``.
        error: the exception that stopped it.
        recorded: number of turns recorded.
    """

    def __init__(self, session: BillingSession) -> None:
        if not isinstance(session, BillingSession):
            raise TypeError("session: GroupChatBilling needs a synchronous BillingSession")
        self.session = session
        self.stop_reason: str | None = None
        self.error: Exception | None = None
        self.recorded = 0
        #: agents already instrumented (weakly held: AG2 makes a new speaker-selection agent per
        #: selection, and an id() of a dead one could be reused by the next)
        self._instrumented: weakref.WeakSet = weakref.WeakSet()

    # wiring -----------------------------------------------------------------------------------
    def attach(self, manager) -> "GroupChatBilling":
        """Instrument every agent of ``manager.groupchat`` that has an LLM client (and the manager,
        if it has one) and make the manager end the round once the session stops.  Returns self."""
        for agent in manager.groupchat.agents:
            self.instrument(agent)
        self.instrument(manager)
        self._instrument_speaker_selection(manager)
        original = manager._is_termination_msg  # AG2 keeps the is_termination_msg callable here

        def is_termination_msg(message: dict[str, Any]) -> bool:
            return self.stop_reason is not None or bool(original(message))

        manager._is_termination_msg = is_termination_msg
        return self

    def instrument(self, agent) -> None:
        """Record every LLM call of ``agent`` (a ``ConversableAgent``) as a turn of the session and
        refuse LLM calls while the session is stopped.  Agents without an LLM client are left alone."""
        client = getattr(agent, "client", None)
        if client is None or agent in self._instrumented:
            return
        self._instrumented.add(agent)
        create = client.create
        name = agent.name

        def billed_create(*args: Any, **kwargs: Any):
            started = time.monotonic()
            response = create(*args, **kwargs)
            duration_ms = int((time.monotonic() - started) * 1000)
            self._record(response, name, duration_ms)
            return response

        client.create = billed_create
        from autogen import Agent

        agent.register_reply([Agent, None], self._guard, position=0)

    def _instrument_speaker_selection(self, manager) -> None:
        """Instrument the internal agent AG2 makes for each LLM speaker selection this manager runs
        (see the module docstring); a no-op, with a warning, if this AG2 has no
        ``GroupChat._create_internal_agents``."""
        if not _hook_speaker_selection():
            log.warning("this AG2 has no GroupChat._create_internal_agents: LLM speaker selection is not billed")
            return
        _SELECTORS[manager] = self

    # callbacks --------------------------------------------------------------------------------
    def _record(self, response: Any, agent: str, duration_ms: int) -> None:
        try:
            self.session.record_response(response, agent=agent, duration_ms=duration_ms)
            self.recorded += 1
        except (WalletExhausted, CostThresholdExceeded) as exc:
            decision = exc.decision if isinstance(exc, WalletExhausted) else None
            self.recorded += decision is None or decision.accepted  # a threshold stop follows an accepted turn
            self.stop(exc)

    def _guard(self, recipient, messages=None, sender=None, config=None) -> tuple[bool, Any]:
        """AG2 reply function: ``(True, None)`` (no reply, no LLM call) while the chat is stopped."""
        if self.stop_reason is not None:
            return True, None
        if self.session.state == "paused" and not self.session.can_continue():
            self.stop_reason = self.session.pause_reason or "wallet_exhausted"
            return True, None
        return False, None

    def stop(self, error: Exception) -> None:
        """Stop the chat after the current message, for ``error`` (WalletExhausted or
        CostThresholdExceeded); the session is already paused with its reason."""
        self.error = error
        self.stop_reason = "cost_threshold" if isinstance(error, CostThresholdExceeded) else "wallet_exhausted"
        log.warning("chat %s stopped: %s", self.session.chat_id, error)

    # resume -----------------------------------------------------------------------------------
    def resume(self, manager, *, messages: list[dict[str, Any]] | None = None, silent: bool = True):
        """Continue a stopped chat where it stopped, once the session can continue (its wallet was
        credited, or ``session.resume()`` lifted a cost threshold): AG2's ``manager.resume`` with the
        chat's messages (default ``manager.groupchat.messages``), then the last speaker
        ``initiate_chat(manager, message=last, clear_history=False)``.

        Returns AG2's ``ChatResult``.
        Raises: WalletExhausted / CostThresholdExceeded if the session still cannot continue.
        """
        self.session.ensure_can_continue()
        self.stop_reason, self.error = None, None
        history = list(messages if messages is not None else manager.groupchat.messages)
        last_agent, last_message = manager.resume(messages=history, silent=silent)
        return last_agent.initiate_chat(recipient=manager, message=last_message, clear_history=False, silent=silent)
