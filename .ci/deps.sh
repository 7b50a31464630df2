#!/bin/sh
# Install the Debian packages libds needs to build, test and run the demo. Idempotent: when every
# package is already installed this only asks dpkg and returns in well under a second, silently.
# Otherwise it says what it does, step by step: apt-get update, then how much apt will download and one line per package it sets up
# (a fresh machine takes a few minutes; apt's full output is shown only when it fails).
set -eu
PKGS="build-essential pkg-config libopenblas-dev libzstd-dev zstd libpcre2-dev libjansson-dev
libopenmpi-dev openmpi-bin libibverbs-dev libpng-dev libfreetype-dev libmicrohttpd-dev fonts-dejavu-core bats gnuplot-nox jq clang curl
libclang-rt-14-dev python3 python3-venv ca-certificates"
missing=""
n=0
for p in $PKGS; do
    s=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$s" in *"install ok installed"*) ;; *) missing="$missing $p" n=$((n + 1)) ;; esac
done
[ -z "$missing" ] && exit 0
say() { echo "deps: $*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "error: installing needs root or sudo; missing:$missing"; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log" "$log.rc"' EXIT
# run APT-GET ARGS with its output in $log; on failure show the end of it
apt_get() {
    if ! $SUDO apt-get "$@" >"$log" 2>&1; then
        tail -n 25 "$log" | sed 's/^/    /' >&2
        say "error: apt-get $1 failed"
        exit 1
    fi
}
say "$n Debian packages missing:$missing"
say "apt-get update (package lists)"
apt_get update -q
say "apt-get install: $n packages and what they depend on (a few minutes on a fresh machine)"
# one progress line per package set up; apt's status goes through a file (sh has no pipefail)
# shellcheck disable=SC2086
{ $SUDO apt-get install -y -q --no-install-recommends $missing 2>&1; echo $? >"$log.rc"; } |
    tee "$log" | awk '
        / newly installed, / { total = $3 }
        /^Need to get / { sub(/^Need to get /, ""); sub(/ of archives.*/, ""); print "deps:   " total " packages to set up, " $0 " to download"; fflush() }
        /^Setting up / { printf "deps:   [%d/%s] %s\n", ++k, total, $3; fflush() }' >&2
if [ "$(cat "$log.rc")" -ne 0 ]; then
    tail -n 25 "$log" | sed 's/^/    /' >&2
    say "error: apt-get install failed"
    exit 1
fi
say "done: installed$missing"
