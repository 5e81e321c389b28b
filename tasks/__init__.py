"""Celery tasks: thin, named ``tollgate.<area>.<verb>``, taking IDs and plain values."""
