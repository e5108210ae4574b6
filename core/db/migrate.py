"""Alembic from code: upgrade/downgrade, and the startup check that refuses a database that is behind."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine


def _script_location() -> Path:
    """The `migrations` package's directory: the source checkout's, or the installed wheel's copy (its
    revision files ship as package data), wherever the command runs from."""
    import migrations

    return Path(migrations.__file__).resolve().parent


class SchemaOutOfDateError(RuntimeError):
    pass


def alembic_config(url: str) -> Config:
    script_dir = _script_location()
    ini = script_dir.parent / "alembic.ini"  # present in a checkout only; the code sets what it needs
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(script_dir))
    # '%' must be escaped for ConfigParser interpolation (passwords in URLs).
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def check_current(engine: Engine) -> None:
    """Raise SchemaOutOfDateError unless the database is at the head revision."""
    head = head_revision(str(engine.url))
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"database schema is at revision {current or 'empty'}, the code needs {head}: "
            "run `lingua-edit db upgrade` first"
        )
