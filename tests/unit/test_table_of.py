"""worker.db.table_of: the Core table of a SQLModel table class, and a clear error for any other class."""

import pytest
from sqlalchemy import Table

from models.chat import ChatSession
from models.turn import TurnIn, UsageEvent
from worker.db import table_of


def test_table_of_a_table_class_is_its_core_table():
    table = table_of(UsageEvent)
    assert isinstance(table, Table)
    assert table.name == "usage_event"
    assert table is UsageEvent.__table__  # type: ignore[attr-defined]  # what table_of reads
    assert table_of(ChatSession).name == "chat_session"


def test_table_of_a_schema_without_a_table_names_the_class():
    with pytest.raises(TypeError, match="TurnIn is not a SQLModel table class"):
        table_of(TurnIn)
