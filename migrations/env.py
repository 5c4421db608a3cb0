"""Alembic environment: the URL comes from the caller's config or Catalyst's settings."""

from alembic import context
from sqlalchemy import pool

from catalyst.db.engine import make_engine
from catalyst.db.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
if not url:
    from catalyst.settings import get_settings

    url = get_settings().sqlalchemy_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
