"""Schema migrations with Alembic: upgrade a database, and refuse one newer than this code."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from taskplatform.exceptions import TaskPlatformError


class SchemaError(TaskPlatformError):
    """The database schema is at a revision this version of taskplatform does not know."""

    code = "schema_unknown"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", "taskplatform:migrations")
    return config


def head_revision() -> str:
    """Return the newest schema revision this code ships."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def upgrade(sqlalchemy_url: str) -> str:
    """Bring the database at ``sqlalchemy_url`` to the newest revision; return that revision.

    An empty database gets the whole schema; an up-to-date one is left alone.

    Raises:
        SchemaError: the database is at a revision this code does not know (written by a newer
            taskplatform); nothing is changed.
    """
    config = _config()
    script = ScriptDirectory.from_config(config)
    engine = create_engine(sqlalchemy_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            if current is not None and current not in {
                rev.revision for rev in script.walk_revisions()
            }:
                raise SchemaError(
                    f"the database schema is at revision {current!r}, which this taskplatform "
                    f"(newest revision {script.get_current_head()!r}) does not know; it was "
                    "probably written by a newer taskplatform: upgrade taskplatform instead"
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    return head_revision()
