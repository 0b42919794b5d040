"""The `external` platform: an existing PostgreSQL reached by a DSN (platform.py), checked by its kind (postgres.py)."""
