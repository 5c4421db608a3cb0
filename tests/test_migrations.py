"""The migrations build exactly the schema the models describe, on PostgreSQL and on embedded SQLite."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from catalyst.db.engine import upgrade
from catalyst.db.models import Base
from tests import support


def _differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": False})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


@pytest.mark.skipif(not support.pg_available(), reason="PostgreSQL not reachable")
def test_migrated_postgres_matches_the_models():
    url = support.fresh_pg_url().replace("postgresql://", "postgresql+psycopg://")
    try:
        assert _differences(url) == []
    finally:
        support.drop_pg(url)


def test_migrated_sqlite_matches_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalyst.db'}"
    upgrade(url)
    assert _differences(url) == []
