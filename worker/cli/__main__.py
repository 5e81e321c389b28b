"""``python -m worker.cli``: the ``tollgate`` command."""

from worker.cli import app

app()
