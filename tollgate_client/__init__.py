"""tollgate's orchestrator client: billing sessions over chats (sync and asyncio), in-process or over
HTTP, usage adapters for the OpenAI and Anthropic SDKs, and an AG2 group-chat integration
(:mod:`tollgate_client.ag2`, needs the ``clients`` extra).  See ``tollgate_client/README.md``."""

from tollgate_client.adapters import AdapterError, TokenUsage, UnknownModel, resolve_model, usage_from_response
from tollgate_client.session import (
    AsyncBillingSession,
    BillingSession,
    CostThresholdExceeded,
    Resumed,
    SessionEnded,
    SessionSummary,
    WalletExhausted,
)
from tollgate_client.transports import (
    ApiError,
    AsyncHttpTransport,
    AsyncInProcessTransport,
    HttpTransport,
    InProcessTransport,
    TollgateClientError,
    WalletNotFound,
)

__all__ = [
    "AdapterError", "ApiError", "AsyncBillingSession", "AsyncHttpTransport", "AsyncInProcessTransport",
    "BillingSession", "CostThresholdExceeded", "HttpTransport", "InProcessTransport", "Resumed", "SessionEnded",
    "SessionSummary", "TokenUsage", "TollgateClientError", "UnknownModel", "WalletExhausted", "WalletNotFound",
    "resolve_model", "usage_from_response",
]
