#!/bin/bash
# First start of the primary container only (docker-entrypoint-initdb.d): the replication role, the
# PgBouncer auth role and its lookup function. Passwords come from the container's (secret) environment.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username postgres --dbname "$POSTGRES_DB" \
     -v replication_password="$REPLICATION_PASSWORD" -v auth_password="$PGBOUNCER_AUTH_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'replication_password';
CREATE ROLE pgbouncer_auth WITH LOGIN PASSWORD :'auth_password';
CREATE SCHEMA pgbouncer;
REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO pgbouncer_auth;
CREATE FUNCTION pgbouncer.get_auth(p_usename text) RETURNS TABLE (usename name, passwd text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
    AS $$ SELECT s.usename, s.passwd FROM pg_catalog.pg_shadow s WHERE s.usename = p_usename AND NOT s.usesuper $$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO pgbouncer_auth;
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
