"""Report-store databases for the tests: a SQLite file, or a schema of its own on the PostgreSQL
server (``TEST_POSTGRES_URL``, default postgresql://postgres@127.0.0.1:5432/test), dropped afterwards.

Without a reachable PostgreSQL server the PostgreSQL cases skip with a message saying so, unless
``REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


@dataclass
class TestDatabase:
    kind: str
    url: str
    schema: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def settings(self, **overrides):
        from types import SimpleNamespace

        values = {"database_url": self.url, "data_dir": Path("."), "database_schema": self.schema,
                  "database_timeout_s": 5.0}
        return SimpleNamespace(**{**values, **overrides})


async def _postgres(statement: str, url: str = POSTGRES_URL) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def postgres_problem() -> str | None:
    """None when the server answers, else why not."""
    try:
        asyncio.run(_postgres("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def open_database(kind: str, tmp_path: Path):
    """(TestDatabase, cleanup) for ``kind``; skips or fails (REQUIRE_POSTGRES=1) without a server."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'reports.db'}"
        return TestDatabase("sqlite", url, env={"DATABASE_URL": url}), lambda: None
    problem = postgres_problem()
    if problem is not None:
        message = (f"PostgreSQL not reachable at {POSTGRES_URL} ({problem}); start it or set TEST_POSTGRES_URL "
                   "(CI sets REQUIRE_POSTGRES=1 and fails here)")
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    schema = f"t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    database = TestDatabase("postgresql", POSTGRES_URL, schema,
                            env={"DATABASE_URL": POSTGRES_URL, "DATABASE_SCHEMA": schema})
    return database, lambda: asyncio.run(_postgres(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
