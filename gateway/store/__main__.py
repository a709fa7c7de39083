"""python -m gateway.store migrate|current

migrate: bring the report store (DATABASE_URL, DATABASE_SCHEMA, DATA_DIR as for the gateway) to
the newest schema, from empty too. The gateway does this at start unless MIGRATE_ON_START=0
(then run this once per upgrade, before starting the new gateways).
current: print the schema revision the database is at.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.settings import GatewaySettings
from gateway.store.database import current_revision, make_engine, migrate


async def _main(command: str) -> int:
    settings = GatewaySettings()
    engine = make_engine(settings)
    try:
        if command == "migrate":
            await migrate(engine, settings.database_schema)
        print(f"{engine.dialect.name}: schema revision {await current_revision(engine)}")
    finally:
        await engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("migrate", "current"))
    return asyncio.run(_main(parser.parse_args(argv).command))


if __name__ == "__main__":
    sys.exit(main())
