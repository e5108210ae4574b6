"""The process-wide handles (settings, database, storage, task queue) shared by the API and the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.db.session import make_engine, make_session_factory
from core.queue import make_celery
from core.settings import Settings
from core.storage import Storage, make_storage

if TYPE_CHECKING:
    from celery import Celery


@dataclass
class Context:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    # Autocommit connections for the polling reads (no BEGIN/COMMIT round trips); the same pool.
    read_engine: Engine | None = None
    _celery: Celery | None = field(default=None, repr=False)

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = make_celery(self.settings)
        return self._celery


def make_context(settings: Settings, pool_pre_ping: bool = True, statement_timeout_ms: int | None = None
                 ) -> Context:
    """`pool_pre_ping=False` (the API) saves a round trip per request; a connection the database dropped
    then fails once (503) and SQLAlchemy replaces the whole pool. Workers keep the ping.
    `statement_timeout_ms` bounds every PostgreSQL statement (the API's)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url(), pool_pre_ping=pool_pre_ping,
                         statement_timeout_ms=statement_timeout_ms)
    return Context(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        storage=make_storage(settings),
        read_engine=engine.execution_options(isolation_level="AUTOCOMMIT"),
    )
