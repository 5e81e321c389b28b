"""tollgate's orchestrator client: billing sessions over chats (sync and asyncio), in-process or over
HTTP, usage adapters for the OpenAI and Anthropic SDKs, and an AG2 group-chat integration
(:mod:`worker.client.ag2`, needs the ``clients`` extra).  See the README, "Orchestrator clients"."""

from worker.client.adapters import AdapterError, TokenUsage, UnknownModel, resolve_model, usage_from_response
from worker.client.session import (
    AsyncBillingSession,
    BillingSession,
    CostThresholdExceeded,
    LlmTurnArgs,
    MeterArgs,
    ResponseTurnArgs,
    Resumed,
    SessionEnded,
    SessionOptions,
    SessionSummary,
    WalletExhausted,
)
from worker.client.transports import (
    ApiError,
    AsyncHttpTransport,
    AsyncInProcessTransport,
    HttpTransport,
    InProcessTransport,
    TollgateClientError,
    WalletNotFound,
)

__all__ = [
    "AdapterError",
    "ApiError",
    "AsyncBillingSession",
    "AsyncHttpTransport",
    "AsyncInProcessTransport",
    "BillingSession",
    "CostThresholdExceeded",
    "HttpTransport",
    "InProcessTransport",
    "LlmTurnArgs",
    "MeterArgs",
    "ResponseTurnArgs",
    "Resumed",
    "SessionEnded",
    "SessionOptions",
    "SessionSummary",
    "TokenUsage",
    "TollgateClientError",
    "UnknownModel",
    "WalletExhausted",
    "WalletNotFound",
    "resolve_model",
    "usage_from_response",
]
