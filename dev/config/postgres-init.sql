-- paystream's roles and databases: one database per service, owned by a role of the same
-- name. wallet and ledger may open replication connections, which the Debezium connector
-- for that database uses (connect/*.json); registry holds the Schema Registry's storage;
-- query is the read database, fed only from Kafka by the JDBC sink connectors (connect/query-*.json).
-- Passwords equal the names: a development stack only.
--
-- Idempotent: whatever already exists is left as it is, so this runs on every start.
-- Run as a superuser with psql (\gexec is a psql command, CREATE DATABASE cannot run in a
-- DO block or a transaction):
--   psql -X -v ON_ERROR_STOP=1 < dev/config/postgres-init.sql            (dev/up)
--   /docker-entrypoint-initdb.d/paystream.sql                            (postgres image, first start)

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'wallet') THEN
    CREATE ROLE wallet LOGIN REPLICATION PASSWORD 'wallet';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'ledger') THEN
    CREATE ROLE ledger LOGIN REPLICATION PASSWORD 'ledger';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'registry') THEN
    CREATE ROLE registry LOGIN PASSWORD 'registry';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'query') THEN
    CREATE ROLE query LOGIN PASSWORD 'query';
  END IF;
END
$$;

SELECT 'CREATE DATABASE wallet OWNER wallet'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = 'wallet')
\gexec

SELECT 'CREATE DATABASE ledger OWNER ledger'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = 'ledger')
\gexec

SELECT 'CREATE DATABASE registry OWNER registry'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = 'registry')
\gexec

SELECT 'CREATE DATABASE query OWNER query'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = 'query')
\gexec
