#!/usr/bin/env bash
# A local PostgreSQL for the tests: installs Debian's server when it is missing, creates and starts
# the cluster, trusts `postgres` on loopback, keeps TLS on (Debian's snakeoil certificate: some
# tests connect with sslmode=require) and creates the database `test`.
#
#   scripts/postgres.sh [start|stop|status]
#
# Safe to run again: every step checks before it changes anything. Needs root (apt-get and the
# cluster's files); there is no systemd on the machines this runs on, so the cluster is started
# with pg_ctlcluster directly.
set -euo pipefail

PG_PORT="${PG_PORT:-5432}"
PG_DB="${PG_DB:-test}"
cmd="${1:-start}"

say() { echo "postgres.sh: $*" >&2; }

installed_version() {
  ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n1
}

ensure_installed() {
  if [ -z "$(installed_version)" ] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
  fi
}

ensure_cluster() {
  local v="$1"
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$v main"; then
    say "creating cluster $v/main"
    pg_createcluster "$v" main --port "$PG_PORT" >/dev/null
  fi
  local conf="/etc/postgresql/$v/main"
  # Trust on loopback for every user: the tests connect as postgres with no password.
  if ! grep -Eq '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$conf/pg_hba.conf"; then
    say "trusting loopback connections in $conf/pg_hba.conf"
    local tmp
    tmp="$(mktemp)"
    {
      echo "host all all 127.0.0.1/32 trust"
      echo "host all all ::1/128 trust"
      grep -Ev '^host\s+all\s+all\s+(127\.0\.0\.1/32|::1/128)\s' "$conf/pg_hba.conf"
    } > "$tmp"
    cat "$tmp" > "$conf/pg_hba.conf"
    rm -f "$tmp"
  fi
  # TLS stays on, with the snakeoil pair the ssl-cert package made at install time.
  if [ -f /etc/ssl/certs/ssl-cert-snakeoil.pem ] && ! grep -Eq '^ssl\s*=\s*on' "$conf/postgresql.conf"; then
    say "switching ssl on"
    {
      echo "ssl = on"
      echo "ssl_cert_file = '/etc/ssl/certs/ssl-cert-snakeoil.pem'"
      echo "ssl_key_file = '/etc/ssl/private/ssl-cert-snakeoil.key'"
    } > "$conf/conf.d/90-saga-ssl.conf"
  fi
}

ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }

start() {
  ensure_installed
  local v
  v="$(installed_version)"
  ensure_cluster "$v"
  if ! ready; then
    pg_ctlcluster --skip-systemctl-redirect "$v" main start
  else
    # Already running: pick up a pg_hba.conf changed above.
    pg_ctlcluster --skip-systemctl-redirect "$v" main reload >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 60); do ready && break; sleep 0.5; done
  if ! ready; then
    say "error: PostgreSQL $v did not start; see /var/log/postgresql/postgresql-$v-main.log"
    exit 1
  fi
  local url="postgres://postgres@127.0.0.1:$PG_PORT"
  if [ "$(psql "$url/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
    psql "$url/postgres" -qc "CREATE DATABASE \"$PG_DB\""
  fi
  local ssl
  ssl="$(psql "$url/$PG_DB?sslmode=require" -Atc 'SHOW ssl')"
  echo "PostgreSQL $v ready: $url/$PG_DB (ssl $ssl)"
}

case "$cmd" in
  start) start ;;
  stop)
    v="$(installed_version)"
    [ -n "$v" ] && pg_ctlcluster --skip-systemctl-redirect "$v" main stop || true
    ;;
  status)
    if ready; then echo "PostgreSQL ready on 127.0.0.1:$PG_PORT"; else echo "PostgreSQL not running"; exit 1; fi
    ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
