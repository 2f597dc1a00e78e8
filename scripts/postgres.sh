#!/usr/bin/env bash
# A private PostgreSQL cluster for qhpc's tests and benchmarks.
#
#   scripts/postgres.sh start    install PostgreSQL if missing, init + start the cluster,
#                                print its URL (the only line on stdout)
#   scripts/postgres.sh stop     stop this cluster (never any other postgres)
#   scripts/postgres.sh status   print "running" (exit 0) or "stopped" (exit 3, like pg_ctl)
#
# State lives in ${QHPC_PG_DIR:-/tmp/qhpc-pg} (data/, sock/, postgres.log); the server
# listens on 127.0.0.1:${QHPC_PG_PORT:-55432} only. The state dir must be reachable by the
# `postgres` user when run as root (so not under /root). Role and database are both `qhpc`,
# password `qhpc`, checked with scram-sha-256 over TCP; the unix socket trusts local users
# and is used only by this script for administration.
set -euo pipefail

STATE_DIR="${QHPC_PG_DIR:-/tmp/qhpc-pg}"
PORT="${QHPC_PG_PORT:-55432}"
DATA_DIR="$STATE_DIR/data"
SOCK_DIR="$STATE_DIR/sock"
LOG_FILE="$STATE_DIR/postgres.log"
URL="postgresql://qhpc:qhpc@127.0.0.1:$PORT/qhpc"

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# The newest installed major version's binaries; empty when none is installed.
find_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
        printf '%s\n' "$dir"
    fi
}

install_postgres() {
    [[ "$(id -u)" == 0 ]] || die "PostgreSQL is not installed and installing it needs root"
    log "installing PostgreSQL (apt-get)"
    # policy-rc.d exit 101 keeps the package's post-install scripts from starting the
    # distribution's own cluster: we only want the binaries.
    local created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
    } </dev/null >&2 || rc=$?
    if [[ "$created_policy" == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    [[ "$rc" == 0 ]] || die "apt-get install postgresql failed (exit $rc)"
}

# Runs a command as the cluster owner: postgres refuses to run as root.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# True when the postmaster named in postmaster.pid is alive. Checked by hand rather than
# with `pg_ctl status` because that only asks kill(pid, 0), which also succeeds for a
# killed postmaster not yet reaped (a zombie) and for an unrelated process that reused
# the pid after a reboot.
is_running() {
    local pidfile="$DATA_DIR/postmaster.pid" pid comm state
    [[ -f "$pidfile" ]] || return 1
    pid=$(head -n 1 "$pidfile" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/stat" ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    # Field 3 of /proc/PID/stat is the state; comm (field 2) has no spaces for postgres.
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
    [[ "$comm" == postgres* && "$state" != Z && "$state" != X ]]
}

# A postmaster.pid left by a server that is gone (machine restarted, kill -9) makes the
# next start fail when its pid has been reused; remove it and the socket's lock file.
clear_stale_pidfile() {
    local pidfile="$DATA_DIR/postmaster.pid"
    if [[ -f "$pidfile" ]] && ! is_running; then
        log "removing stale $pidfile (its server is gone)"
        rm -f "$pidfile" "$SOCK_DIR"/.s.PGSQL."$PORT".lock "$SOCK_DIR"/.s.PGSQL."$PORT"
    fi
}

# Waits until the server accepts connections on its socket (a just-started or
# still-recovering server may not yet).
wait_ready() {
    local i
    for i in $(seq 1 60); do
        if as_owner "$BINDIR/pg_isready" -q -h "$SOCK_DIR" -p "$PORT" -t 1; then
            return 0
        fi
        sleep 0.5
    done
    die "PostgreSQL at $SOCK_DIR:$PORT does not accept connections (log: $LOG_FILE)"
}

init_cluster() {
    local major
    major=$(basename "$(dirname "$BINDIR")")
    if [[ -f "$DATA_DIR/PG_VERSION" && "$(cat "$DATA_DIR/PG_VERSION")" != "$major" ]]; then
        log "state dir holds a PostgreSQL $(cat "$DATA_DIR/PG_VERSION") cluster; re-creating for $major"
        rm -rf "$DATA_DIR"
    fi
    if [[ -d "$DATA_DIR" && ! -f "$DATA_DIR/PG_VERSION" ]]; then
        # An interrupted initdb leaves a half-made directory that initdb refuses to reuse.
        log "removing incomplete cluster directory $DATA_DIR"
        rm -rf "$DATA_DIR"
    fi
    mkdir -p "$STATE_DIR" "$SOCK_DIR"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$STATE_DIR" "$SOCK_DIR"
        as_owner test -w "$STATE_DIR" ||
            die "user postgres cannot write $STATE_DIR (a parent directory is closed to it); set QHPC_PG_DIR elsewhere"
    fi
    chmod 700 "$SOCK_DIR"
    if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
        log "initdb $DATA_DIR"
        as_owner "$BINDIR/initdb" -D "$DATA_DIR" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 >&2
    fi
}

start_server() {
    touch "$LOG_FILE"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$LOG_FILE"
    fi
    log "starting PostgreSQL on 127.0.0.1:$PORT (log: $LOG_FILE)"
    # Settings go on the command line rather than into postgresql.conf so that a changed
    # QHPC_PG_PORT takes effect on the next start of an existing cluster. A few tries:
    # right after a kill -9 the old server's children may still hold its shared memory
    # for a moment, and the new postmaster refuses to start until they are gone.
    local attempt
    for attempt in 1 2 3; do
        if as_owner "$BINDIR/pg_ctl" -D "$DATA_DIR" -l "$LOG_FILE" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PORT -k $SOCK_DIR" start >&2; then
            return 0
        fi
        clear_stale_pidfile
        sleep 2
    done
    tail -n 20 "$LOG_FILE" >&2 || true
    die "PostgreSQL did not start"
}

psql_admin() {
    as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$PORT" -U postgres \
        -d postgres "$@"
}

ensure_role_and_db() {
    if [[ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'qhpc'")" != 1 ]]; then
        log "creating role qhpc"
        psql_admin -c "CREATE ROLE qhpc LOGIN PASSWORD 'qhpc'" >&2
    fi
    if [[ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = 'qhpc'")" != 1 ]]; then
        log "creating database qhpc"
        psql_admin -c "CREATE DATABASE qhpc OWNER qhpc" >&2
    fi
}

cmd_start() {
    BINDIR=$(find_bindir)
    if [[ -z "$BINDIR" ]]; then
        install_postgres
        BINDIR=$(find_bindir)
        [[ -n "$BINDIR" ]] || die "no initdb under /usr/lib/postgresql/*/bin after install"
    fi
    if is_running; then
        log "already running"
    else
        init_cluster
        clear_stale_pidfile
        start_server
    fi
    wait_ready
    ensure_role_and_db
    printf '%s\n' "$URL"
}

cmd_stop() {
    BINDIR=$(find_bindir)
    if [[ -n "$BINDIR" ]] && is_running; then
        as_owner "$BINDIR/pg_ctl" -D "$DATA_DIR" -m fast -w stop >&2
    else
        log "not running"
    fi
}

cmd_status() {
    BINDIR=$(find_bindir)
    if [[ -n "$BINDIR" ]] && is_running; then
        echo running
    else
        echo stopped
        exit 3
    fi
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
