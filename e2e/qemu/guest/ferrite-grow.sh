#!/bin/sh
# ferrite-grow.sh - guest script: the Linux NVMe/TCP initiator on a MIRRORED Ferrite volume
# that the host grows online through the node API (ResizeReplica on both replicas, then
# ResizeVolume): the kernel must learn the new size from the target's namespace-change event,
# and ext4 grows online into it.
#
# Variables (test.env):
#   FERRITE_ADDR     target address as seen from the guest (default 10.0.2.2)
#   FERRITE_PORT     port of the node serving the volume (required)
#   FERRITE_NQN      the volume's subsystem NQN (required)
# The guest's host NQN (the volume's access list names it) comes from run-guest.sh's
# FERRITE_GUEST_HOSTNQN.
# Steps: connect, mkfs.ext4, mount, write a file; print "FERRITE-GROW: READY" (the host then
# grows the volume); wait until the block device is larger, resize2fs online, write a file
# larger than the old filesystem could hold, remount, verify both files, e2fsck, disconnect,
# no I/O errors in dmesg.
# shellcheck shell=dash disable=SC3040
set -eu
set -o pipefail
# shellcheck source=lib.sh
. /guest/lib.sh

FERRITE_ADDR=${FERRITE_ADDR:-10.0.2.2}
[ -n "${FERRITE_PORT:-}" ] || fail "FERRITE_PORT is not set (test.env)"
[ -n "${FERRITE_NQN:-}" ] || fail "FERRITE_NQN is not set (test.env)"
MNT=/mnt/ferrite
mkdir -p "$MNT"
sum() { sha256sum "$1" | cut -d' ' -f1; }
fs_bytes() { df -k "$MNT" | awk 'NR==2 { print $2 * 1024 }'; }

step "connect to the mirrored volume"
run nvme connect -t tcp -a "$FERRITE_ADDR" -s "$FERRITE_PORT" -n "$FERRITE_NQN"
DEV=$(nvme_wait_ns_dev "$FERRITE_NQN" 20) || fail "no namespace device for $FERRITE_NQN"
OLD=$(blockdev_bytes "$DEV")
info "device $DEV ($OLD bytes)"

step "mkfs.ext4 and a first file"
run mkfs.ext4 -q -F "$DEV"
run mount -t ext4 "$DEV" "$MNT"
dd if=/dev/urandom of="$MNT/before" bs=1M count=8 2>/dev/null || fail "writing the first file"
sync || fail "sync"
S1=$(sum "$MNT/before")
FS_OLD=$(fs_bytes)
info "filesystem $FS_OLD bytes"

step "the host grows the volume"
echo "FERRITE-GROW: READY $OLD"
NEW=$OLD
i=0
while [ "$NEW" -le "$OLD" ]; do
    i=$((i + 1))
    [ "$i" -le 180 ] || fail "the device stayed at $OLD bytes (no namespace change seen)"
    sleep 0.5
    NEW=$(blockdev_bytes "$DEV")
done
info "device grew to $NEW bytes after ~$((i / 2)) s"

step "resize2fs online and use the new space"
run resize2fs "$DEV"
FS_NEW=$(fs_bytes)
info "filesystem now $FS_NEW bytes"
[ "$FS_NEW" -gt "$FS_OLD" ] || fail "the filesystem did not grow"
# More than the old filesystem could hold at all.
BIG=$((FS_OLD / 1048576 + 16))
dd if=/dev/urandom of="$MNT/after" bs=1M count="$BIG" conv=fsync 2>/dev/null || fail "writing $BIG MiB into the grown filesystem"
S2=$(sum "$MNT/after")
echo "FERRITE-GROW: WROTE ${BIG}MiB"

step "remount and verify"
run umount "$MNT"
run mount -t ext4 "$DEV" "$MNT"
[ "$(sum "$MNT/before")" = "$S1" ] || fail "the first file changed"
[ "$(sum "$MNT/after")" = "$S2" ] || fail "the file in the new space does not verify"
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
