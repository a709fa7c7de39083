"""The report store: every report version, its review and the cell thumbnails, in a relational
database (SQLite by default, PostgreSQL in production), behind ``gateway.store.repository``.

Schema changes are Alembic migrations (``gateway/store/migrations``), applied at gateway start
or with ``python -m gateway.store migrate``.
"""
