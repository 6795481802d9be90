"""Alembic environment: the schema is `selfjudge.shared.db.Base.metadata`."""

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from selfjudge.shared.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=connection.dialect.name == "sqlite"
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """On the connection `db.migrate` passes (it holds the migration lock), else on a new one."""
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        run_migrations(connection)


run_migrations_online()
