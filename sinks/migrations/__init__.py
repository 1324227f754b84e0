"""Numbered ClickHouse migrations, applied in order by ``exnet init`` and recorded in the database.

Each module ``NNNN_name.py`` exposes ``statements(database) -> list[str]``.
A migration, once released, is never edited: a change is a new migration.
Every statement is idempotent (``IF NOT EXISTS``, ``OR REPLACE``), so a
migration interrupted half-way is simply applied again.
"""
