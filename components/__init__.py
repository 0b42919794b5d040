"""Pulumi components of thorbis-db: platforms that run servers, and the database layer inside them."""
