#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server for a shared index (tests, benchmarks, trying it out).
#
#   scripts/postgres.sh start DIR PORT   initdb into DIR (once), start the server on
#                                        127.0.0.1:PORT, create database "lvi"; prints its URL
#   scripts/postgres.sh stop DIR PORT    stop it (DIR is kept; start again to reuse it)
#
# Both are idempotent. Loopback only, trust authentication: for one machine's tests, not
# for a server other people reach (give that one passwords and TLS). As root the server
# runs as the `postgres` OS user (PostgreSQL refuses to run as root).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR PORT" >&2; exit 2; }
[ $# -eq 3 ] || usage
action=$1 dir=$2 port=$3
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] ||
    { echo "error: PORT must be a number from 1 to 65535, not '$port'" >&2; exit 2; }

bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$bin/pg_ctl" ] ||
    { echo "error: no PostgreSQL 15 in $bin (apt-get install postgresql)" >&2; exit 2; }

as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    as_owner=(runuser -u postgres --)
fi
data=$dir/data

running() { [ -f "$data/PG_VERSION" ] && "${as_owner[@]}" "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; }

case $action in
start)
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
    "${as_owner[@]}" test -w "$dir" || {
        echo "error: the server's user cannot write $dir (are its parent folders searchable?);" \
            "use a folder such as one made by mktemp -d" >&2
        exit 2
    }
    if [ ! -f "$data/PG_VERSION" ]; then
        "${as_owner[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 \
            --locale=C.UTF-8 >"$dir/initdb.log"
        {
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = ''"
        } >>"$data/postgresql.conf"
    fi
    if ! running; then
        "${as_owner[@]}" "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port" start >/dev/null
    fi
    has_db=$("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'lvi'" postgres)
    [ "$has_db" = 1 ] || "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres lvi
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/lvi"
    ;;
stop)
    if running; then
        "${as_owner[@]}" "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
    ;;
*) usage ;;
esac
