#!/usr/bin/env bash
# One database and one login role per part of the stack, and a read-only role for Grafana on MLflow's tables.
# The postgres image runs this once, on an empty data volume (/docker-entrypoint-initdb.d); it can also be run
# by hand against any PostgreSQL 13+ as a superuser (psql's connection variables: PGHOST, PGUSER, ...).
# Passwords come from the environment (infra/.env), never from this file. Names can be changed with the *_DB_NAME
# variables; each role is named as its database.
set -euo pipefail

: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
: "${PREFECT_DB_PASSWORD:?PREFECT_DB_PASSWORD is not set}"
: "${INFERENCE_LOG_DB_PASSWORD:?INFERENCE_LOG_DB_PASSWORD is not set}"
: "${GRAFANA_DB_PASSWORD:?GRAFANA_DB_PASSWORD is not set}"
mlflow_db="${MLFLOW_DB_NAME:-mlflow}"
prefect_db="${PREFECT_DB_NAME:-prefect}"
inference_log_db="${INFERENCE_LOG_DB_NAME:-inference_log}"
grafana_role="${GRAFANA_DB_USER:-grafana_reader}"

run_psql() {
    # --username/--dbname only inside the postgres image's init phase (POSTGRES_USER set); else libpq's defaults.
    psql -v ON_ERROR_STOP=1 --no-psqlrc ${POSTGRES_USER:+--username "$POSTGRES_USER"} "$@"
}

run_psql --dbname "${POSTGRES_DB:-postgres}" \
    -v mlflow_db="$mlflow_db" -v mlflow_pw="$MLFLOW_DB_PASSWORD" \
    -v prefect_db="$prefect_db" -v prefect_pw="$PREFECT_DB_PASSWORD" \
    -v inference_log_db="$inference_log_db" -v inference_log_pw="$INFERENCE_LOG_DB_PASSWORD" \
    -v grafana_role="$grafana_role" -v grafana_pw="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE :"mlflow_db" LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_db";
CREATE ROLE :"prefect_db" LOGIN PASSWORD :'prefect_pw';
CREATE DATABASE :"prefect_db" OWNER :"prefect_db";
CREATE ROLE :"inference_log_db" LOGIN PASSWORD :'inference_log_pw';
CREATE DATABASE :"inference_log_db" OWNER :"inference_log_db";
CREATE ROLE :"grafana_role" LOGIN PASSWORD :'grafana_pw';
-- Only its own role connects to each database, and Grafana's to MLflow's.
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"prefect_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"inference_log_db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"mlflow_db" TO :"grafana_role";
SQL

# Grafana reads the monitor's records (drift share, actions) from MLflow's tables, which MLflow creates later as
# its own role: grant SELECT on those to come, and nothing else.
run_psql --dbname "$mlflow_db" -v mlflow_db="$mlflow_db" -v grafana_role="$grafana_role" <<'SQL'
GRANT USAGE ON SCHEMA public TO :"grafana_role";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"grafana_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"mlflow_db" IN SCHEMA public GRANT SELECT ON TABLES TO :"grafana_role";
SQL
