"""The `local` platform: real PostgreSQL, replicas, PgBouncer and Redis processes on this host.

platform.py is the Pulumi component that declares them; each other module is one kind of the provider
(or a helper of those kinds), which the plugin imports without the program's config.
"""
