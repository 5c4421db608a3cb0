"""No key or password in any log line or table row: a worker and beat session (a position opened, monitored and
stopped out) with every credential set to a value we can search for."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from catalyst.db.models import Position
from tests.fake_anthropic import FakeAnthropic
from tests.support import environment, query, wait_for
from tests.test_e2e_loop import base_env, cli
from tests.test_logs import json_lines

pytestmark = pytest.mark.e2e

SECRETS = {
    "ALPACA_API_KEY": "PKCATALYSTKEYID7F3A9Q",
    "ALPACA_SECRET_KEY": "alpaca-secret-5b1d2e9c8f",
    "ANTHROPIC_API_KEY": "sk-ant-test-key-04c6a1f2e3",
    "FLOWER_BASIC_AUTH": "operator:flower-pw-9e2b7d",
}
DB_PASSWORD = "pg-pw-a83c1f5e"  # the shared test server trusts local connections: any password is accepted


def every_row_as_text() -> str:
    """Every row of every table of the database, as PostgreSQL renders it (JSON columns included)."""
    def dump(s):
        tables = s.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        assert "agent_logs" in tables and "positions" in tables
        return "\n".join(row for table in tables
                         for row in s.execute(text(f'SELECT t::text FROM "{table}" t')).scalars().all())
    return query(dump)


def test_no_log_line_or_table_row_holds_a_key_or_password(tmp_path, pg_url, redis_url, stack):
    with FakeAnthropic() as anthropic:
        env = base_env(tmp_path)
        env.update(SECRETS, DATABASE_URL=pg_url.replace("postgres@", f"postgres:{DB_PASSWORD}@"), REDIS_URL=redis_url,
                   ANTHROPIC_BASE_URL=anthropic.base_url, LOG_FORMAT="json")
        with environment(env):
            cli("db", "upgrade")
            worker, beat = stack.worker(name="secrets"), stack.beat()
            opened = cli("open", "TEST", "--qty", "10", "--stop", "95", "--target", "120", "--json")
            position_id = json.loads(opened.stdout)["id"]
            wait_for(lambda: query(lambda s: s.get(Position, position_id).status) == "closed", 120,
                     what="the stop-loss exit:\n" + stack.logs())
            wait_for(lambda: "position_closed" in worker.log_text(), 30, what="the close to be logged")
            status = cli("status", "--json")
            rows = every_row_as_text()
            logs = {"worker": worker.log_text(), "beat": beat.log_text(), "cli": opened.stdout + opened.stderr
                    + status.stdout + status.stderr}
    assert json_lines(logs["worker"]) and json_lines(logs["beat"]), "the session logged"
    for secret in [*SECRETS.values(), SECRETS["FLOWER_BASIC_AUTH"].partition(":")[2], DB_PASSWORD]:
        for name, output in logs.items():
            assert secret not in output, f"{secret!r} in the {name}'s output"
        assert secret not in rows, f"{secret!r} in a table row"
