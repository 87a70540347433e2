#!/usr/bin/env bash
# Makes sure the machine has what the tests use. Safe to run any number of times.
#  - psql (the client tests drive it);
#  - python3 with venv (the psycopg test builds its own environment under target/).
set -euo pipefail

need_apt=()
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)

# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install ${need_apt[@]+"${need_apt[@]}"}
bash "$(dirname "$0")/setup-cdc-upstreams.sh"
bash "$(dirname "$0")/setup-client-tests.sh"
bash "$(dirname "$0")/setup-kafka.sh"
