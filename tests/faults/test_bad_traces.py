"""A malformed trace given to ``replay`` (what ``tollgate replay`` runs) records nothing: the error
names the row and field, and neither Redis nor PostgreSQL changes (our own services)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from worker.devtools.traces import TraceError

pytestmark = pytest.mark.faults

GOOD = "2023-11-16 18:15:46.6805900,374,44"


@pytest.mark.parametrize("fmt", ["azure", "mooncake"])
def test_a_malformed_trace_records_nothing(fault_env, tmp_path, fmt):
    from worker.db import engine_for
    from worker.devtools.replay import replay
    from worker.gate.gate import WalletGate

    fe = fault_env
    gate = WalletGate(fe.client(), settings=fe.settings, kicker=lambda shard: None)
    r = fe.client()
    before = r.dbsize()  # the gate's shard-count key only

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(bad_row=st.integers(1, 5), junk=st.sampled_from(["-5", "x", "1.5", "", "9999999999", "١٢"]))
    def check(bad_row, junk):
        if fmt == "azure":
            rows = [GOOD] * 5
            rows[bad_row - 1] = f"2023-11-16 18:15:46.6805900,{junk},44"
            body = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n" + "".join(row + "\r\n" for row in rows)
            field = "ContextTokens"
        else:
            rows = ['{"timestamp": 1, "input_length": 10, "output_length": 2, "hash_ids": [1]}'] * 5
            rows[bad_row - 1] = f'{{"timestamp": 1, "input_length": 10, "output_length": "{junk}", "hash_ids": [1]}}'
            body = "".join(row + "\n" for row in rows)
            field = "output_length"
        path = tmp_path / f"bad.{fmt}"
        path.write_text(body)
        with pytest.raises(TraceError) as err:
            replay(path, fmt=fmt, run_id="bad", start_worker=False, gate=gate)
        assert (err.value.row, err.value.field) == (bad_row, field)
        assert f"row {bad_row}" in str(err.value) and f"field {field}" in str(err.value)
        assert r.dbsize() == before
        with engine_for(fe.pg.url).connect() as conn:
            assert (
                conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM wallet) + (SELECT count(*) FROM usage_event) "
                        "+ (SELECT count(*) FROM wallet_transaction)"
                    )
                ).scalar_one()
                == 0
            )

    check()
    r.close()
