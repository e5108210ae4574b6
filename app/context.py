"""The process-wide handles (settings, database, storage, task queue) shared by the API and the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts.storage import Storage, make_storage
from app.db.session import make_engine, make_session_factory
from app.settings import Settings

if TYPE_CHECKING:
    from celery import Celery


@dataclass
class Context:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    _celery: Celery | None = field(default=None, repr=False)

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            from worker.celery_app import make_celery

            self._celery = make_celery(self.settings)
        return self._celery


def make_context(settings: Settings) -> Context:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url())
    return Context(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        storage=make_storage(settings),
    )
