"""tollgate's engine: settings, pricing, the wallet gate, the outbox drain, the ledger and the CLI."""
