#!/usr/bin/env bash
# What the client-ecosystem tests (sql-tests/tests/drivers.rs, live.rs) need, installed
# idempotently: psql, a JDK, the Debian Postgres JDBC jar, coreutils' stdbuf and python3-venv.
# The Python drivers themselves go into a venv the tests make under target/.
set -euo pipefail

need_apt=()
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v javac >/dev/null 2>&1 || need_apt+=(default-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
command -v stdbuf >/dev/null 2>&1 || need_apt+=(coreutils)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
