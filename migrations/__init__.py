"""Alembic migrations, shipped as a package so an installed wheel finds them (core.db.migrate)."""
