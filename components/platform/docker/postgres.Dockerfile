# PostgreSQL with the extensions thorbis-db preloads or installs (pg_cron, pg_partman, hypopg), and
# python3 for the init script's SCRAM verifiers (components/scram.py).
ARG BASE_IMAGE=postgres:15
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      "postgresql-${PG_MAJOR}-cron" "postgresql-${PG_MAJOR}-partman" "postgresql-${PG_MAJOR}-hypopg" python3 \
 && rm -rf /var/lib/apt/lists/*
