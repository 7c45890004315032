#!/bin/sh
# ferrite-mirror.sh - guest script: the Linux NVMe/TCP initiator on a MIRRORED Ferrite volume
# while the host kills one replica's process mid-write.
#
# Variables (test.env):
#   FERRITE_ADDR   target address as seen from the guest (default 10.0.2.2)
#   FERRITE_PORT   port of the node serving the volume (required)
#   FERRITE_NQN    the volume's subsystem NQN (required)
#   FERRITE_BIG_MIB  size of the write during which the host kills a replica (default 24)
# Steps: connect, mkfs.ext4, mount, write and sync a first file; print the marker
# "FERRITE-MIRROR: BIG WRITE" (the host watches the console for it and kills a replica's
# process); write and fsync a big file; remount; both files' sha256 match; disconnect; no
# I/O errors in dmesg.
# shellcheck shell=dash disable=SC3040
set -eu
set -o pipefail
# shellcheck source=lib.sh
. /guest/lib.sh

FERRITE_ADDR=${FERRITE_ADDR:-10.0.2.2}
[ -n "${FERRITE_PORT:-}" ] || fail "FERRITE_PORT is not set (test.env)"
[ -n "${FERRITE_NQN:-}" ] || fail "FERRITE_NQN is not set (test.env)"
BIG=${FERRITE_BIG_MIB:-24}
MNT=/mnt/ferrite
mkdir -p "$MNT"
sum() { sha256sum "$1" | cut -d' ' -f1; }

step "connect to the mirrored volume"
run nvme connect -t tcp -a "$FERRITE_ADDR" -s "$FERRITE_PORT" -n "$FERRITE_NQN"
DEV=$(nvme_wait_ns_dev "$FERRITE_NQN" 20) || fail "no namespace device for $FERRITE_NQN"
info "device $DEV ($(blockdev_bytes "$DEV") bytes)"

step "mkfs.ext4 and a first file (both replicas healthy)"
run mkfs.ext4 -q -F "$DEV"
run mount -t ext4 "$DEV" "$MNT"
dd if=/dev/urandom of="$MNT/before" bs=1M count=4 2>/dev/null || fail "writing the first file"
sync || fail "sync"
S1=$(sum "$MNT/before")

step "big write while the host kills a replica"
echo "FERRITE-MIRROR: BIG WRITE"
dd if=/dev/urandom of="$MNT/during" bs=1M count="$BIG" conv=fsync 2>/dev/null || fail "the big write failed (an I/O error reached the host)"
sync || fail "sync after the big write"
S2=$(sum "$MNT/during")
echo "FERRITE-MIRROR: WRITE DONE"

step "remount and verify"
run umount "$MNT"
run mount -t ext4 "$DEV" "$MNT"
[ "$(sum "$MNT/before")" = "$S1" ] || fail "the first file changed"
[ "$(sum "$MNT/during")" = "$S2" ] || fail "the file written during the fault does not verify"
info "both files verify"
run umount "$MNT"
run e2fsck -fn "$DEV"

step "disconnect"
run nvme disconnect -n "$FERRITE_NQN"

step "dmesg"
if dmesg | grep -iE 'I/O error|Buffer I/O|EXT4-fs error|blk_update_request|critical medium|nvme.*(timeout|reset|failed)'; then
    fail "the kernel logged I/O errors"
fi
info "no I/O errors in dmesg"
