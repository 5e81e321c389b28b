"""``tollgate --help`` and each group's ``--help`` list every command with its summary on one line
(the docstring's first paragraph; Typer's rich mode would keep the source's line breaks and cut it
mid-sentence).  No database or Redis: help only."""

from __future__ import annotations

import inspect

import typer
from typer.testing import CliRunner

from worker.cli.main import app


def _groups(group: typer.Typer, path: tuple[str, ...] = ()):
    yield path, group
    for sub in group.registered_groups:
        if sub.typer_instance is not None and sub.name:
            yield from _groups(sub.typer_instance, (*path, sub.name))


def test_every_command_summary_is_one_line_in_its_group_help():
    runner = CliRunner()
    checked = 0
    for path, group in _groups(app):
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "1000"}, terminal_width=1000)
        assert shown.exit_code == 0, shown.output
        for info in group.registered_commands:
            doc = inspect.cleandoc(info.callback.__doc__ or "") if info.callback else ""
            if not doc:
                continue
            summary = " ".join(doc.split("\n\n")[0].split())
            assert summary in shown.output, (path, info.name, summary)
            checked += 1
    assert checked >= 30  # every command of every group
