#!/bin/sh
# selfcheck-nvmet.sh - guest script proving the QEMU bed works, with no
# Ferrite involved: the kernel's own nvmet target (configfs, a loop device
# over a tmpfs file, nvmet-tcp on 127.0.0.1:4420) and the kernel initiator.
# discover, connect, find the namespace through sysfs, mkfs.ext4, mount, write
# 8 MiB, sha256, remount, sha256 again, disconnect, check dmesg.
# Run on the host:  e2e/qemu/run-guest.sh e2e/qemu/guest/selfcheck-nvmet.sh
# Optional test.env: SELFCHECK_TRACE=1 prints the host's admin command trace.
# shellcheck shell=dash disable=SC3040,SC3028 # busybox ash: pipefail, RANDOM
set -eu
set -o pipefail
# shellcheck source=lib.sh
. /guest/lib.sh

NQN=nqn.2024-01.io.ferrite:selfcheck
ADDR=127.0.0.1
PORT=4420
MNT=/mnt/selfcheck
t0=$(uptime_s)

step "set up the kernel nvmet target"
nvmet_setup "$NQN" "$ADDR" "$PORT" 64
[ "${SELFCHECK_TRACE:-0}" = 1 ] && nvme_trace_start

step "nvme discover"
out=$(nvme discover -t tcp -a "$ADDR" -s "$PORT") || fail "nvme discover failed: $out"
echo "$out"
echo "$out" | grep -q "subnqn: *$NQN\$" || fail "discovery log does not list $NQN"

step "nvme connect"
run nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN"
dev=$(nvme_wait_ns_dev "$NQN" 10) || fail "no namespace block device for $NQN in sysfs"
info "namespace device: $dev ($(blockdev_bytes "$dev") bytes)"
for c in $(nvme_ctrls "$NQN"); do nvme_show_ctrl "$c"; done

step "mkfs.ext4 + write 8 MiB + sha256"
run mkfs.ext4 -q -F "$dev"
mkdir -p "$MNT"
run mount -t ext4 "$dev" "$MNT"
run dd if=/dev/urandom of="$MNT/data.bin" bs=1M count=8 2>/dev/null
sync
sum1=$(sha256sum "$MNT/data.bin" | cut -d' ' -f1)
info "sha256 written: $sum1"
run umount "$MNT"

step "remount + sha256"
run mount -t ext4 "$dev" "$MNT"
sum2=$(sha256sum "$MNT/data.bin" | cut -d' ' -f1)
info "sha256 read:    $sum2"
[ "$sum1" = "$sum2" ] || fail "sha256 mismatch after remount"
run umount "$MNT"
run e2fsck -f -n "$dev"

step "nvme disconnect"
run nvme disconnect -n "$NQN"
nvme_wait_ctrls_gone "$NQN" 10 || fail "controller of $NQN still in /sys/class/nvme"

step "dmesg"
dmesg >/tmp/dmesg.txt
nvme_dmesg /tmp/dmesg.txt
if nvme_dmesg_errors /tmp/dmesg.txt >/tmp/dmesg-errors.txt; then
    cat /tmp/dmesg-errors.txt
    fail "NVMe errors in dmesg"
fi
[ "${SELFCHECK_TRACE:-0}" = 1 ] && nvme_trace_dump

echo "selfcheck-nvmet: OK in $(echo "$(uptime_s) $t0" | awk '{printf "%.1f", $1 - $2}')s"
