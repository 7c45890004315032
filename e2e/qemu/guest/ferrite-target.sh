#!/bin/sh
# ferrite-target.sh - guest script: the Linux 6.1 NVMe/TCP initiator against
# a Ferrite target that runs on the host (reached from the guest as 10.0.2.2).
#
# Variables (from test.env, i.e. run-guest.sh KEY=VALUE arguments):
#   FERRITE_ADDR     target address as seen from the guest (default 10.0.2.2)
#   FERRITE_PORT     target TCP port (required)
#   FERRITE_NQN      subsystem NQN with an allowed namespace >= 64 MiB (required)
#   FERRITE_BAD_NQN  a subsystem NQN the target does not have (required)
#   FERRITE_NSID     namespace to use (default: the first one found)
#   FERRITE_RANDOM_READS  number of random 4 KiB direct reads (default 64)
#   FERRITE_TRACE=1  print the admin/fabrics commands the host sent and a
#                    count of I/O commands (tracefs nvme events) at the end
# Steps (fail fast, each announced with "STEP:"):
#   (a) discover: the discovery log lists FERRITE_NQN
#   (b) connect (default queues), sysfs lookup, mkfs.ext4, write 8 MiB,
#       sha256 across a remount, random direct 4 KiB reads, disconnect, the
#       controller is gone from /sys/class/nvme
#   (c) connect -i 2: queue_count is 3, data of (b) persists, write more
#   (d) connect -g -G (header and data digests): data persists, write more,
#       e2fsck
#   (e) connect to FERRITE_BAD_NQN fails and leaves no controller
#   (f) dmesg taken before (e) has no NVMe error lines
# shellcheck shell=dash disable=SC3040,SC3028 # busybox ash: pipefail, RANDOM
set -eu
set -o pipefail
# shellcheck source=lib.sh
. /guest/lib.sh

FERRITE_ADDR=${FERRITE_ADDR:-10.0.2.2}
[ -n "${FERRITE_PORT:-}" ] || fail "FERRITE_PORT is not set (test.env)"
[ -n "${FERRITE_NQN:-}" ] || fail "FERRITE_NQN is not set (test.env)"
[ -n "${FERRITE_BAD_NQN:-}" ] || fail "FERRITE_BAD_NQN is not set (test.env)"
NSID=${FERRITE_NSID:-}
RANDOM_READS=${FERRITE_RANDOM_READS:-64}
MNT=/mnt/ferrite
DEV_TIMEOUT=20 # seconds for the namespace block device to show up
GONE_TIMEOUT=10
T_START=$(uptime_s)
TARGET="tcp $FERRITE_ADDR:$FERRITE_PORT"
mkdir -p "$MNT"

elapsed() { echo "$(uptime_s) $T_START" | awk '{printf "%.1f", $1 - $2}'; }

on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "--- ferrite-target.sh failed (exit $rc) at +$(elapsed)s; NVMe kernel log: ---"
        dmesg | grep -iE 'nvme|nvmet' || true
        echo "--- controllers: ---"
        for c in /sys/class/nvme/nvme*; do
            [ -e "$c" ] && nvme_show_ctrl "$(basename "$c")"
        done
        [ "${FERRITE_TRACE:-0}" = 1 ] && nvme_trace_dump
    fi
    return 0
}
trap on_exit EXIT

[ "${FERRITE_TRACE:-0}" = 1 ] && nvme_trace_start
info "target $TARGET, subsystem $FERRITE_NQN, host $(cat /etc/nvme/hostnqn)"

# connect_ns LABEL [nvme connect options...]: connect to FERRITE_NQN, wait for
# the namespace block device; sets DEV and CTRL.
connect_ns() {
    local label="$1" out
    shift
    echo "  + nvme connect -t tcp -a $FERRITE_ADDR -s $FERRITE_PORT -n $FERRITE_NQN $*"
    out=$(nvme connect -t tcp -a "$FERRITE_ADDR" -s "$FERRITE_PORT" -n "$FERRITE_NQN" "$@" 2>&1) \
        || fail "$label: nvme connect failed: $out"
    [ -n "$out" ] && info "$out"
    DEV=$(nvme_wait_ns_dev "$FERRITE_NQN" "$DEV_TIMEOUT" "$NSID") \
        || fail "$label: no namespace block device of $FERRITE_NQN in sysfs after ${DEV_TIMEOUT}s"
    CTRL=$(nvme_ctrls "$FERRITE_NQN")
    [ "$(echo "$CTRL" | wc -w)" -eq 1 ] || fail "$label: expected 1 controller of $FERRITE_NQN, found: $CTRL"
    info "$label: controller $CTRL, namespace device $DEV ($(blockdev_bytes "$DEV") bytes)"
    nvme_show_ctrl "$CTRL"
    [ "$(nvme_ctrl_attr "$CTRL" state)" = live ] || fail "$label: controller $CTRL is not live"
}

# disconnect_ns LABEL: disconnect FERRITE_NQN and check its controller is gone.
disconnect_ns() {
    local label="$1" out
    echo "  + nvme disconnect -n $FERRITE_NQN"
    out=$(nvme disconnect -n "$FERRITE_NQN" 2>&1) || fail "$label: nvme disconnect failed: $out"
    info "$out"
    nvme_wait_ctrls_gone "$FERRITE_NQN" "$GONE_TIMEOUT" \
        || fail "$label: controller $(nvme_ctrls "$FERRITE_NQN") still in /sys/class/nvme after disconnect"
    [ ! -e "/sys/class/nvme/$CTRL" ] || fail "$label: /sys/class/nvme/$CTRL still exists"
    info "$label: controller gone from /sys/class/nvme"
}

# sum FILE: its sha256.
sum() { sha256sum "$1" | cut -d' ' -f1; }

# write_file FILE MIB: random data, synced; prints its sha256.
write_file() {
    dd if=/dev/urandom of="$1" bs=1M count="$2" 2>/dev/null || fail "writing $1 failed"
    sync || fail "sync failed"
    sum "$1"
}

# check_file FILE SUM LABEL
check_file() {
    local got
    got=$(sum "$1") || fail "$3: reading $1 failed"
    [ "$got" = "$2" ] || fail "$3: sha256 of $1 is $got, expected $2"
    info "$3: $1 sha256 ok ($got)"
}

mount_fs() { run mount -t ext4 "$DEV" "$MNT"; }
umount_fs() { run umount "$MNT"; }

# random_reads DEV N: N direct 4 KiB reads at random offsets, done twice; the
# two passes must return the same data.
random_reads() {
    local dev="$1" n="$2" blocks i off s t0
    blocks=$(($(blockdev_bytes "$dev") / 4096))
    [ "$blocks" -gt 0 ] || fail "size of $dev is 0"
    t0=$(uptime_s)
    : >/tmp/rr.1
    i=0
    while [ "$i" -lt "$n" ]; do
        off=$(((RANDOM * 32768 + RANDOM) % blocks))
        dd if="$dev" of=/tmp/rr.blk bs=4096 count=1 skip="$off" iflag=direct 2>/dev/null \
            || fail "direct 4 KiB read of $dev at block $off failed"
        [ "$(wc -c </tmp/rr.blk)" -eq 4096 ] || fail "short read of $dev at block $off"
        echo "$off $(sum /tmp/rr.blk)" >>/tmp/rr.1
        i=$((i + 1))
    done
    : >/tmp/rr.2
    while read -r off s; do
        dd if="$dev" of=/tmp/rr.blk bs=4096 count=1 skip="$off" iflag=direct 2>/dev/null \
            || fail "direct 4 KiB re-read of $dev at block $off failed"
        echo "$off $(sum /tmp/rr.blk)" >>/tmp/rr.2
    done </tmp/rr.1
    cmp -s /tmp/rr.1 /tmp/rr.2 || fail "random re-reads of $dev returned different data"
    info "$((n * 2)) direct 4 KiB reads at $n random offsets of $blocks blocks: consistent" \
        "($(echo "$(uptime_s) $t0" | awk '{printf "%.1f", $1 - $2}')s)"
}

# --- (a) -------------------------------------------------------------------
step "(a) nvme discover -t tcp -a $FERRITE_ADDR -s $FERRITE_PORT"
out=$(nvme discover -t tcp -a "$FERRITE_ADDR" -s "$FERRITE_PORT" 2>&1) \
    || fail "(a) nvme discover failed: $out"
echo "$out"
echo "$out" | awk -v nqn="$FERRITE_NQN" '$1 == "subnqn:" && $2 == nqn { found = 1 } END { exit !found }' \
    || fail "(a) the discovery log does not list $FERRITE_NQN"
[ "$(nvme_ctrl_count)" -eq 0 ] || fail "(a) a controller is left after discover: $(ls /sys/class/nvme)"
info "(a) discovery log lists $FERRITE_NQN"

# --- (b) -------------------------------------------------------------------
step "(b) connect (default queues), mkfs.ext4, write 8 MiB, remount, sha256"
connect_ns "(b)"
[ "$(blockdev_bytes "$DEV")" -ge $((64 * 1024 * 1024)) ] || fail "(b) $DEV is smaller than 64 MiB"
run mkfs.ext4 -q -F "$DEV"
mount_fs
SUM1=$(write_file "$MNT/file1.bin" 8)
info "(b) wrote $MNT/file1.bin, sha256 $SUM1"
umount_fs
mount_fs
check_file "$MNT/file1.bin" "$SUM1" "(b)"
step "(b) random 4 KiB direct reads of $DEV"
random_reads "$DEV" "$RANDOM_READS"
umount_fs
step "(b) disconnect"
disconnect_ns "(b)"

# --- (c) -------------------------------------------------------------------
step "(c) connect -i 2 (two I/O queues), data persists, write more"
connect_ns "(c)" -i 2
qc=$(nvme_ctrl_attr "$CTRL" queue_count)
if [ "$qc" = "?" ]; then
    info "(c) queue_count not visible in sysfs"
else
    [ "$qc" -eq 3 ] || fail "(c) queue_count is $qc, expected 3 (admin + 2 I/O queues)"
    info "(c) queue_count $qc = admin + 2 I/O queues"
fi
mount_fs
check_file "$MNT/file1.bin" "$SUM1" "(c)"
SUM2=$(write_file "$MNT/file2.bin" 4)
info "(c) wrote $MNT/file2.bin, sha256 $SUM2"
umount_fs
mount_fs
check_file "$MNT/file2.bin" "$SUM2" "(c)"
umount_fs
disconnect_ns "(c)"

# --- (d) -------------------------------------------------------------------
step "(d) connect -g -G (header + data digests), data persists, write more"
connect_ns "(d)" -g -G
mount_fs
check_file "$MNT/file1.bin" "$SUM1" "(d)"
check_file "$MNT/file2.bin" "$SUM2" "(d)"
SUM3=$(write_file "$MNT/file3.bin" 4)
info "(d) wrote $MNT/file3.bin, sha256 $SUM3"
umount_fs
mount_fs
check_file "$MNT/file3.bin" "$SUM3" "(d)"
umount_fs
run e2fsck -f -n "$DEV"
random_reads "$DEV" 16
disconnect_ns "(d)"

dmesg >/tmp/dmesg-before-bad.txt

# --- (e) -------------------------------------------------------------------
step "(e) connect to the nonexistent subsystem $FERRITE_BAD_NQN must fail"
[ "$(nvme_ctrl_count)" -eq 0 ] || fail "(e) controllers left before the test: $(ls /sys/class/nvme)"
if out=$(nvme connect -t tcp -a "$FERRITE_ADDR" -s "$FERRITE_PORT" -n "$FERRITE_BAD_NQN" 2>&1); then
    echo "$out"
    nvme disconnect -n "$FERRITE_BAD_NQN" || true
    fail "(e) nvme connect to $FERRITE_BAD_NQN succeeded"
fi
info "(e) nvme connect failed as expected: $out"
sleep 0.5
[ -z "$(nvme_ctrls "$FERRITE_BAD_NQN")" ] || fail "(e) a controller of $FERRITE_BAD_NQN exists"
[ "$(nvme_ctrl_count)" -eq 0 ] || fail "(e) controllers left in /sys/class/nvme: $(ls /sys/class/nvme)"
info "(e) no controller in /sys/class/nvme"

# --- (f) -------------------------------------------------------------------
step "(f) dmesg before (e) has no NVMe errors"
echo "--- NVMe lines of dmesg before (e) ---"
nvme_dmesg /tmp/dmesg-before-bad.txt
echo "---"
if nvme_dmesg_errors /tmp/dmesg-before-bad.txt >/tmp/dmesg-errors.txt; then
    echo "NVMe error lines:"
    cat /tmp/dmesg-errors.txt
    fail "(f) the kernel logged NVMe errors before (e)"
fi
info "(f) no NVMe error lines"

echo "--- dmesg | grep -i nvme (whole run) ---"
dmesg | grep -i nvme || true
[ "${FERRITE_TRACE:-0}" = 1 ] && nvme_trace_dump
echo "ferrite-target.sh: all steps passed in $(elapsed)s"
