#!/usr/bin/env bash
# The C libraries the C client (clients/c: libqhpc) is built on: libcurl for HTTP(S) and
# Jansson for JSON, both Debian's development packages, plus a C compiler and make.
#
#   scripts/cdeps.sh          install what is missing (apt-get, needs root), print the
#                             compiler and linker flags (`pkg-config --cflags --libs`)
#   scripts/cdeps.sh check    print the flags if everything is installed (exit 3 if not);
#                             installs nothing
#
# The flags are the only line on stdout; apt-get's output goes to stderr. Idempotent: a
# second run finds everything and installs nothing.
set -euo pipefail

PACKAGES=(gcc make pkg-config libcurl4-openssl-dev libjansson-dev)
MODULES=(libcurl jansson)

log() { printf 'cdeps.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

flags() {
    command -v cc >/dev/null 2>&1 || return 1
    command -v make >/dev/null 2>&1 || return 1
    command -v pkg-config >/dev/null 2>&1 || return 1
    pkg-config --exists "${MODULES[@]}" 2>/dev/null || return 1
    pkg-config --cflags --libs "${MODULES[@]}" | tr -s ' ' | sed 's/ *$//'
}

install_deps() {
    [[ "$(id -u)" == 0 ]] || die "libcurl/Jansson headers are not installed and installing them needs root (apt-get install ${PACKAGES[*]})"
    log "installing ${PACKAGES[*]} (apt-get)"
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}"
    } </dev/null >&2 || rc=$?
    [[ "$rc" == 0 ]] || die "apt-get install failed (exit $rc)"
}

case "${1:-install}" in
check)
    flags || exit 3
    ;;
install)
    if ! flags; then
        install_deps
        flags || die "installed ${PACKAGES[*]} but pkg-config still finds no ${MODULES[*]}"
    fi
    ;;
*)
    die "usage: scripts/cdeps.sh [install|check]"
    ;;
esac
