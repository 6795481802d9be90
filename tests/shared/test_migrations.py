"""The Alembic migrations build exactly the schema the models declare, on SQLite and Postgres."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from selfjudge.shared.db import Base, migrate


def _diff(url: str) -> list:
    migrate(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_sqlite_schema_matches_models(tmp_path):
    assert _diff(f"sqlite:///{tmp_path / 'm.db'}") == []


def test_postgres_schema_matches_models(postgres_url):
    assert _diff(postgres_url) == []
    migrate(postgres_url)  # idempotent
