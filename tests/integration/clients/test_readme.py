"""The examples of the README's "Orchestrator clients" section run as written and print what they say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[3] / "README.md"


def blocks() -> list[str]:
    """The Python blocks of the section, in order."""
    text = README.read_text()
    section = text[text.index("## Orchestrator clients") :]
    section = section[: section.index("\n## ", 3)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def expected_prints(code: str) -> list[str]:
    return [m.split(" (or ")[0].strip() for m in re.findall(r"print\(.*\)\s*#\s*(.*)", code)]


@pytest.mark.parametrize("index", [0, 1])
def test_readme_example_runs_as_written(index, db, redis_client, events_url):
    code = blocks()[index]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    wanted = expected_prints(code)
    assert len(blocks()) == 2 and len(lines) == len(wanted)
    for line, want in zip(lines, wanted):
        if "chat.resumable" in want:  # either event may win the race; the balance is exact
            assert line.split()[1] == want.split()[1] and line.split()[0] in ("chat.resumable", "wallet.credited")
        else:
            assert line == want.split(" = ")[0]
