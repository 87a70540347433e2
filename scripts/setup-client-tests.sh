#!/usr/bin/env bash
# What the client-ecosystem tests (sql-tests/tests/drivers.rs, live.rs) need, installed
# idempotently: psql, a JDK, the Debian Postgres JDBC jar, coreutils' stdbuf, python3-venv and
# the openssl CLI (the TLS test makes its certificate with it).
# The Python drivers themselves go into a venv the tests make under target/.
set -euo pipefail

need_apt=()
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v javac >/dev/null 2>&1 || need_apt+=(default-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
command -v stdbuf >/dev/null 2>&1 || need_apt+=(coreutils)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)

# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install ${need_apt[@]+"${need_apt[@]}"}
