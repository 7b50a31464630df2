#!/bin/sh
# Install the Debian packages libds needs to build, test and run the demo. Idempotent: when every
# package is already installed this only asks dpkg and returns in well under a second.
set -eu
PKGS="build-essential pkg-config libopenblas-dev libzstd-dev zstd libpcre2-dev libjansson-dev
libopenmpi-dev openmpi-bin libibverbs-dev bats gnuplot-nox jq clang libclang-rt-14-dev python3 python3-venv
ca-certificates"
missing=""
for p in $PKGS; do
    s=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$s" in *"install ok installed"*) ;; *) missing="$missing $p" ;; esac
done
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
