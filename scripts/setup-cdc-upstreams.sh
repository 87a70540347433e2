#!/usr/bin/env bash
# Makes the local upstream databases usable for the CDC tests. Safe to run any number of times;
# restarts a server only when a setting that needs a restart is not yet in force.
#  - PostgreSQL 15 at 127.0.0.1:5432 (trust, user postgres): wal_level=logical and enough
#    replication slots and WAL senders for tests that run in parallel.
#  - MariaDB at 127.0.0.1:3306 (root, empty password): binlog on, ROW format, full row images
#    and full row metadata (column names in TABLE_MAP events).
set -euo pipefail

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

pg() { psql -h 127.0.0.1 -U postgres -d postgres -XAtqc "$1"; }

wait_for() { # $1 = description, $2.. = command that succeeds once the server answers
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "setup-cdc-upstreams: $what did not come up" >&2
  return 1
}

start_postgres() {
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    local version
    version=$(ls /etc/postgresql | sort -n | tail -1)
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main "$1" || true
  else
    $SUDO service postgresql "$1" || true
  fi
}

if ! pg 'select 1' >/dev/null 2>&1; then
  start_postgres start
  wait_for "PostgreSQL" pg 'select 1'
fi
restart_pg=no
if [ "$(pg 'show wal_level')" != "logical" ]; then
  pg "ALTER SYSTEM SET wal_level = 'logical'"
  restart_pg=yes
fi
if [ "$(pg 'show max_replication_slots')" -lt 64 ]; then
  pg "ALTER SYSTEM SET max_replication_slots = 64"
  restart_pg=yes
fi
if [ "$(pg 'show max_wal_senders')" -lt 64 ]; then
  pg "ALTER SYSTEM SET max_wal_senders = 64"
  restart_pg=yes
fi
if [ "$restart_pg" = yes ]; then
  echo "setup-cdc-upstreams: restarting PostgreSQL for wal_level=logical"
  start_postgres restart
  wait_for "PostgreSQL" pg 'select 1'
fi

my() { mysql -h 127.0.0.1 -uroot -N -B -e "$1"; }
if command -v mysql >/dev/null 2>&1; then
  if ! my 'select 1' >/dev/null 2>&1; then
    $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for "MariaDB" my 'select 1'
  fi
  if [ "$(my 'select @@log_bin')" != "1" ] || [ "$(my 'select @@binlog_format')" != "ROW" ] \
    || [ "$(my 'select @@binlog_row_metadata')" != "FULL" ]; then
    conf=/etc/mysql/my.cnf
    if ! grep -q 'eddy-cdc' "$conf"; then
      $SUDO tee -a "$conf" >/dev/null <<'CNF'

# eddy-cdc: binlog for the CDC tests
[mysqld]
log_bin = mysql-bin
binlog_format = ROW
binlog_row_image = FULL
binlog_row_metadata = FULL
server_id = 1
CNF
    fi
    echo "setup-cdc-upstreams: restarting MariaDB for binlog_format=ROW"
    mysqladmin -h 127.0.0.1 -uroot shutdown || true
    for _ in $(seq 1 60); do pgrep -x mariadbd >/dev/null || break; sleep 1; done
    $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for "MariaDB" my 'select 1'
  fi
fi
