#!/bin/sh
# Python reference packages for the tests (the tools never need Python). Cached outside the clone in
# $VENV (default ~/.cache/ds-venv); a stamp of the requirements makes repeated runs instant.
set -eu
VENV=${VENV:-$HOME/.cache/ds-venv}
here=$(cd "$(dirname "$0")" && pwd)
req="$here/requirements.txt"
stamp="$VENV/.ds-requirements"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then exit 0; fi
echo "venv: installing reference packages into $VENV (first run only; torch is large: minutes)" >&2
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
# pip's own lines (collecting, downloading with sizes, installing) are the progress report
"$VENV/bin/python" -m pip install --progress-bar off -r "$req" >&2
cp "$req" "$stamp"
