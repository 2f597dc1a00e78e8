#!/usr/bin/env bash
# qhpc's own one-host Slurm 22.05 cluster (Debian packages) for integration tests and CI.
#
#   scripts/slurm.sh install       apt-get install what is missing (needs root); idempotent
#   scripts/slurm.sh start         install if needed, write /etc/slurm, build the SPANK plugin,
#                                  start munged, MariaDB, slurmdbd, slurmctld, two slurmd
#                                  and slurmrestd; wait until both nodes are up; print
#                                  "running" (the only line on stdout). Does nothing to
#                                  daemons this script already started and that still run.
#   scripts/slurm.sh stop          stop exactly the daemons this script started (by pid)
#   scripts/slurm.sh status        print "running" (exit 0) or "stopped" (exit 3)
#   scripts/slurm.sh apply DIR     install qhpc's generated fragments from DIR (see below),
#                                  reconfigure, wait until both nodes are up again
#   scripts/slurm.sh build-spank   build the --qpu SPANK plugin; print the .so path
#
# The cluster (names are stable; other code and tests rely on them):
#   ClusterName qhpc; SlurmUser slurm; partitions `debug` (node `hostname -s`, default)
#   and `qpu` (node qpu0: a second slurmd on port 6828, CPUs=1, a "service node");
#   slurmctld 6817, slurmd 6818, slurmdbd 127.0.0.1:6819, slurmrestd 127.0.0.1:6820
#   (JWT: `scontrol token`, headers X-SLURM-USER-NAME and X-SLURM-USER-TOKEN),
#   MariaDB 127.0.0.1:${QHPC_SLURM_DB_PORT:-63306} (own datadir, only for slurmdbd);
#   accounts physics and chemistry with user root in both (default physics).
#   The SPANK plugin is built to /usr/local/lib/qhpc/qhpc_qpu.so. deploy/slurm/cli_filter.lua
#   is installed as /etc/slurm/cli_filter.lua but inactive until a qhpc.conf fragment says
#   CliFilterPlugins=cli_filter/lua; then --qpu=NAME also requests licence qpu_NAME:1.
#
# `apply DIR` replaces the whole qhpc fragment set, so applying a directory that lacks a
# file removes that fragment (this makes "save the current set, apply, restore" exact):
#   DIR/qhpc.conf       -> /etc/slurm/qhpc.conf (Included at the end of slurm.conf:
#                          Licenses=, PrologSlurmctld=, EpilogSlurmctld=, Prolog=, Epilog=,
#                          TaskProlog=, PrologFlags= ...; do not put GresTypes here)
#   DIR/plugstack.conf  -> /etc/slurm/plugstack.conf.d/qhpc.conf
#                          (e.g. "required /usr/local/lib/qhpc/qhpc_qpu.so allowed=sim,emu")
#   DIR/gres.conf       -> /etc/slurm/gres.conf; its "Name=qpu Type=sim Count=1" lines also
#                          become GresTypes= and the node's Gres= in slurm.conf.
# A changed qhpc.conf or gres.conf restarts slurmctld and both slurmd (reconfigure does not
# activate a new PrologSlurmctld on 22.05); a changed plugstack.conf only reconfigures.
# Running jobs survive either (state is saved; slurmstepd outlives slurmd).
# The fragments live in /etc/slurm and so survive stop/start; slurm.conf itself is
# rewritten on every start. Where the current fragments are saved: `scripts/slurm.sh
# save DIR` copies them out in the layout `apply` reads.
#
# State (pids of the daemons started here, logs, spool, MariaDB data) lives in
# ${QHPC_SLURM_DIR:-/var/lib/qhpc-slurm}: log/*.log are the first place to look when a daemon
# does not come up. Root signals the pids recorded there and deletes files below it, so the
# directory is refused unless it is a real directory owned by root that group and others
# cannot write (a directory another user created, e.g. in /tmp, would let them choose).
# Clusters started by an older slurm.sh kept it in /tmp/qhpc-slurm: start and stop stop
# those daemons first (if that directory is still root's own).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${QHPC_SLURM_DIR:-/var/lib/qhpc-slurm}"
LEGACY_STATE_DIR=/tmp/qhpc-slurm
DB_PORT="${QHPC_SLURM_DB_PORT:-63306}"
CONF_DIR=/etc/slurm
CLUSTER=qhpc
QPU_NODE=qpu0
QPU_PORT=6828
DBD_PORT=6819
REST_ADDR=127.0.0.1
REST_PORT=6820
JWT_KEY="$CONF_DIR/jwt_hs256.key"
SPANK_SRC="$ROOT/deploy/slurm/spank/qhpc_qpu.c"
SPANK_DIR=/usr/local/lib/qhpc
SPANK_SO="$SPANK_DIR/qhpc_qpu.so"
ACCOUNTS=(physics chemistry)
WAIT_SECONDS="${QHPC_SLURM_WAIT:-60}"

PACKAGES=(munge slurm-client slurmctld slurmd slurmrestd slurm-wlm-basic-plugins
    slurm-wlm-jwt-plugin libslurm-dev gcc libc6-dev slurmdbd slurm-wlm-mysql-plugin
    mariadb-server)

PIDS="$STATE_DIR/pids"
LOGS="$STATE_DIR/log"
RUNS="$STATE_DIR/run"
SPOOL="$STATE_DIR/spool"
DB_DIR="$STATE_DIR/mariadb"
DB_SOCK="$DB_DIR/mysqld.sock"

log() { printf 'slurm.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
need_root() { [[ "$(id -u)" == 0 ]] || die "$1 needs root"; }

# ---------------------------------------------------------------------------------------
# The state directory

unsafe_dir() { # DIR -> true (printing why) when DIR exists but is not root's own
    local dir=$1 owner mode
    if [[ -L "$dir" ]]; then
        echo "is a symlink"
        return 0
    fi
    [[ -e "$dir" ]] || return 1
    if [[ ! -d "$dir" ]]; then
        echo "is not a directory"
        return 0
    fi
    owner=$(stat -c %u -- "$dir")
    mode=$(stat -c %a -- "$dir")
    if [[ "$owner" != 0 ]]; then
        echo "is owned by uid $owner, not root"
        return 0
    fi
    if (((8#$mode & 8#022) != 0)); then
        echo "is writable by group or others (mode $mode)"
        return 0
    fi
    return 1
}

check_state_dir() { # refuse a state directory someone else could have prepared
    local problem
    if problem=$(unsafe_dir "$STATE_DIR"); then
        die "refusing the state directory $STATE_DIR: it $problem. Root would signal the pids \
recorded there and delete files below it. Remove it, or point QHPC_SLURM_DIR at a directory \
owned by root and writable by root alone."
    fi
}

prepare_state_dir() { # check, create if missing (0755), check again (mkdir -p accepts any)
    check_state_dir
    [[ -d "$STATE_DIR" ]] || mkdir -p -m 755 -- "$STATE_DIR"
    check_state_dir
}

# An older slurm.sh kept its state in /tmp/qhpc-slurm. Stop the daemons it recorded there,
# trusting its pid files only while that directory is still root's own, then drop them.
stop_legacy_cluster() {
    [[ -z "${QHPC_SLURM_DIR:-}" && "$STATE_DIR" != "$LEGACY_STATE_DIR" ]] || return 0
    [[ -d "$LEGACY_STATE_DIR/pids" && ! -L "$LEGACY_STATE_DIR" ]] || return 0
    local problem name
    if problem=$(unsafe_dir "$LEGACY_STATE_DIR") || problem=$(unsafe_dir "$LEGACY_STATE_DIR/pids"); then
        log "ignoring the old state directory $LEGACY_STATE_DIR: it $problem"
        return 0
    fi
    log "stopping the cluster an older slurm.sh started from $LEGACY_STATE_DIR"
    local PIDS="$LEGACY_STATE_DIR/pids" # stop_recorded reads $PIDS
    for name in $(daemon_names); do
        stop_recorded "$name"
    done
    rm -rf -- "$LEGACY_STATE_DIR/pids"
    log "stopped; $LEGACY_STATE_DIR (old logs and data) may be deleted"
}

# ---------------------------------------------------------------------------------------
# Installation

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$p"
        fi
    done
}

cmd_install() {
    local missing
    mapfile -t missing < <(missing_packages)
    if [[ ${#missing[@]} == 0 ]]; then
        log "packages present"
        return 0
    fi
    need_root "installing ${missing[*]}"
    log "installing ${missing[*]} (apt-get)"
    # policy-rc.d exit 101 keeps the packages' post-install scripts from starting the
    # distribution's own munge/slurm/mariadb services: this script starts its own.
    local created_policy=0 rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                "${missing[@]}"
    } </dev/null >&2 || rc=$?
    if [[ "$created_policy" == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    [[ "$rc" == 0 ]] || die "apt-get install ${missing[*]} failed (exit $rc)"
}

# ---------------------------------------------------------------------------------------
# Every daemon is started with fd 9 (the lock of this script) closed: a daemon that kept it
# would hold the lock for its whole life.
#
# Processes: a record is "PID STARTTIME" in $PIDS/NAME, written only for what this script
# started. The start time (field 22 of /proc/PID/stat) tells our daemon from an unrelated
# process that reused its pid; the state field tells a live daemon from a zombie that PID 1
# has not reaped yet (kill -0 succeeds on both).

proc_stat_field() { # PID N -> field N of /proc/PID/stat (N >= 3; comm may hold spaces)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    awk -v n=$(($2 - 2)) '{print $n}' <<<"$stat"
}

pid_alive() { # PID [STARTTIME]
    local state start
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    state=$(proc_stat_field "$1" 3) || return 1
    [[ "$state" != Z && "$state" != X ]] || return 1
    if [[ -n "${2:-}" ]]; then
        start=$(proc_stat_field "$1" 22) || return 1
        [[ "$start" == "$2" ]] || return 1
    fi
}

record_pid() { # NAME PID
    local start
    start=$(proc_stat_field "$2" 22) || die "$1 (pid $2) exited right after starting"
    printf '%s %s\n' "$2" "$start" >"$PIDS/$1"
}

recorded_alive() { # NAME -> true when this script started NAME and it still runs
    local pid start
    [[ -f "$PIDS/$1" ]] || return 1
    read -r pid start <"$PIDS/$1" || return 1
    pid_alive "$pid" "$start"
}

recorded_pid() { awk '{print $1}' "$PIDS/$1"; }

pid_from_file() { # PIDFILE -> pid when its process is alive
    local pid
    [[ -f "$1" ]] || return 1
    pid=$(head -n 1 "$1" 2>/dev/null | tr -dc 0-9)
    pid_alive "$pid" && printf '%s\n' "$pid"
}

# The Slurm daemons read their configuration before they fork: a non-zero exit of the
# launching command is a configuration they refused.
daemon_refused() { # NAME LOG
    tail -n 5 "$2" >&2 2>/dev/null || true
    die "$1 refused to start (its errors are above; log: $2)"
}

# Waits for the daemon's pid file (the daemons below fork into the background).
wait_pidfile() { # NAME PIDFILE LOG
    local i pid
    for i in $(seq 1 100); do
        if pid=$(pid_from_file "$2"); then
            record_pid "$1" "$pid"
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$3" >&2 2>/dev/null || true
    die "$1 did not start (no live pid in $2; log: $3)"
}

stop_recorded() { # NAME
    local pid start i
    [[ -f "$PIDS/$1" ]] || return 0
    read -r pid start <"$PIDS/$1" || true
    if pid_alive "$pid" "$start"; then
        log "stopping $1 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            pid_alive "$pid" "$start" || break
            sleep 0.1
        done
        if pid_alive "$pid" "$start"; then
            log "$1 (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$PIDS/$1"
}

# ---------------------------------------------------------------------------------------
# Configuration

host_name() { hostname -s; }

# The compute node's line from `slurmd -C` (the real hardware: a mismatch drains the node).
compute_node_hw() {
    slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //'
}

# GresTypes and the node Gres= string from /etc/slurm/gres.conf ("Name=qpu Type=sim
# Count=1 ..." lines); both empty without one.
gres_types() {
    [[ -s "$CONF_DIR/gres.conf" ]] || return 0
    grep -v '^[[:space:]]*#' "$CONF_DIR/gres.conf" | grep -o 'Name=[^ ]*' | sed 's/Name=//' |
        sort -u | paste -sd, -
}

gres_of_node() {
    [[ -s "$CONF_DIR/gres.conf" ]] || return 0
    local host
    host=$(host_name)
    grep -v '^[[:space:]]*#' "$CONF_DIR/gres.conf" | awk -v host="$host" '
        {
            node = ""; name = ""; type = ""; count = 1
            for (i = 1; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[1] == "NodeName") node = kv[2]
                else if (kv[1] == "Name") name = kv[2]
                else if (kv[1] == "Type") type = kv[2]
                else if (kv[1] == "Count") count = kv[2]
            }
            if (name == "" || (node != "" && node != host)) next
            out = out (out == "" ? "" : ",") name (type == "" ? "" : ":" type) ":" count
        }
        END { print out }'
}

write_slurm_conf() {
    local host hw gres types tmp
    host=$(host_name)
    hw=$(compute_node_hw)
    types=$(gres_types)
    gres=$(gres_of_node)
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
# Written by qhpc's scripts/slurm.sh on every start: do not edit. Site settings that qhpc
# generates go into qhpc.conf (Included at the end, installed by "slurm.sh apply DIR").
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$JWT_KEY
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd-%n
SlurmctldPidFile=$RUNS/slurmctld.pid
SlurmdPidFile=$RUNS/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$CONF_DIR/plugstack.conf
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# A job waiting on a licence starts within a second of its release (default: ~23 s).
SchedulerParameters=bf_interval=1,sched_interval=1
DependencyParameters=kill_invalid_depend
ReturnToService=2
# Quick turnover for tests: finished jobs leave squeue after 30 s (sacct keeps them), a
# job past its time limit gets SIGKILL 2 s after SIGTERM, no grace beyond the limit.
MinJobAge=30
KillWait=2
OverTimeLimit=0
InactiveLimit=30
SlurmdTimeout=60
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
${types:+GresTypes=$types}
NodeName=$host NodeAddr=127.0.0.1 $hw${gres:+ Gres=$gres} State=UNKNOWN
NodeName=$QPU_NODE NodeHostname=$host NodeAddr=127.0.0.1 Port=$QPU_PORT CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=qpu Nodes=$QPU_NODE MaxTime=INFINITE State=UP
Include $CONF_DIR/qhpc.conf
EOF
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF_DIR/slurm.conf"
}

# Slurm warns on every command about an Included file of size 0, hence the comment.
ensure_qhpc_conf() {
    if [[ ! -s "$CONF_DIR/qhpc.conf" ]]; then
        echo '# qhpc settings: none applied (scripts/slurm.sh apply DIR)' >"$CONF_DIR/qhpc.conf"
        chmod 644 "$CONF_DIR/qhpc.conf"
    fi
}

write_configs() {
    mkdir -p "$CONF_DIR/plugstack.conf.d" "$PIDS" "$LOGS" "$RUNS" "$SPOOL/slurmctld"
    chmod 755 "$STATE_DIR" "$LOGS" "$RUNS" "$SPOOL"
    chown slurm: "$LOGS" "$SPOOL/slurmctld"
    ensure_qhpc_conf
    printf 'include %s/plugstack.conf.d/*.conf\n' "$CONF_DIR" >"$CONF_DIR/plugstack.conf"
    chmod 644 "$CONF_DIR/qhpc.conf" "$CONF_DIR/plugstack.conf"
    if [[ ! -s "$JWT_KEY" ]]; then
        log "creating JWT key $JWT_KEY"
        (umask 077 && dd if=/dev/urandom of="$JWT_KEY" bs=32 count=1 status=none)
    fi
    chown slurm: "$JWT_KEY"
    chmod 600 "$JWT_KEY"
    install -m 644 "$ROOT/deploy/slurm/cli_filter.lua" "$CONF_DIR/cli_filter.lua"
    write_slurm_conf
    write_slurmdbd_conf
}

# ---------------------------------------------------------------------------------------
# munge

start_munged() {
    if recorded_alive munged; then
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        mungekey --create --force >&2
        chown munge: /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge
    chown munge: /run/munge
    chmod 755 /run/munge
    if pid_from_file /run/munge/munged.pid >/dev/null; then
        log "using the munged that already runs (not started here, so not stopped here)"
        return 0
    fi
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged 9>&- >&2
    wait_pidfile munged /run/munge/munged.pid /var/log/munge/munged.log
}

# ---------------------------------------------------------------------------------------
# MariaDB (only for slurmdbd): own datadir and socket, TCP on 127.0.0.1:DB_PORT

db_password() {
    local file="$STATE_DIR/slurmdbd.password"
    if [[ ! -s "$file" ]]; then
        (umask 077 && tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24 >"$file")
    fi
    cat "$file"
}

db_admin() { mariadb --no-defaults --socket="$DB_SOCK" -u root "$@"; }

start_mariadb() {
    if recorded_alive mariadb; then
        return 0
    fi
    mkdir -p "$DB_DIR"
    chown mysql: "$DB_DIR"
    if [[ ! -d "$DB_DIR/data/mysql" ]]; then
        log "initialising MariaDB in $DB_DIR/data"
        rm -rf "$DB_DIR/data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOGS/mariadb-install.log" 2>&1 ||
            {
                tail -n 20 "$LOGS/mariadb-install.log" >&2
                die "mariadb-install-db failed"
            }
    fi
    log "starting MariaDB on 127.0.0.1:$DB_PORT"
    setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" \
        --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$DB_DIR/mariadb.pid" --log-error="$LOGS/mariadb.log" \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        </dev/null >/dev/null 2>&1 9>&- &
    record_pid mariadb $!
    local i
    for i in $(seq 1 100); do
        if db_admin -e 'SELECT 1' >/dev/null 2>&1; then
            break
        fi
        recorded_alive mariadb || break
        sleep 0.2
    done
    if ! db_admin -e 'SELECT 1' >/dev/null 2>&1; then
        tail -n 20 "$LOGS/mariadb.log" >&2 || true
        die "MariaDB did not accept connections on $DB_SOCK (log: $LOGS/mariadb.log)"
    fi
    local pw
    pw=$(db_password)
    db_admin <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

# ---------------------------------------------------------------------------------------
# slurmdbd and the accounts

write_slurmdbd_conf() {
    local tmp
    tmp=$(mktemp "$CONF_DIR/.slurmdbd.conf.XXXXXX")
    cat >"$tmp" <<EOF
# Written by qhpc's scripts/slurm.sh on every start: do not edit.
AuthType=auth/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$JWT_KEY
DbdAddr=127.0.0.1
DbdHost=$(host_name)
DbdPort=$DBD_PORT
SlurmUser=slurm
LogFile=$LOGS/slurmdbd.log
PidFile=$RUNS/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
    chown slurm: "$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$CONF_DIR/slurmdbd.conf"
}

start_slurmdbd() {
    if recorded_alive slurmdbd; then
        return 0
    fi
    if pid_from_file "$RUNS/slurmdbd.pid" >/dev/null; then
        die "a slurmdbd not started by this script runs (pid file $RUNS/slurmdbd.pid); stop it first"
    fi
    log "starting slurmdbd"
    slurmdbd 9>&- >&2 || daemon_refused slurmdbd "$LOGS/slurmdbd.log"
    wait_pidfile slurmdbd "$RUNS/slurmdbd.pid" "$LOGS/slurmdbd.log"
    local i
    for i in $(seq 1 $((WAIT_SECONDS * 5))); do
        if sacctmgr -n -P list cluster >/dev/null 2>&1; then
            return 0
        fi
        recorded_alive slurmdbd || break
        sleep 0.2
    done
    tail -n 20 "$LOGS/slurmdbd.log" >&2 || true
    die "slurmdbd does not answer sacctmgr (log: $LOGS/slurmdbd.log)"
}

ensure_accounts() {
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >&2
    fi
    local account have
    have=$(sacctmgr -n -P list account format=account)
    for account in "${ACCOUNTS[@]}"; do
        if ! grep -qx "$account" <<<"$have"; then
            sacctmgr -i add account "$account" cluster="$CLUSTER" \
                description="qhpc test account" organization=qhpc >&2
        fi
    done
    have=$(sacctmgr -n -P list assoc cluster="$CLUSTER" user=root format=account)
    for account in "${ACCOUNTS[@]}"; do
        if ! grep -qx "$account" <<<"$have"; then
            sacctmgr -i add user root account="$account" cluster="$CLUSTER" \
                defaultaccount="${ACCOUNTS[0]}" >&2
        fi
    done
}

# ---------------------------------------------------------------------------------------
# slurmctld, slurmd, slurmrestd

start_slurmctld() {
    if recorded_alive slurmctld; then
        return 0
    fi
    if pid_from_file "$RUNS/slurmctld.pid" >/dev/null; then
        die "a slurmctld not started by this script runs (pid file $RUNS/slurmctld.pid); stop it first"
    fi
    log "starting slurmctld"
    slurmctld 9>&- >&2 || daemon_refused slurmctld "$LOGS/slurmctld.log"
    wait_pidfile slurmctld "$RUNS/slurmctld.pid" "$LOGS/slurmctld.log"
    local i
    for i in $(seq 1 $((WAIT_SECONDS * 5))); do
        if scontrol ping 2>/dev/null | grep -q 'is UP'; then
            return 0
        fi
        recorded_alive slurmctld || break
        sleep 0.2
    done
    tail -n 20 "$LOGS/slurmctld.log" >&2 || true
    die "slurmctld does not answer (log: $LOGS/slurmctld.log)"
}

start_slurmd() { # NODE
    local node=$1 name="slurmd-$1"
    if recorded_alive "$name"; then
        return 0
    fi
    if pid_from_file "$RUNS/$name.pid" >/dev/null; then
        die "a slurmd for $node not started by this script runs ($RUNS/$name.pid); stop it first"
    fi
    mkdir -p "$SPOOL/$name"
    log "starting slurmd for node $node"
    slurmd -N "$node" 9>&- >&2 || daemon_refused "$name" "$LOGS/$name.log"
    wait_pidfile "$name" "$RUNS/$name.pid" "$LOGS/$name.log"
}

start_slurmrestd() {
    if recorded_alive slurmrestd; then
        return 0
    fi
    log "starting slurmrestd on $REST_ADDR:$REST_PORT (JWT)"
    # slurmrestd refuses to run as root or as SlurmUser; SLURM_JWT=daemon makes it accept
    # the callers' tokens (without it every request is a 401).
    SLURM_JWT=daemon setsid slurmrestd -u nobody -g nogroup -a rest_auth/jwt \
        "$REST_ADDR:$REST_PORT" </dev/null >>"$LOGS/slurmrestd.log" 2>&1 9>&- &
    record_pid slurmrestd $!
    local i
    for i in $(seq 1 100); do
        if curl -s -o /dev/null "http://$REST_ADDR:$REST_PORT/"; then
            return 0
        fi
        recorded_alive slurmrestd || break
        sleep 0.1
    done
    tail -n 20 "$LOGS/slurmrestd.log" >&2 || true
    die "slurmrestd does not listen on $REST_ADDR:$REST_PORT (log: $LOGS/slurmrestd.log)"
}

# Waits until both nodes respond (idle, or busy with jobs); a drained or down node is an
# error that names the node and shows the end of its slurmd log.
wait_nodes_up() {
    local host i states bad
    host=$(host_name)
    for i in $(seq 1 $((WAIT_SECONDS * 5))); do
        states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true)
        bad=$(awk '$2 !~ /^(idle|mixed|allocated|completing)$/' <<<"$states")
        if [[ -n "$states" && -z "$bad" ]]; then
            return 0
        fi
        sleep 0.2
    done
    log "nodes not up after ${WAIT_SECONDS}s: $(tr '\n' ';' <<<"$states")"
    scontrol show node "$host" "$QPU_NODE" 2>/dev/null | grep -E 'NodeName|State|Reason' >&2 || true
    tail -n 15 "$LOGS/slurmctld.log" >&2 || true
    tail -n 10 "$LOGS/slurmd-$host.log" "$LOGS/slurmd-$QPU_NODE.log" >&2 || true
    die "the cluster's nodes did not become idle"
}

# ---------------------------------------------------------------------------------------
# The --qpu SPANK plugin

cmd_build_spank() {
    [[ -f "$SPANK_SRC" ]] || die "no SPANK source at $SPANK_SRC"
    [[ -f /usr/include/slurm/spank.h ]] || die "slurm/spank.h missing: run '$0 install' (libslurm-dev)"
    mkdir -p "$SPANK_DIR"
    chmod 755 "$SPANK_DIR"
    if [[ ! -f "$SPANK_SO" || "$SPANK_SRC" -nt "$SPANK_SO" || /usr/include/slurm/spank.h -nt "$SPANK_SO" ]]; then
        local tmp
        tmp=$(mktemp "$SPANK_DIR/.qhpc_qpu.XXXXXX")
        gcc -std=c99 -O2 -Wall -Wextra -Werror -shared -fPIC -o "$tmp" "$SPANK_SRC" >&2 ||
            {
                rm -f "$tmp"
                die "building $SPANK_SRC failed"
            }
        chmod 755 "$tmp"
        # rename, never overwrite in place: running sbatch/slurmstepd may have it mapped.
        mv -f "$tmp" "$SPANK_SO"
        log "built $SPANK_SO"
    fi
    printf '%s\n' "$SPANK_SO"
}

# ---------------------------------------------------------------------------------------
# Commands

DAEMONS=(slurmrestd "slurmd-$QPU_NODE" slurmd-HOST slurmctld slurmdbd mariadb munged)

daemon_names() { # in stop order
    local host
    host=$(host_name)
    printf '%s\n' "${DAEMONS[@]}" | sed "s/^slurmd-HOST\$/slurmd-$host/"
}

all_running() {
    local name
    for name in $(daemon_names); do
        if [[ "$name" == munged ]]; then
            recorded_alive munged || pid_from_file /run/munge/munged.pid >/dev/null || return 1
        else
            recorded_alive "$name" || return 1
        fi
    done
}

cmd_start() {
    check_state_dir
    if [[ -d "$PIDS" ]] && all_running; then
        log "already running"
        echo running
        return 0
    fi
    need_root "starting the Slurm cluster"
    cmd_install
    prepare_state_dir
    exec 9>"$STATE_DIR/.lock"
    flock -w 300 9 || die "another slurm.sh holds $STATE_DIR/.lock"
    stop_legacy_cluster
    if all_running; then
        log "already running"
        echo running
        return 0
    fi
    cmd_build_spank >/dev/null
    write_configs
    start_munged
    start_mariadb
    start_slurmdbd
    ensure_accounts
    start_slurmctld
    start_slurmd "$(host_name)"
    start_slurmd "$QPU_NODE"
    start_slurmrestd
    wait_nodes_up
    echo running
}

cmd_stop() {
    need_root "stopping the Slurm cluster"
    prepare_state_dir
    exec 9>"$STATE_DIR/.lock"
    flock -w 300 9 || die "another slurm.sh holds $STATE_DIR/.lock"
    stop_legacy_cluster
    local name any=0
    for name in $(daemon_names); do
        [[ -f "$PIDS/$name" ]] && any=1
        stop_recorded "$name"
    done
    [[ "$any" == 1 ]] || log "not running (nothing started by this script)"
}

cmd_status() {
    check_state_dir
    if [[ -d "$PIDS" ]] && all_running; then
        echo running
    else
        echo stopped
        exit 3
    fi
}

# Copies the current fragment set out into DIR, in the layout `apply` reads.
cmd_save() {
    local dir=${1:?usage: $0 save DIR}
    mkdir -p "$dir"
    rm -f "$dir/qhpc.conf" "$dir/plugstack.conf" "$dir/gres.conf"
    [[ -s "$CONF_DIR/qhpc.conf" ]] && cp "$CONF_DIR/qhpc.conf" "$dir/qhpc.conf"
    [[ -s "$CONF_DIR/plugstack.conf.d/qhpc.conf" ]] &&
        cp "$CONF_DIR/plugstack.conf.d/qhpc.conf" "$dir/plugstack.conf"
    [[ -s "$CONF_DIR/gres.conf" ]] && cp "$CONF_DIR/gres.conf" "$dir/gres.conf"
    return 0
}

install_fragment() { # SRC DEST -> true when DEST changed
    local src=$1 dest=$2
    if [[ -f "$src" ]]; then
        if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
            return 1
        fi
        install -m 644 "$src" "$dest"
    else
        [[ -s "$dest" ]] || return 1
        rm -f "$dest"
    fi
}

cmd_apply() {
    local dir=${1:?usage: $0 apply DIR}
    need_root "applying Slurm configuration"
    [[ -d "$dir" ]] || die "apply: $dir is not a directory"
    local f
    for f in "$dir"/* "$dir"/.[!.]*; do
        [[ -e "$f" ]] || continue
        case "$(basename "$f")" in
        qhpc.conf | plugstack.conf | gres.conf) ;;
        *) die "apply: unexpected file $f (expected qhpc.conf, plugstack.conf, gres.conf)" ;;
        esac
    done
    prepare_state_dir
    exec 9>"$STATE_DIR/.lock"
    flock -w 300 9 || die "another slurm.sh holds $STATE_DIR/.lock"
    all_running || die "apply: the cluster is not running (run '$0 start' first)"

    check_fragment_parses "$dir"
    local backup
    backup=$(mktemp -d "$STATE_DIR/.previous.XXXXXX")
    cmd_save "$backup"
    local conf_changed=0 gres_changed=0 spank_changed=0
    local wanted_conf="$dir/qhpc.conf"
    if [[ ! -s "$wanted_conf" ]]; then
        wanted_conf="$backup/.none.conf"
        echo '# qhpc settings: none applied (scripts/slurm.sh apply DIR)' >"$wanted_conf"
    fi
    install_fragment "$wanted_conf" "$CONF_DIR/qhpc.conf" && conf_changed=1
    install_fragment "$dir/plugstack.conf" "$CONF_DIR/plugstack.conf.d/qhpc.conf" &&
        spank_changed=1
    install_fragment "$dir/gres.conf" "$CONF_DIR/gres.conf" && gres_changed=1
    local summary
    summary="apply $(cd "$dir" && pwd): qhpc.conf $( ((conf_changed)) && echo changed || echo same),"
    summary+=" plugstack $( ((spank_changed)) && echo changed || echo same),"
    summary+=" gres $( ((gres_changed)) && echo changed || echo same)"
    log "$summary"
    # Several test modules apply their own fragments to the one cluster: a dated trail of
    # who applied what makes a surprising configuration explainable.
    printf '%s %s (pid %s, uid %s)\n' "$(date '+%F %T')" "$summary" "$$" "$(id -u)" \
        >>"$LOGS/apply.log"

    if ((gres_changed || conf_changed)); then
        # Node definitions and GresTypes are read only at daemon start, and (measured on
        # 22.05.8) after `scontrol reconfigure` a new PrologSlurmctld/EpilogSlurmctld is
        # shown by `scontrol show config` but never run: restart instead.
        write_slurm_conf
        restart_slurm_daemons || restore_after_failed_apply "$backup"
    elif ((spank_changed)); then
        # sbatch and slurmstepd read plugstack.conf afresh each time; slurmd on reconfigure.
        if ! scontrol reconfigure >&2 || ! controller_answers; then
            restore_after_failed_apply "$backup"
        fi
    fi
    rm -rf "$backup"
    wait_nodes_up
    echo applied
}

# Slurm's commands parse slurm.conf (and its Includes) before they do anything, so a
# command run on a copy that includes the candidate fragment rejects a malformed one
# without touching the running daemons.
check_fragment_parses() { # DIR
    [[ -f "$1/qhpc.conf" ]] || return 0
    local candidate errors
    candidate=$(mktemp -d "$STATE_DIR/.candidate.XXXXXX")
    sed "s#^Include $CONF_DIR/qhpc.conf\$#Include $(cd "$1" && pwd)/qhpc.conf#" \
        "$CONF_DIR/slurm.conf" >"$candidate/slurm.conf"
    if ! errors=$(SLURM_CONF="$candidate/slurm.conf" scontrol ping 2>&1 >/dev/null); then
        rm -rf "$candidate"
        printf '%s\n' "$errors" >&2
        die "apply: Slurm cannot parse $1/qhpc.conf (errors above); nothing was changed"
    fi
    rm -rf "$candidate"
}

controller_answers() {
    local i
    for i in $(seq 1 50); do
        recorded_alive slurmctld || return 1
        scontrol ping 2>/dev/null | grep -q 'is UP' && return 0
        sleep 0.2
    done
    return 1
}

restart_slurm_daemons() {
    local host
    host=$(host_name)
    stop_recorded "slurmd-$QPU_NODE"
    stop_recorded "slurmd-$host"
    stop_recorded slurmctld
    (start_slurmctld && start_slurmd "$host" && start_slurmd "$QPU_NODE")
}

# A fragment that slurmctld rejects must not leave the test cluster down: put the previous
# fragments back, bring the daemons up again, and fail naming the log.
restore_after_failed_apply() {
    local backup=$1
    log "slurmctld rejected the new configuration; restoring the previous fragments"
    tail -n 20 "$LOGS/slurmctld.log" >&2 || true
    install_fragment "$backup/qhpc.conf" "$CONF_DIR/qhpc.conf" || true
    ensure_qhpc_conf
    install_fragment "$backup/plugstack.conf" "$CONF_DIR/plugstack.conf.d/qhpc.conf" || true
    install_fragment "$backup/gres.conf" "$CONF_DIR/gres.conf" || true
    rm -rf "$backup"
    write_slurm_conf
    restart_slurm_daemons || true
    die "apply: the new configuration was rejected (see $LOGS/slurmctld.log); previous one restored"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
apply) cmd_apply "${2:-}" ;;
save) cmd_save "${2:-}" ;;
build-spank) cmd_build_spank ;;
*)
    echo "usage: $0 install|start|stop|status|apply DIR|save DIR|build-spank" >&2
    exit 2
    ;;
esac
