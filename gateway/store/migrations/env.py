"""Alembic environment: runs on the connection the gateway hands over (``config.attributes['connection']``),
or on ``DATABASE_URL`` when started by the ``alembic`` command itself."""

from __future__ import annotations

import asyncio

from alembic import context

from gateway.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from gateway.store.database import make_engine
    from gateway.settings import GatewaySettings

    async def main() -> None:
        engine = make_engine(GatewaySettings())
        async with engine.begin() as conn:
            await conn.run_sync(_run)
        await engine.dispose()

    asyncio.run(main())


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run python -m gateway.store migrate")
run_migrations_online()
