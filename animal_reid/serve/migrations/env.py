"""Alembic environment: runs on the connection passed in ``config.attributes["connection"]``."""

from alembic import context

from animal_reid.serve.store import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
