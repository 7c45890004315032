#!/bin/sh
# ferrite-auth.sh - guest script (6.12 bed): the Linux NVMe/TCP initiator
# authenticates to a Ferrite target on the host with DH-HMAC-CHAP.
#
# Variables (from test.env, i.e. run-guest.sh KEY=VALUE arguments):
#   FERRITE_ADDR       target address as seen from the guest (default 10.0.2.2)
#   FERRITE_PORT       target TCP port (required)
#   FERRITE_NQN        subsystem NQN; this guest's host NQN must have keys there
#   FERRITE_HOST_KEY   the host's DH-HMAC-CHAP secret (DHHC-1:...)
#   FERRITE_CTRL_KEY   the controller secret the target holds for this host
#   FERRITE_WRONG_KEY  a well-formed secret the target does not hold
# Steps (fail fast, each announced with "STEP:"):
#   (a) connect --dhchap-secret: the kernel logs "authenticated", 2 MiB written
#       and read back (page cache dropped), disconnect
#   (b) connect --dhchap-secret --dhchap-ctrl-secret (bidirectional): the kernel
#       logs "controller authenticated", the data of (a) is there, disconnect
#   (c) a wrong host secret, (d) no secret, (e) a wrong controller secret: each
#       connect fails and leaves no controller
# shellcheck shell=dash disable=SC3040,SC3028 # busybox ash: pipefail
set -eu
set -o pipefail
# shellcheck source=lib.sh
. /guest/lib.sh

FERRITE_ADDR=${FERRITE_ADDR:-10.0.2.2}
for v in FERRITE_PORT FERRITE_NQN FERRITE_HOST_KEY FERRITE_CTRL_KEY FERRITE_WRONG_KEY; do
    eval "[ -n \"\${$v:-}\" ]" || fail "$v is not set (test.env)"
done
DEV_TIMEOUT=20
GONE_TIMEOUT=10

on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "--- ferrite-auth.sh failed (exit $rc); NVMe kernel log: ---"
        dmesg | grep -iE 'nvme|nvmet' || true
    fi
    return 0
}
trap on_exit EXIT

info "kernel $(uname -r), target tcp $FERRITE_ADDR:$FERRITE_PORT, subsystem $FERRITE_NQN, host $(cat /etc/nvme/hostnqn)"

# try_connect ARGS...: nvme connect to FERRITE_NQN with ARGS; prints its output.
try_connect() {
    echo "  + nvme connect -t tcp -a $FERRITE_ADDR -s $FERRITE_PORT -n $FERRITE_NQN $(echo "$*" | sed 's/DHHC-1:[^ ]*/<secret>/g')"
    nvme connect -t tcp -a "$FERRITE_ADDR" -s "$FERRITE_PORT" -n "$FERRITE_NQN" "$@" 2>&1
}

# connected LABEL ARGS...: connect (must succeed), wait for the namespace; sets DEV, CTRL.
connected() {
    local label="$1" out
    shift
    out=$(try_connect "$@") || fail "$label: nvme connect failed: $out"
    DEV=$(nvme_wait_ns_dev "$FERRITE_NQN" "$DEV_TIMEOUT") \
        || fail "$label: no namespace block device of $FERRITE_NQN after ${DEV_TIMEOUT}s"
    CTRL=$(nvme_ctrls "$FERRITE_NQN")
    [ "$(echo "$CTRL" | wc -w)" -eq 1 ] || fail "$label: expected 1 controller, found: $CTRL"
    [ "$(nvme_ctrl_attr "$CTRL" state)" = live ] || fail "$label: controller $CTRL is not live"
    info "$label: controller $CTRL (queue_count $(nvme_ctrl_attr "$CTRL" queue_count)), device $DEV"
}

disconnect() {
    run nvme disconnect -n "$FERRITE_NQN"
    nvme_wait_ctrls_gone "$FERRITE_NQN" "$GONE_TIMEOUT" || fail "controller of $FERRITE_NQN still present"
}

# refused LABEL ARGS...: the connect must fail and leave no controller behind.
refused() {
    local label="$1" out
    shift
    if out=$(try_connect "$@"); then
        fail "$label: nvme connect succeeded: $out"
    fi
    info "$label: refused as expected: $out"
    nvme_wait_ctrls_gone "$FERRITE_NQN" "$GONE_TIMEOUT" || fail "$label: a controller was left behind"
}

step "(a) unidirectional DH-HMAC-CHAP"
dmesg -c >/dev/null
connected "(a)" --dhchap-secret="$FERRITE_HOST_KEY"
dmesg | grep -E 'qid 0: authenticated' || fail "(a) the kernel did not log the authentication"
dd if=/dev/urandom of=/tmp/data bs=64k count=32 2>/dev/null
run dd if=/tmp/data of="$DEV" bs=64k count=32 conv=fsync
echo 3 >/proc/sys/vm/drop_caches
dd if="$DEV" of=/tmp/back bs=64k count=32 2>/dev/null || fail "(a) reading back failed"
cmp /tmp/data /tmp/back || fail "(a) data read back differs"
info "(a) 2 MiB written and read back"
disconnect

step "(b) bidirectional DH-HMAC-CHAP"
dmesg -c >/dev/null
connected "(b)" --dhchap-secret="$FERRITE_HOST_KEY" --dhchap-ctrl-secret="$FERRITE_CTRL_KEY"
dmesg | grep -E 'qid 0: controller authenticated' || fail "(b) the kernel did not authenticate the controller"
dd if="$DEV" of=/tmp/back bs=64k count=32 2>/dev/null || fail "(b) reading failed"
cmp /tmp/data /tmp/back || fail "(b) the data of (a) differs"
run dd if=/dev/zero of="$DEV" bs=64k count=1 seek=100 conv=fsync
disconnect

step "(c) a wrong host secret is refused"
refused "(c)" --dhchap-secret="$FERRITE_WRONG_KEY"

step "(d) no secret is refused"
refused "(d)"

step "(e) a wrong controller secret is refused"
refused "(e)" --dhchap-secret="$FERRITE_HOST_KEY" --dhchap-ctrl-secret="$FERRITE_WRONG_KEY"

echo "--- NVMe kernel log of the refusals ---"
dmesg | grep -iE 'nvme' | tail -n 20 || true
step "done"
