"""The `docker` platform: the local topology as pulumi-docker containers (platform.py)."""
