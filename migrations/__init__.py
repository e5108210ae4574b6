"""Alembic migrations, shipped as a package so an installed wheel finds them (app.db.migrate)."""
