#!/usr/bin/env bash
# run-guest.sh - boot the Ferrite QEMU test bed once and run a guest script.
#
# Usage: run-guest.sh GUEST_SCRIPT [TIMEOUT_SECONDS] [KEY=VALUE...]
#
# Appends a small cpio to the base initramfs built by prepare.sh (run first,
# automatically; it is a no-op when the cache is ready) holding
#   /test.sh     GUEST_SCRIPT (busybox sh)
#   /test.env    the KEY=VALUE pairs, shell-quoted; /init exports them
#   /guest/      every file of e2e/qemu/guest/ (lib.sh, ...)
# boots it under QEMU/TCG (the guest reaches the host's 127.0.0.1 as
# 10.0.2.2), tees the serial console to a log, kills QEMU after
# TIMEOUT_SECONDS (default 300) and exits 0 only if the console shows
# "FERRITE-GUEST-RESULT: PASS" (1 on FAIL or timeout, 2 on usage errors).
#
# Environment:
#   FERRITE_QEMU_LOG     a directory for the console log (created), or a file
#                        path ending in .log; default: a new /tmp/ferrite-qemu.*
#   FERRITE_QEMU_CACHE / FERRITE_CACHE   as for prepare.sh
#   FERRITE_QEMU_BED     which kernel to boot: 6.1 (default, Debian 12) or 6.12
#                        (Debian 13, with NVMe in-band authentication)
#   FERRITE_QEMU_APPEND  extra kernel arguments (e.g. nvme_core.multipath=N)
#   FERRITE_QEMU_MEM     guest memory in MiB (default 1024)
#   FERRITE_QEMU_SMP     guest vCPUs (default 2)
#   FERRITE_QEMU_NETDEV_OPTS  appended to "-netdev user,id=n0" (e.g.
#                        ",hostfwd=tcp:127.0.0.1:14420-:4420")
#   FERRITE_GUEST_HOSTNQN  host NQN for the guest (default: the one prepare.sh
#                        generated, see hostnqn in the cache dir / bed.env)
#   FERRITE_GUEST_BINS   space-separated host binaries to add to the guest as
#                        /usr/local/bin/NAME (debug info stripped), with the
#                        libraries ldd lists that the base initramfs lacks
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    sed -n '3p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2
    exit 2
}
log() { printf 'run-guest.sh: %s\n' "$*" >&2; }

[ $# -ge 1 ] || usage
SCRIPT=$1
shift
[ -f "$SCRIPT" ] || { log "no such guest script: $SCRIPT"; exit 2; }
TIMEOUT=300
if [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    TIMEOUT=$1
    shift
fi
for kv in "$@"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { log "not KEY=VALUE: $kv"; exit 2; }
done

"$HERE/prepare.sh"
CACHE="${FERRITE_QEMU_CACHE:-${FERRITE_CACHE:-$HOME/.cache/ferrite}/qemu}"
# shellcheck source=/dev/null
. "$CACHE/bed.env"
case "${FERRITE_QEMU_BED:-6.1}" in
    6.1) ;;
    6.12)
        # shellcheck source=/dev/null
        . "$CACHE/bed-6.12.env" ;;
    *) log "FERRITE_QEMU_BED must be 6.1 or 6.12, not ${FERRITE_QEMU_BED}"; exit 2 ;;
esac

# --- log file --------------------------------------------------------------
name=$(basename "$SCRIPT" .sh)
stamp=$(date +%Y%m%d-%H%M%S)
if [ -n "${FERRITE_QEMU_LOG:-}" ]; then
    if [[ $FERRITE_QEMU_LOG == *.log ]]; then
        LOG=$FERRITE_QEMU_LOG
        mkdir -p "$(dirname "$LOG")"
    else
        mkdir -p "$FERRITE_QEMU_LOG"
        LOG="$FERRITE_QEMU_LOG/$name-$stamp-$$.log"
    fi
else
    LOG="$(mktemp -d /tmp/ferrite-qemu.XXXXXX)/$name-$stamp.log"
fi

# --- appended cpio ---------------------------------------------------------
WORK=$(mktemp -d /tmp/ferrite-qemu-work.XXXXXX)
QEMU_PID=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$QEMU_PID" ]; then kill -KILL "$QEMU_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/root/guest" "$WORK/root/etc/nvme"
install -m 0755 "$SCRIPT" "$WORK/root/test.sh"
for f in "$HERE"/guest/*; do
    [ -f "$f" ] && install -m 0755 "$f" "$WORK/root/guest/"
done
{
    echo "# KEY=VALUE pairs given to run-guest.sh"
    for kv in "$@"; do
        key=${kv%%=*}
        val=${kv#*=}
        printf "%s='%s'\n" "$key" "${val//\'/\'\\\'\'}"
    done
} >"$WORK/root/test.env"
# Extra binaries (e.g. ferrite-csi-node) and their libraries.
for bin in ${FERRITE_GUEST_BINS:-}; do
    [ -x "$bin" ] || { log "FERRITE_GUEST_BINS: not an executable: $bin"; exit 2; }
    mkdir -p "$WORK/root/usr/local/bin"
    dst="$WORK/root/usr/local/bin/$(basename "$bin")"
    if ! strip --strip-debug -o "$dst" "$bin" 2>/dev/null; then cp "$bin" "$dst"; fi
    chmod 0755 "$dst"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        # The initramfs has a merged /usr (/lib -> usr/lib): store under /usr.
        case $lib in /usr/*) rel=$lib ;; *) rel=/usr$lib ;; esac
        if [ -e "$CACHE/initramfs-root$rel" ] || [ -e "$WORK/root$rel" ]; then continue; fi
        mkdir -p "$WORK/root$(dirname "$rel")"
        cp -L "$lib" "$WORK/root$rel"
    done
done
if [ -n "${FERRITE_GUEST_HOSTNQN:-}" ]; then
    echo "$FERRITE_GUEST_HOSTNQN" >"$WORK/root/etc/nvme/hostnqn"
    hostid=${FERRITE_GUEST_HOSTNQN##*uuid:}
    [ "$hostid" != "$FERRITE_GUEST_HOSTNQN" ] && echo "$hostid" >"$WORK/root/etc/nvme/hostid"
else
    rmdir "$WORK/root/etc/nvme" "$WORK/root/etc"
fi
(cd "$WORK/root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
    | gzip -1 >"$WORK/extra.cpio.gz"
cat "$FERRITE_QEMU_INITRD" "$WORK/extra.cpio.gz" >"$WORK/initrd.cpio.gz"

# --- boot ------------------------------------------------------------------
append="console=ttyS0 panic=-1 quiet mitigations=off ${FERRITE_QEMU_APPEND:-}"
# shellcheck disable=SC2054 # the commas belong to QEMU option values
cmd=("$FERRITE_QEMU_BIN" -L "$FERRITE_QEMU_FW" -nodefaults -nographic
    -serial stdio -monitor none -no-reboot
    -accel tcg -cpu max -m "${FERRITE_QEMU_MEM:-1024}" -smp "${FERRITE_QEMU_SMP:-2}"
    -kernel "$FERRITE_QEMU_KERNEL" -initrd "$WORK/initrd.cpio.gz" -append "$append"
    -netdev "user,id=n0${FERRITE_QEMU_NETDEV_OPTS:-}"
    -device virtio-net-pci,netdev=n0,romfile=)

log "guest script $SCRIPT, kernel $FERRITE_QEMU_KVER, timeout ${TIMEOUT}s, log $LOG"
start=$(date +%s)
: >"$LOG"
"${cmd[@]}" </dev/null >>"$LOG" 2>&1 &
QEMU_PID=$!
# Echo the console live, without CRs and escapes (SeaBIOS resets the terminal).
tail -n +1 -f --pid="$QEMU_PID" "$LOG" | tr -d '\033\r' &
TAIL_PID=$!
timed_out=0
while kill -0 "$QEMU_PID" 2>/dev/null; do
    if [ $(($(date +%s) - start)) -ge "$TIMEOUT" ]; then
        timed_out=1
        kill -TERM "$QEMU_PID" 2>/dev/null || true
        sleep 2
        kill -KILL "$QEMU_PID" 2>/dev/null || true
        break
    fi
    sleep 0.5
done
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=
wait "$TAIL_PID" 2>/dev/null || true
elapsed=$(($(date +%s) - start))

# --- verdict ---------------------------------------------------------------
if tr -d '\r' <"$LOG" | grep -q 'FERRITE-GUEST-RESULT: PASS'; then
    log "PASS in ${elapsed}s ($SCRIPT), log $LOG"
    exit 0
fi
if [ "$timed_out" = 1 ]; then
    reason="TIMEOUT after ${TIMEOUT}s"
elif tr -d '\r' <"$LOG" | grep -q 'FERRITE-GUEST-RESULT: FAIL'; then
    reason="FAIL"
else
    reason="no result marker (QEMU exited early)"
fi
{
    echo "run-guest.sh: ---- last 60 console lines ----"
    tr -d '\033\r' <"$LOG" | tail -n 60
    echo "run-guest.sh: ---- steps and failures ----"
    tr -d '\r' <"$LOG" | grep -E '^(STEP|FAIL):' || echo "(none)"
    echo "run-guest.sh: ---- end ----"
} >&2
log "$reason in ${elapsed}s ($SCRIPT), log $LOG"
exit 1
