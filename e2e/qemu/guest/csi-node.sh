#!/bin/sh
# csi-node.sh - guest script: Ferrite's CSI node plugin (ferrite-csi-node) runs in the
# guest on a unix socket and attaches volumes that a Ferrite target on the host serves,
# through the Linux kernel NVMe/TCP initiator. ferrite-csi-client makes each CSI call.
# Both binaries come in through FERRITE_GUEST_BINS (run-guest.sh) as /usr/local/bin/*.
#
# Variables (test.env):
#   CSI_TARGET    HOST:PORT of the target as seen from the guest (10.0.2.2:PORT)
#   CSI_CTL       HOST:PORT of the test's side channel: "GROW NQN BYTES" grows a
#                 namespace, "REMOVE NQN NSID" removes one; it answers "OK ..."
#   CSI_NQN_FS    subsystem of an ext4 volume (>= 128 MiB; grown to CSI_FS_GROW bytes)
#   CSI_NQN_BLK   subsystem of a raw block volume (>= 16 MiB; removed in step (9))
#   CSI_NQN_XFS   subsystem of an xfs volume (>= 320 MiB; grown to CSI_XFS_GROW bytes)
#   CSI_BAD_NQN   a subsystem the target does not have
#   CSI_FS_GROW, CSI_XFS_GROW  sizes in bytes the test grows the volumes to
# Steps (fail fast, each announced with "STEP:"):
#   (0) a missing host NQN is generated and kept across restarts
#   (1) identity, NodeGetInfo (node ID = host NQN, topology), capabilities
#   (2) stage ext4 (formats the blank device, mount flags), repeated stage is a no-op
#   (3) publish, write a file, stats; repeated publish is a no-op
#   (4) read-only publish refuses writes; a conflicting publish is refused
#   (5) unstage while published is refused (FailedPrecondition)
#   (6) unpublish x2, unstage x2 -> the controller is gone from /sys/class/nvme
#   (7) stage again: same filesystem (no reformat), the file is intact
#   (8) the namespace grows on the target; NodeExpandVolume grows the mounted ext4
#   (9) raw block: stage, publish, direct I/O, stats; the namespace disappears ->
#       stats report an abnormal condition; unpublish/unstage still clean up
#   (10) xfs: stage (mkfs.xfs), publish, write, grow online with xfs_growfs
#   (11) a wrong NQN fails with NotFound and leaves nothing connected; an unreachable
#        port is Unavailable; a missing context is InvalidArgument
#   (12) no controller left, no state left, the plugin exits cleanly on SIGTERM
# shellcheck shell=dash disable=SC3040,SC3028 # busybox ash: pipefail, RANDOM
set -eu
set -o pipefail
# shellcheck source=lib.sh
. /guest/lib.sh
export PATH=/usr/local/bin:$PATH

for v in CSI_TARGET CSI_CTL CSI_NQN_FS CSI_NQN_BLK CSI_NQN_XFS CSI_BAD_NQN CSI_FS_GROW CSI_XFS_GROW; do
    eval "[ -n \"\${$v:-}\" ]" || fail "$v is not set (test.env)"
done
command -v ferrite-csi-node >/dev/null || fail "ferrite-csi-node is not in the guest (FERRITE_GUEST_BINS)"
command -v ferrite-csi-client >/dev/null || fail "ferrite-csi-client is not in the guest (FERRITE_GUEST_BINS)"

SOCK=/run/csi/csi.sock
EP=unix://$SOCK
STATE=/var/lib/ferrite/csi-node
STG=/var/lib/kubelet/plugins/kubernetes.io/csi/csi.ferrite.dev
PODS=/var/lib/kubelet/pods
T_START=$(uptime_s)
PLUGIN_PID=

elapsed() { echo "$(uptime_s) $T_START" | awk '{printf "%.1f", $1 - $2}'; }

on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "--- csi-node.sh failed (exit $rc) at +$(elapsed)s ---"
        echo "--- plugin log (tail) ---"
        tail -n 60 /tmp/csi-node.log 2>/dev/null || true
        echo "--- mounts ---"
        grep -E 'kubelet|nvme' /proc/self/mountinfo || true
        echo "--- controllers ---"
        for c in /sys/class/nvme/nvme*; do
            [ -e "$c" ] && nvme_show_ctrl "$(basename "$c")"
        done
        echo "--- NVMe kernel log ---"
        dmesg | grep -iE 'nvme|xfs|ext4' | tail -n 40 || true
    fi
    [ -n "$PLUGIN_PID" ] && kill "$PLUGIN_PID" 2>/dev/null
    return 0
}
trap on_exit EXIT

# csi ARGS...: one CSI call; prints its key=value output, fails the test on error.
csi() {
    local out
    echo "  > csi $*" >&2
    out=$(ferrite-csi-client --endpoint "$EP" "$@") || fail "CSI call failed: $* -> $(echo "$out" | tr '\n' ' ')"
    echo "$out"
}

# csi_expect CODE ARGS...: the call must fail with gRPC code CODE; prints its message.
csi_expect() {
    local code="$1" out
    shift
    echo "  > csi (expect $code) $*" >&2
    out=$(ferrite-csi-client --endpoint "$EP" --expect "$code" "$@") \
        || fail "expected $code from: $* -> $(echo "$out" | tr '\n' ' ')"
    echo "$out" | sed -n 's/^message=//p'
}

# val KEY OUTPUT: the value of KEY in key=value OUTPUT (first match).
val() { echo "$2" | awk -v k="$1=" 'index($0, k) == 1 { print substr($0, length(k) + 1); exit }'; }

# mounts_at PATH: number of mounts stacked at PATH.
mounts_at() { awk -v p="$1" '$5 == p { n++ } END { print n + 0 }' /proc/self/mountinfo; }
# mount_opts PATH: per-mount options of the top mount at PATH.
mount_opts() { awk -v p="$1" '$5 == p { o = $6 } END { print o }' /proc/self/mountinfo; }

sum() { sha256sum "$1" | cut -d' ' -f1; }

ctx_of() { echo "--ctx nqn=$1 --ctx targets=$CSI_TARGET --ctx nsid=1"; }

# expect_one_ctrl NQN LABEL: exactly one live controller of NQN; sets CTRL.
expect_one_ctrl() {
    CTRL=$(nvme_ctrls "$1")
    [ "$(echo "$CTRL" | wc -w)" -eq 1 ] || fail "$2: expected 1 controller of $1, found: '$CTRL'"
    [ "$(nvme_ctrl_attr "$CTRL" state)" = live ] || fail "$2: controller $CTRL is not live"
}

# expect_no_ctrl NQN LABEL
expect_no_ctrl() {
    nvme_wait_ctrls_gone "$1" 10 || fail "$2: controller $(nvme_ctrls "$1") of $1 still in /sys/class/nvme"
    info "$2: no controller of $1 in /sys/class/nvme"
}

# ctl CMD...: ask the test on the host to change the target; waits for "OK".
ctl() {
    local host=${CSI_CTL%:*} port=${CSI_CTL##*:} out
    out=$(echo "$*" | nc "$host" "$port") || fail "side channel $CSI_CTL: nc failed"
    case $out in OK*) info "host: $out" ;; *) fail "side channel: '$*' answered '$out'" ;; esac
}

# start_plugin LOG ARGS...: start ferrite-csi-node in the background, wait for its socket.
start_plugin() {
    local log="$1" sock i=0
    shift
    sock=$(echo "$*" | sed -n 's|.*--endpoint unix://\([^ ]*\).*|\1|p')
    rm -f "$sock"
    RUST_LOG=info,ferrite_csi_node=debug ferrite-csi-node "$@" >>"$log" 2>&1 &
    PLUGIN_PID=$!
    while [ ! -S "$sock" ]; do
        [ $i -lt 200 ] || { tail -n 30 "$log"; fail "ferrite-csi-node did not create $sock within 20 s"; }
        sleep 0.1
        i=$((i + 1))
    done
}

stop_plugin() {
    local rc=0 watchdog
    kill -TERM "$PLUGIN_PID"
    (sleep 10 && kill -KILL "$PLUGIN_PID" 2>/dev/null) &
    watchdog=$!
    wait "$PLUGIN_PID" || rc=$?
    kill "$watchdog" 2>/dev/null || true
    PLUGIN_PID=
    [ "$rc" -eq 0 ] || fail "ferrite-csi-node exited with status $rc on SIGTERM (137: still running 10 s later)"
}

# --- (0) ---------------------------------------------------------------------------
step "(0) a missing host NQN is generated and kept"
mkdir -p /tmp/gen
start_plugin /tmp/gen.log --endpoint unix:///tmp/gen/csi.sock --hostnqn-file /tmp/gen/etc/hostnqn \
    --hostid-file /tmp/gen/etc/hostid --state-dir /tmp/gen/state
[ -s /tmp/gen/etc/hostnqn ] || fail "(0) no host NQN was written"
GEN=$(cat /tmp/gen/etc/hostnqn)
case $GEN in nqn.2014-08.org.nvmexpress:uuid:*) ;; *) fail "(0) generated host NQN '$GEN' has the wrong form" ;; esac
[ "$(cat /tmp/gen/etc/hostid)" = "${GEN#nqn.2014-08.org.nvmexpress:uuid:}" ] || fail "(0) host ID does not match the NQN"
out=$(ferrite-csi-client --endpoint unix:///tmp/gen/csi.sock info) || fail "(0) NodeGetInfo failed: $out"
[ "$(val node_id "$out")" = "$GEN" ] || fail "(0) node_id is not the generated host NQN"
stop_plugin
start_plugin /tmp/gen.log --endpoint unix:///tmp/gen/csi.sock --hostnqn-file /tmp/gen/etc/hostnqn \
    --hostid-file /tmp/gen/etc/hostid --state-dir /tmp/gen/state
out=$(ferrite-csi-client --endpoint unix:///tmp/gen/csi.sock info) || fail "(0) NodeGetInfo failed: $out"
[ "$(val node_id "$out")" = "$GEN" ] || fail "(0) the host NQN changed across a restart"
stop_plugin
info "(0) generated $GEN, kept across a restart"

# --- (1) ---------------------------------------------------------------------------
if [ -e /sys/module/nvme_core/parameters/multipath ]; then
    info "kernel NVMe multipath: $(cat /sys/module/nvme_core/parameters/multipath)"
fi
step "(1) start the plugin on $EP; identity, NodeGetInfo, capabilities"
HOSTNQN=$(cat /etc/nvme/hostnqn)
start_plugin /tmp/csi-node.log --endpoint "$EP" --node-name ferrite-guest --max-volumes 16 \
    --device-timeout 20 --state-dir "$STATE"
out=$(csi identity)
echo "$out"
[ "$(val name "$out")" = csi.ferrite.dev ] || fail "(1) plugin name"
[ "$(val ready "$out")" = true ] || fail "(1) Probe is not ready"
out=$(csi info)
echo "$out"
[ "$(val node_id "$out")" = "$HOSTNQN" ] || fail "(1) node_id is not the host NQN $HOSTNQN"
[ "$(val max_volumes_per_node "$out")" = 16 ] || fail "(1) max_volumes_per_node"
[ "$(val topology.topology.ferrite.dev/node "$out")" = ferrite-guest ] || fail "(1) topology segment"
out=$(csi caps)
echo "$out"
for c in STAGE_UNSTAGE_VOLUME GET_VOLUME_STATS EXPAND_VOLUME; do
    echo "$out" | grep -qx "capability=$c" || fail "(1) capability $c missing"
done

# --- (2) ---------------------------------------------------------------------------
FS_STG=$STG/pv-fs/globalmount
FS_P1=$PODS/pod1/volumes/kubernetes.io~csi/pv-fs/mount
FS_P2=$PODS/pod2/volumes/kubernetes.io~csi/pv-fs/mount
FS_CAP="--fs ext4 --mount-flag noatime"
step "(2) NodeStageVolume ext4: connect, format the blank device, mount"
# shellcheck disable=SC2046,SC2086
csi stage --volume-id pv-fs --staging "$FS_STG" $FS_CAP $(ctx_of "$CSI_NQN_FS") >/dev/null
expect_one_ctrl "$CSI_NQN_FS" "(2)"
nvme_show_ctrl "$CTRL"
for a in ctrl_loss_tmo reconnect_delay; do
    v=$(nvme_ctrl_attr "$CTRL" $a)
    info "(2) $CTRL $a: $v"
done
[ "$(nvme_ctrl_attr "$CTRL" ctrl_loss_tmo)" = "?" ] || [ "$(nvme_ctrl_attr "$CTRL" ctrl_loss_tmo)" = 1800 ] \
    || fail "(2) ctrl_loss_tmo is not 1800"
[ "$(nvme_ctrl_attr "$CTRL" hostnqn)" = "$HOSTNQN" ] || fail "(2) controller host NQN"
[ "$(mounts_at "$FS_STG")" -eq 1 ] || fail "(2) staging path is not mounted once"
mount_opts "$FS_STG" | grep -q noatime || fail "(2) mount flag noatime not applied: $(mount_opts "$FS_STG")"
DEV=$(nvme_ns_dev "$CSI_NQN_FS" 1) || fail "(2) no namespace device"
[ "$(blkid -p -o value -s TYPE "$DEV")" = ext4 ] || fail "(2) $DEV is not ext4"
FS_UUID=$(blkid -p -o value -s UUID "$DEV")
info "(2) $DEV formatted ext4 (UUID $FS_UUID), mounted at $FS_STG ($(mount_opts "$FS_STG"))"
step "(2) repeated NodeStageVolume is a no-op"
# shellcheck disable=SC2046,SC2086
csi stage --volume-id pv-fs --staging "$FS_STG" $FS_CAP $(ctx_of "$CSI_NQN_FS") >/dev/null
[ "$(mounts_at "$FS_STG")" -eq 1 ] || fail "(2) repeated stage mounted again"
expect_one_ctrl "$CSI_NQN_FS" "(2) repeated"
[ "$(blkid -p -o value -s UUID "$DEV")" = "$FS_UUID" ] || fail "(2) repeated stage reformatted"

# --- (3) ---------------------------------------------------------------------------
step "(3) NodePublishVolume read-write, write a file, stats"
# shellcheck disable=SC2086
csi publish --volume-id pv-fs --staging "$FS_STG" --target "$FS_P1" $FS_CAP >/dev/null
# shellcheck disable=SC2086
csi publish --volume-id pv-fs --staging "$FS_STG" --target "$FS_P1" $FS_CAP >/dev/null
[ "$(mounts_at "$FS_P1")" -eq 1 ] || fail "(3) target is not mounted exactly once after two publishes"
dd if=/dev/urandom of="$FS_P1/data.bin" bs=1M count=1 2>/dev/null || fail "(3) write failed"
sync
SUM=$(sum "$FS_P1/data.bin")
info "(3) wrote $FS_P1/data.bin sha256 $SUM"
out=$(csi stats --volume-id pv-fs --path "$FS_P1")
echo "$out"
[ "$(val bytes_total "$out")" -gt $((100 * 1024 * 1024)) ] || fail "(3) bytes_total too small"
[ "$(val bytes_used "$out")" -ge $((1024 * 1024)) ] || fail "(3) bytes_used below the 1 MiB written"
[ "$(val inodes_total "$out")" -gt 0 ] || fail "(3) no inode counts"
[ "$(val abnormal "$out")" = false ] || fail "(3) condition abnormal: $(val message "$out")"
FS_TOTAL1=$(val bytes_total "$out")

# --- (4) ---------------------------------------------------------------------------
step "(4) read-only NodePublishVolume refuses writes"
# shellcheck disable=SC2086
csi publish --volume-id pv-fs --staging "$FS_STG" --target "$FS_P2" $FS_CAP --readonly >/dev/null
# shellcheck disable=SC2086
csi publish --volume-id pv-fs --staging "$FS_STG" --target "$FS_P2" $FS_CAP --readonly >/dev/null
[ "$(mounts_at "$FS_P2")" -eq 1 ] || fail "(4) read-only target not mounted exactly once"
mount_opts "$FS_P2" | grep -qE '(^|,)ro(,|$)' || fail "(4) $FS_P2 is not mounted ro: $(mount_opts "$FS_P2")"
[ "$(sum "$FS_P2/data.bin")" = "$SUM" ] || fail "(4) the read-only view has other data"
if touch "$FS_P2/new-file" 2>/dev/null; then fail "(4) a write to the read-only publish succeeded"; fi
if dd if=/dev/zero of="$FS_P2/data.bin" bs=4k count=1 conv=notrunc 2>/dev/null; then
    fail "(4) overwriting a file through the read-only publish succeeded"
fi
info "(4) writes through $FS_P2 fail; the read-write publish still works:"
touch "$FS_P1/still-writable" || fail "(4) the read-write publish became read-only"
# shellcheck disable=SC2086
msg=$(csi_expect AlreadyExists publish --volume-id pv-fs --staging "$FS_STG" --target "$FS_P2" $FS_CAP)
info "(4) read-write publish over the read-only one: AlreadyExists: $msg"

# --- (5) ---------------------------------------------------------------------------
step "(5) NodeUnstageVolume while published is refused"
msg=$(csi_expect FailedPrecondition unstage --volume-id pv-fs --staging "$FS_STG")
info "(5) $msg"
echo "$msg" | grep -q "$FS_P1" || fail "(5) the message does not name the publish path"
expect_one_ctrl "$CSI_NQN_FS" "(5)"

# --- (6) ---------------------------------------------------------------------------
step "(6) unpublish (twice), unstage (twice): the controller is gone"
for t in "$FS_P1" "$FS_P2" "$FS_P1"; do
    csi unpublish --volume-id pv-fs --target "$t" >/dev/null
done
[ "$(mounts_at "$FS_P1")" -eq 0 ] || fail "(6) $FS_P1 is still mounted"
[ "$(mounts_at "$FS_P2")" -eq 0 ] || fail "(6) $FS_P2 is still mounted"
[ ! -e "$FS_P1" ] || fail "(6) $FS_P1 was not removed"
csi unstage --volume-id pv-fs --staging "$FS_STG" >/dev/null
[ "$(mounts_at "$FS_STG")" -eq 0 ] || fail "(6) staging path still mounted"
expect_no_ctrl "$CSI_NQN_FS" "(6)"
[ ! -e "/sys/class/nvme/$CTRL" ] || fail "(6) /sys/class/nvme/$CTRL still exists"
csi unstage --volume-id pv-fs --staging "$FS_STG" >/dev/null
[ -z "$(ls "$STATE" 2>/dev/null)" ] || fail "(6) state left in $STATE: $(ls "$STATE")"
info "(6) $CTRL gone, nothing mounted, no state"

# --- (7) ---------------------------------------------------------------------------
step "(7) stage again: same filesystem, file intact"
# shellcheck disable=SC2046,SC2086
csi stage --volume-id pv-fs --staging "$FS_STG" $FS_CAP $(ctx_of "$CSI_NQN_FS") >/dev/null
expect_one_ctrl "$CSI_NQN_FS" "(7)"
DEV=$(nvme_ns_dev "$CSI_NQN_FS" 1) || fail "(7) no namespace device"
[ "$(blkid -p -o value -s UUID "$DEV")" = "$FS_UUID" ] || fail "(7) the filesystem was recreated"
# shellcheck disable=SC2086
csi publish --volume-id pv-fs --staging "$FS_STG" --target "$FS_P1" $FS_CAP >/dev/null
[ "$(sum "$FS_P1/data.bin")" = "$SUM" ] || fail "(7) data.bin changed"
[ -e "$FS_P1/still-writable" ] || fail "(7) still-writable is missing"
info "(7) UUID $FS_UUID kept, data.bin sha256 ok"

# --- (8) ---------------------------------------------------------------------------
step "(8) the namespace grows to $CSI_FS_GROW bytes; NodeExpandVolume grows ext4 online"
before=$(blockdev_bytes "$DEV")
ctl GROW "$CSI_NQN_FS" "$CSI_FS_GROW"
out=$(csi expand --volume-id pv-fs --path "$FS_P1" --required-bytes "$CSI_FS_GROW")
echo "$out"
[ "$(val capacity_bytes "$out")" -ge "$CSI_FS_GROW" ] || fail "(8) capacity_bytes below $CSI_FS_GROW"
[ "$(blockdev_bytes "$DEV")" -ge "$CSI_FS_GROW" ] || fail "(8) $DEV is still $(blockdev_bytes "$DEV") bytes"
out=$(csi stats --volume-id pv-fs --path "$FS_P1")
FS_TOTAL2=$(val bytes_total "$out")
info "(8) device $before -> $(blockdev_bytes "$DEV") bytes; filesystem $FS_TOTAL1 -> $FS_TOTAL2 bytes"
[ "$FS_TOTAL2" -gt $((FS_TOTAL1 + (CSI_FS_GROW - before) / 2)) ] || fail "(8) the filesystem did not grow"
[ "$(sum "$FS_P1/data.bin")" = "$SUM" ] || fail "(8) data.bin changed"
dd if=/dev/urandom of="$FS_P1/after-grow.bin" bs=1M count=1 2>/dev/null || fail "(8) write after grow failed"
sync
csi expand --volume-id pv-fs --path "$FS_P1" --required-bytes "$CSI_FS_GROW" >/dev/null
csi unpublish --volume-id pv-fs --target "$FS_P1" >/dev/null
csi unstage --volume-id pv-fs --staging "$FS_STG" >/dev/null
expect_no_ctrl "$CSI_NQN_FS" "(8)"

# --- (9) ---------------------------------------------------------------------------
BLK_STG=$STG/volumeDevices/staging/pv-blk
BLK_P=$PODS/pod3/volumeDevices/kubernetes.io~csi/pv-blk
step "(9) raw block: stage, publish (twice each), direct I/O"
# shellcheck disable=SC2046
csi stage --volume-id pv-blk --staging "$BLK_STG" --block $(ctx_of "$CSI_NQN_BLK") >/dev/null
# shellcheck disable=SC2046
csi stage --volume-id pv-blk --staging "$BLK_STG" --block $(ctx_of "$CSI_NQN_BLK") >/dev/null
expect_one_ctrl "$CSI_NQN_BLK" "(9)"
csi publish --volume-id pv-blk --staging "$BLK_STG" --target "$BLK_P" --block >/dev/null
csi publish --volume-id pv-blk --staging "$BLK_STG" --target "$BLK_P" --block >/dev/null
[ -b "$BLK_P" ] || fail "(9) $BLK_P is not a block device"
[ "$(mounts_at "$BLK_P")" -eq 1 ] || fail "(9) $BLK_P bound $(mounts_at "$BLK_P") times"
BDEV=$(nvme_ns_dev "$CSI_NQN_BLK" 1) || fail "(9) no namespace device"
[ "$(stat -c %t:%T "$BLK_P")" = "$(stat -c %t:%T "$BDEV")" ] || fail "(9) $BLK_P is not $BDEV"
if blkid -p "$BDEV" >/dev/null 2>&1; then fail "(9) a raw block volume was formatted"; fi
dd if=/dev/urandom of=/tmp/blk.bin bs=64k count=16 2>/dev/null
dd if=/tmp/blk.bin of="$BLK_P" bs=64k seek=8 oflag=direct conv=notrunc 2>/dev/null || fail "(9) direct write failed"
dd if="$BLK_P" of=/tmp/blk.back bs=64k skip=8 count=16 iflag=direct 2>/dev/null || fail "(9) direct read failed"
cmp -s /tmp/blk.bin /tmp/blk.back || fail "(9) read back other data"
out=$(csi stats --volume-id pv-blk --path "$BLK_P")
echo "$out"
[ "$(val bytes_total "$out")" = "$(blockdev_bytes "$BDEV")" ] || fail "(9) block stats total"
[ "$(val abnormal "$out")" = false ] || fail "(9) block condition abnormal"
step "(9) unpublish, unstage, stage again: the data persists"
csi unpublish --volume-id pv-blk --target "$BLK_P" >/dev/null
csi unstage --volume-id pv-blk --staging "$BLK_STG" >/dev/null
expect_no_ctrl "$CSI_NQN_BLK" "(9)"
# shellcheck disable=SC2046
csi stage --volume-id pv-blk --staging "$BLK_STG" --block $(ctx_of "$CSI_NQN_BLK") >/dev/null
csi publish --volume-id pv-blk --staging "$BLK_STG" --target "$BLK_P" --block >/dev/null
dd if="$BLK_P" of=/tmp/blk.back bs=64k skip=8 count=16 iflag=direct 2>/dev/null || fail "(9) re-read failed"
cmp -s /tmp/blk.bin /tmp/blk.back || fail "(9) data changed across unstage/stage"
step "(9) the namespace is removed on the target: stats report an abnormal condition"
ctl REMOVE "$CSI_NQN_BLK" 1
i=0
while [ -e "/sys/class/block/$(basename "$BDEV")" ]; do
    [ $i -lt 100 ] || fail "(9) $BDEV did not go away after the namespace was removed"
    sleep 0.1
    i=$((i + 1))
done
out=$(csi stats --volume-id pv-blk --path "$BLK_P")
echo "$out"
[ "$(val abnormal "$out")" = true ] || fail "(9) the condition is not abnormal after the namespace went away"
csi unpublish --volume-id pv-blk --target "$BLK_P" >/dev/null
csi unstage --volume-id pv-blk --staging "$BLK_STG" >/dev/null
expect_no_ctrl "$CSI_NQN_BLK" "(9) after removal"
[ ! -e "$BLK_P" ] || fail "(9) $BLK_P left behind"

# --- (10) --------------------------------------------------------------------------
XFS_STG=$STG/pv-xfs/globalmount
XFS_P=$PODS/pod4/volumes/kubernetes.io~csi/pv-xfs/mount
step "(10) xfs: stage (mkfs.xfs), publish, write, grow to $CSI_XFS_GROW bytes online"
# shellcheck disable=SC2046
csi stage --volume-id pv-xfs --staging "$XFS_STG" --fs xfs $(ctx_of "$CSI_NQN_XFS") >/dev/null
XDEV=$(nvme_ns_dev "$CSI_NQN_XFS" 1) || fail "(10) no namespace device"
[ "$(blkid -p -o value -s TYPE "$XDEV")" = xfs ] || fail "(10) $XDEV is not xfs"
csi publish --volume-id pv-xfs --staging "$XFS_STG" --target "$XFS_P" --fs xfs >/dev/null
dd if=/dev/urandom of="$XFS_P/x.bin" bs=1M count=1 2>/dev/null || fail "(10) write failed"
sync
XSUM=$(sum "$XFS_P/x.bin")
out=$(csi stats --volume-id pv-xfs --path "$XFS_P")
X1=$(val bytes_total "$out")
ctl GROW "$CSI_NQN_XFS" "$CSI_XFS_GROW"
out=$(csi expand --volume-id pv-xfs --path "$XFS_P" --required-bytes "$CSI_XFS_GROW")
echo "$out"
out=$(csi stats --volume-id pv-xfs --path "$XFS_P")
X2=$(val bytes_total "$out")
info "(10) xfs $X1 -> $X2 bytes"
[ "$X2" -gt $((X1 + 100 * 1024 * 1024)) ] || fail "(10) xfs did not grow"
[ "$(sum "$XFS_P/x.bin")" = "$XSUM" ] || fail "(10) x.bin changed"
csi unpublish --volume-id pv-xfs --target "$XFS_P" >/dev/null
csi unstage --volume-id pv-xfs --staging "$XFS_STG" >/dev/null
expect_no_ctrl "$CSI_NQN_XFS" "(10)"

# --- (11) --------------------------------------------------------------------------
step "(11) a wrong NQN fails clearly and leaves nothing connected"
BAD_STG=$STG/pv-bad/globalmount
# shellcheck disable=SC2046
msg=$(csi_expect NotFound stage --volume-id pv-bad --staging "$BAD_STG" --fs ext4 $(ctx_of "$CSI_BAD_NQN"))
info "(11) NotFound: $msg"
echo "$msg" | grep -qF "$CSI_BAD_NQN" || fail "(11) the message does not name the NQN"
echo "$msg" | grep -qF "$HOSTNQN" || fail "(11) the message does not name the host NQN"
sleep 0.5
[ "$(nvme_ctrl_count)" -eq 0 ] || fail "(11) controllers left: $(ls /sys/class/nvme)"
[ "$(mounts_at "$BAD_STG")" -eq 0 ] || fail "(11) something mounted at $BAD_STG"
[ -z "$(ls "$STATE" 2>/dev/null)" ] || fail "(11) state left: $(ls "$STATE")"
msg=$(csi_expect Unavailable stage --volume-id pv-bad --staging "$BAD_STG" --fs ext4 \
    --ctx nqn="$CSI_NQN_FS" --ctx targets="${CSI_TARGET%:*}:1")
info "(11) unreachable port: Unavailable: $msg"
msg=$(csi_expect InvalidArgument stage --volume-id pv-bad --staging "$BAD_STG" --fs ext4 --ctx targets="$CSI_TARGET")
info "(11) no nqn in the context: InvalidArgument: $msg"
msg=$(csi_expect NotFound stats --volume-id pv-bad --path /nonexistent)
info "(11) stats of a missing path: NotFound: $msg"
[ "$(nvme_ctrl_count)" -eq 0 ] || fail "(11) controllers left: $(ls /sys/class/nvme)"

# --- (12) --------------------------------------------------------------------------
step "(12) nothing left; the plugin stops on SIGTERM"
[ -z "$(ls "$STATE" 2>/dev/null)" ] || fail "(12) state left: $(ls "$STATE")"
grep -q ' - ext4 /dev/nvme\| - xfs /dev/nvme' /proc/self/mountinfo && fail "(12) an NVMe filesystem is still mounted"
stop_plugin
[ ! -e "$SOCK" ] || fail "(12) the socket was not removed"
echo "--- plugin log (warnings and errors) ---"
grep -E 'WARN|ERROR' /tmp/csi-node.log || true
echo "--- dmesg | grep -i nvme ---"
dmesg | grep -i nvme || true
echo "csi-node.sh: all steps passed in $(elapsed)s"
