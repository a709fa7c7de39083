"""The database engine (async SQLAlchemy: aiosqlite or asyncpg) and the migrations.

``DATABASE_URL`` selects the database: ``sqlite:///path/reports.db`` or
``postgresql://user:password@host:5432/name`` (the async drivers are filled in here). Unset: a
SQLite file ``reports.db`` under ``DATA_DIR``. ``DATABASE_SCHEMA`` (PostgreSQL only) puts every
table in that schema (created when missing), e.g. one schema per test run.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("gateway.store")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x414D4C5F5354  # "AML_ST": the advisory lock held while migrating
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def database_url(url: str | None, data_dir: Path) -> str:
    """The async SQLAlchemy URL for ``DATABASE_URL`` (or the default SQLite file)."""
    if not url:
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(data_dir / 'reports.db').resolve()}"
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def make_engine(settings) -> AsyncEngine:
    url = database_url(settings.database_url, Path(settings.data_dir))
    schema = settings.database_schema
    timeout = settings.database_timeout_s
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": timeout})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection, _record):  # foreign keys on; WAL lets readers run beside a writer
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()
        return engine
    server_settings = {"application_name": "aml-gateway"}
    if schema:
        if not SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"DATABASE_SCHEMA {schema!r}: lower-case letters, digits and _")
        server_settings["search_path"] = schema
    return create_async_engine(url, pool_pre_ping=True, pool_timeout=timeout,
                               connect_args={"timeout": timeout, "command_timeout": max(timeout, 30.0),
                                             "server_settings": server_settings})


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest schema revision this code knows (its migrations' head)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def revision_at_least(current: str | None, needed: str) -> bool:
    """Whether a database at ``current`` has every migration up to ``needed``: ``needed`` is ``current`` or one
    of its ancestors. A revision this code does not know is a newer one (a gateway rolled back after an upgrade:
    migrations only add), so it counts as at least; None (no tables) never does."""
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError

    if current is None:
        return False
    script = ScriptDirectory.from_config(alembic_config())
    try:
        ancestors = {r.revision for r in script.iterate_revisions(current, "base")}
    except RevisionError:  # not one of ours: newer
        return True
    return needed in ancestors


async def check_schema(engine: AsyncEngine) -> None:
    """For a gateway that does not migrate at start (MIGRATE_ON_START=0): refuse to run on a database older than
    its code (no tables yet, or a revision before the head), which would fail request by request with missing
    tables or columns. A database that cannot be reached now is left to /readyz (not ready until it answers),
    as it is when the gateway migrates."""
    try:
        current = await current_revision(engine)
    except (OSError, asyncio.TimeoutError, SQLAlchemyError) as exc:
        log.warning("could not check the report database's schema at start (%s): /readyz says not ready until it "
                    "answers; run `python -m gateway.store current` to check it", type(exc).__name__)
        return
    head = head_revision()
    if not revision_at_least(current, head):
        raise RuntimeError(f"the report database is at schema revision {current or 'none (empty)'}, this gateway "
                           f"needs {head}: run `python -m gateway.store migrate` (same DATABASE_URL, DATABASE_SCHEMA) "
                           "before starting it, or start it with MIGRATE_ON_START=1")


async def migrate(engine: AsyncEngine, schema: str | None = None, revision: str = "head") -> None:
    """Bring the database to ``revision`` (from empty, too)."""
    def upgrade(sync_connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_connection
        command.upgrade(config, revision)

    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:":
        # SQLite: DDL is not transactional enough for two migrators at once; a file lock beside the database
        import fcntl

        with open(f"{database}.migrate-lock", "a") as lock:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(upgrade)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # several gateway replicas starting at once: one migrates, the others wait, then find nothing to do
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            if schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await conn.run_sync(upgrade)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    def run(sync_connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_connection
        command.downgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
