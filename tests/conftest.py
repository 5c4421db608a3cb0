"""Fixtures: real PostgreSQL and Redis per test, the embedded default in a temp dir, real processes."""

from __future__ import annotations

import pytest
import redis
import structlog

from tests import support


@pytest.fixture(scope="session", autouse=True)
def _drop_template():
    yield
    support.drop_template()


@pytest.fixture(autouse=True)
def _fresh_logging():
    """Every test starts from structlog's defaults: a CLI command run in-process configures logging (with the
    agent_logs hook and a bound service name), which must not change what the next test logs or writes."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def pg_url():
    if not support.pg_available():
        support.unavailable("PostgreSQL on 127.0.0.1:5432")
    url = support.fresh_pg_url()
    yield url
    support.drop_pg(url)


@pytest.fixture
def redis_url():
    if not support.redis_available():
        support.unavailable("Redis on 127.0.0.1:6379")
    client = redis.Redis.from_url(support.REDIS_TEST)
    client.flushdb()
    yield support.REDIS_TEST
    client.flushdb()


@pytest.fixture
def private_pg():
    """A PostgreSQL cluster of the test's own (outage drills stop and start it; never the shared server)."""
    from catalyst.db.engine import dispose_all
    from tests.private_servers import PrivatePostgres

    server = PrivatePostgres()
    server.start()
    yield server
    dispose_all()
    server.close()


@pytest.fixture
def stack(tmp_path, request):
    s = support.Stack(tmp_path / "logs")
    yield s
    s.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(s.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
