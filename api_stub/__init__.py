"""FastAPI app: the orchestrator HTTP API, Stripe webhooks and the /billing page (filled by later issues)."""
