#!/usr/bin/env bash
# stop.sh - stop what start.sh DIR started (by the pids it recorded).
#
# Usage: stop.sh DIR
#
# Reads DIR/pids ("name pid" lines), sends SIGTERM in reverse start order
# (controller manager, apiserver, etcd), waits up to 10 s for each, then
# SIGKILL. A pid is signalled only while /proc/PID/exe is still the program
# start.sh started (so a reused pid is never hit). Removes DIR/pids; safe to
# run twice, and on a DIR where nothing was started. Keeps logs and data.
set -euo pipefail

log() { printf 'stop.sh: %s\n' "$*" >&2; }
[ $# -eq 1 ] || { sed -n '3p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2; exit 2; }
DIR=$1
PIDFILE="$DIR/pids"
if [ ! -f "$PIDFILE" ]; then
    log "nothing to stop in $DIR"
    exit 0
fi

# ours NAME PID: true while PID runs the program NAME.
ours() {
    local exe
    exe=$(readlink "/proc/$2/exe" 2>/dev/null) || return 1
    case "$(basename "${exe% (deleted)}")" in "$1") return 0 ;; *) return 1 ;; esac
}

mapfile -t lines <"$PIDFILE"
for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    read -r name pid <<<"${lines[$i]}"
    [ -n "${pid:-}" ] || continue
    if ! ours "$name" "$pid"; then
        log "$name (pid $pid) not running"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        ours "$name" "$pid" || break
        sleep 0.2
    done
    if ours "$name" "$pid"; then
        log "$name (pid $pid) ignored SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    # Reap it if it is our child (it is not, normally: start.sh has exited).
    wait "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
done
rm -f "$PIDFILE"
