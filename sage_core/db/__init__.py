"""The database layer: typed SQLAlchemy models, sessions, state transitions, migrations.

Torch-free; shared by the API and the worker. The schema changes only through the Alembic
migrations in the repository's `migrations/` folder (see `sage_core.db.migrate`).
"""
