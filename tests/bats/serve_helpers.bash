# serve_helpers.bash — a ds-generate --serve process for a suite (tests/bats/ds-generate-serve.bats,
# tests/ref/serve.bats): started on loopback with port 0 (the port it picked comes on stdout), stopped
# by its pid. Load with `load serve_helpers` (tests/ref: `load ../bats/serve_helpers`).

# start_server NAME ARGS...: ds-generate ARGS --serve 127.0.0.1:0 in the background; sets NAME_URL and
# NAME_PID (also in $T/NAME.url, $T/NAME.pid; stderr in $T/NAME.err); waits until /health answers.
start_server() {
    local name=$1 url=""
    shift
    # fd 3 closed: bats waits for every process that holds it
    "$DS_BIN/ds-generate" "$@" --serve 127.0.0.1:0 >"$T/$name.url" 2>"$T/$name.err" 3>&- &
    echo $! >"$T/$name.pid"
    # up to 120 s: under a parallel `make test` on 2 cores a start has taken over 15 s
    local up=0 deadline=$((SECONDS + 120))
    while [ "$SECONDS" -lt "$deadline" ]; do
        # || true: the background shell may not have created the file yet, and bats runs with errexit
        url=$(head -1 "$T/$name.url" 2>/dev/null || true)
        [ -n "$url" ] && curl -sf "$url/health" >/dev/null && up=1 && break
        kill -0 "$(cat "$T/$name.pid")" 2>/dev/null || { cat "$T/$name.err"; return 1; }
        sleep 0.05
    done
    [ "$up" = 1 ] || { echo "server $name: /health did not answer within 120 s"; cat "$T/$name.err"; return 1; }
    printf -v "${name}_URL" '%s' "$url"
    printf -v "${name}_PID" '%s' "$(cat "$T/$name.pid")"
    export "${name}_URL" "${name}_PID"
}

# stop_server NAME: SIGTERM, then wait for the exit; the status is in $T/NAME.status.
stop_server() {
    local pid i
    pid=$(cat "$T/$1.pid" 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$T/$1.pid"
}
