"""The catalog's schema migrations (alembic)."""

# The newest revision in versions/. Opening a catalog already at it costs
# one SELECT instead of importing alembic (a fifth of a command's start);
# tests/unit/test_catalog_schema.py checks it against the scripts.
HEAD = '0006'
