"""Where the servers run: local, docker or external, each ending in one ConnectionSpec (build.py chooses)."""
