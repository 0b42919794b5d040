"""High availability on the local platform: an etcd cluster, PostgreSQL nodes run by Patroni, and HAProxy
routing writes to the current leader and reads to the streaming replicas (README "High availability")."""
