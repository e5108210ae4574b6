"""Alembic from code: upgrade/downgrade, and the startup check that refuses a database that is behind."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parents[2]


def _project_dir() -> Path:
    """The directory holding migrations/: the source checkout, or the working directory of an install
    (the Docker image runs from /app, which carries migrations/ and alembic.ini)."""
    for base in (ROOT, Path.cwd()):
        if (base / "migrations" / "env.py").is_file():
            return base
    raise FileNotFoundError("migrations/ not found: run lingua-edit from the project directory")


class SchemaOutOfDateError(RuntimeError):
    pass


def alembic_config(url: str) -> Config:
    root = _project_dir()
    ini = root / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(root / "migrations"))
    # '%' must be escaped for ConfigParser interpolation (passwords in URLs).
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
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
