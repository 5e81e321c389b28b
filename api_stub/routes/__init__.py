"""The HTTP API's routers, one module per resource: ``turns``, ``wallets``, ``enterprises``,
``chats``, ``analytics`` (analytics, rollups, workflows, usage export), ``stripe`` (webhook,
Checkout), ``billing`` (the /billing page, sign-in, exports) and ``metrics`` (/metrics, /healthz).
Each exposes ``router``; :func:`api_stub.app.create_app` includes them."""
