"""Reconciliation tasks (``tollgate.reconcile.*``)."""
