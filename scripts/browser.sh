#!/usr/bin/env bash
# The headless browser of qhpc's console tests (tests/web/test_browser.py): Debian's Chromium,
# driven by Playwright for Python (the dev extra). Playwright's own browser download is never
# used (`playwright install` fetches from outside the package registries).
#
#   scripts/browser.sh          install Chromium if missing (apt-get, needs root), print its path
#   scripts/browser.sh path     print its path if it is installed (exit 3 if not); installs nothing
#
# The path is the only line on stdout; apt-get's output goes to stderr. Idempotent: a second
# run finds the browser and installs nothing. QHPC_TEST_BROWSER names another executable.
set -euo pipefail

log() { printf 'browser.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

find_browser() {
    local candidate
    for candidate in "${QHPC_TEST_BROWSER:-}" /usr/bin/chromium; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

install_browser() {
    [[ "$(id -u)" == 0 ]] || die "Chromium is not installed and installing it needs root"
    log "installing Chromium (apt-get)"
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
    } </dev/null >&2 || rc=$?
    [[ "$rc" == 0 ]] || die "apt-get install chromium failed (exit $rc)"
}

case "${1:-install}" in
path)
    find_browser || exit 3
    ;;
install)
    if ! find_browser; then
        install_browser
        find_browser || die "Chromium was installed but /usr/bin/chromium is not there"
    fi
    ;;
*)
    die "usage: scripts/browser.sh [install|path]"
    ;;
esac
