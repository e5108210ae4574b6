"""Alembic on PostgreSQL: upgrade from empty creates the whole schema, downgrade to base removes it, and the
app refuses to start on a database that is behind."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from core.db.base import Base
from core.db.migrate import SchemaOutOfDateError, check_current, downgrade, upgrade
from tests.service.conftest import create_pg_database

pytestmark = pytest.mark.service


def test_upgrade_from_empty_and_downgrade_to_base() -> None:
    url, drop = create_pg_database()
    engine = create_engine(url)
    try:
        with pytest.raises(SchemaOutOfDateError, match="lingua-edit db upgrade"):
            check_current(engine)
        upgrade(url)
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        check_current(engine)  # at head: no error
        # the migrated schema matches the models (no pending autogenerate diff)
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext

        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        with pytest.raises(SchemaOutOfDateError):
            check_current(engine)
    finally:
        engine.dispose()
        drop()


def test_app_refuses_a_database_that_is_behind(tmp_path) -> None:  # noqa: ANN001
    from app.main import create_app
    from core.settings import Settings

    url, drop = create_pg_database()
    try:
        with pytest.raises(SchemaOutOfDateError):
            create_app(Settings(database_url=url, broker_url="redis://127.0.0.1:6379/0", data_dir=tmp_path))
    finally:
        drop()
