# lib.sh - shell helpers for guest scripts of the Ferrite QEMU test bed.
#
# Runs inside the guest under busybox ash (POSIX sh + `local`). run-guest.sh
# bundles the whole guest/ directory as /guest/ in the guest, so a test does
#     . /guest/lib.sh
# Helpers: step/fail/info, sysfs lookups for NVMe controllers and namespace
# block devices (multipath heads or plain namespaces), a kernel nvmet target
# on a loop device for self-checks, host-side NVMe command tracing, and dmesg
# checks.
# shellcheck shell=dash disable=SC3040,SC3028 # busybox ash: pipefail, RANDOM

# --- messages ----------------------------------------------------------------
step() { echo "STEP: $*  (t=$(uptime_s)s)"; }
info() { echo "  $*"; }
# fail MSG: print MSG (on stderr, so that it also shows from inside $(...))
# and exit 1.
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# run CMD...: echo the command, run it, fail with its output on non-zero exit.
run() {
    echo "  + $*"
    "$@" || fail "command failed (exit $?): $*"
}

# --- sysfs lookups -------------------------------------------------------------
# nvme_ctrls NQN: print the names (nvme0 ...) of the controllers in
# /sys/class/nvme whose subsysnqn is NQN.
nvme_ctrls() {
    local want="$1" c
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c/subsysnqn" ] || continue
        [ "$(cat "$c/subsysnqn")" = "$want" ] && basename "$c"
    done
    return 0
}

# nvme_ctrl_count: number of controllers in /sys/class/nvme.
nvme_ctrl_count() {
    local n=0 c
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c" ] && n=$((n + 1))
    done
    echo "$n"
}

# _ns_matches DIR NSID: the namespace sysfs dir DIR has nsid NSID (or NSID is
# empty, or the kernel does not show nsid).
_ns_matches() {
    [ -z "$2" ] && return 0
    [ -r "$1/nsid" ] || return 0
    [ "$(cat "$1/nsid")" = "$2" ]
}

# nvme_ns_dev NQN [NSID]: print the usable block device (/dev/nvmeXnY) of a
# namespace of the subsystem NQN, found through sysfs only (no udev here).
#  - NVME_MULTIPATH on (Debian's default): /sys/class/nvme/nvmeA/ only lists
#    the hidden path device nvmeAcBnC; the usable device is the namespace head
#    nvmeXnY listed under /sys/class/nvme-subsystem/nvme-subsysX/ whose
#    subsysnqn matches.
#  - multipath off (nvme_core.multipath=N): no heads, no cB paths; the
#    namespace nvmeAnC is listed under the controller /sys/class/nvme/nvmeA/.
# Returns 1 (prints nothing) while there is no such device.
nvme_ns_dev() {
    local want="$1" nsid="${2:-}" s c d name
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [ -e "$s/subsysnqn" ] || continue
        [ "$(cat "$s/subsysnqn")" = "$want" ] || continue
        for d in "$s"/nvme*n*; do
            [ -e "$d" ] || continue
            name=$(basename "$d")
            case $name in *c*n*) continue ;; esac # never a path device
            [ -e "$d/dev" ] || continue           # a block device, not a ctrl
            _ns_matches "$d" "$nsid" || continue
            [ -b "/dev/$name" ] || continue
            echo "/dev/$name"
            return 0
        done
    done
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c/subsysnqn" ] || continue
        [ "$(cat "$c/subsysnqn")" = "$want" ] || continue
        for d in "$c"/nvme*n*; do
            [ -e "$d" ] || continue
            name=$(basename "$d")
            case $name in *c*n*) continue ;; esac
            [ -e "$d/dev" ] || continue
            _ns_matches "$d" "$nsid" || continue
            [ -b "/dev/$name" ] || continue
            echo "/dev/$name"
            return 0
        done
    done
    return 1
}

# nvme_wait_ns_dev NQN TIMEOUT_S [NSID]: wait for nvme_ns_dev, print it.
nvme_wait_ns_dev() {
    local want="$1" tmo="$2" nsid="${3:-}" i=0 dev
    while [ "$i" -lt $((tmo * 10)) ]; do
        if dev=$(nvme_ns_dev "$want" "$nsid"); then
            echo "$dev"
            return 0
        fi
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# nvme_wait_ctrls_gone NQN TIMEOUT_S: wait until no controller of NQN is left.
nvme_wait_ctrls_gone() {
    local want="$1" tmo="$2" i=0
    while [ "$i" -lt $((tmo * 10)) ]; do
        [ -z "$(nvme_ctrls "$want")" ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# nvme_ctrl_attr CTRL ATTR: print /sys/class/nvme/CTRL/ATTR, or "?" if absent.
nvme_ctrl_attr() {
    if [ -r "/sys/class/nvme/$1/$2" ]; then cat "/sys/class/nvme/$1/$2"; else echo "?"; fi
}

# nvme_show_ctrl CTRL: print the interesting sysfs attributes of CTRL.
nvme_show_ctrl() {
    local a
    for a in transport address state subsysnqn cntlid model serial firmware_rev \
        queue_count sqsize kato cntrltype; do
        [ -r "/sys/class/nvme/$1/$a" ] && info "$1 $a: $(cat "/sys/class/nvme/$1/$a")"
    done
    return 0
}

# blockdev_bytes /dev/NAME: size in bytes from sysfs.
blockdev_bytes() {
    echo $(($(cat "/sys/class/block/$(basename "$1")/size") * 512))
}

# --- kernel nvmet target (self-checks) ---------------------------------------
# nvmet_setup NQN ADDR PORT SIZE_MIB: export a loop device over a tmpfs file
# as namespace 1 of NQN through the kernel target, on nvmet-tcp ADDR:PORT.
NVMET=/sys/kernel/config/nvmet
nvmet_setup() {
    local nqn="$1" addr="$2" port="$3" size="$4" loopdev
    [ -d "$NVMET" ] || fail "no $NVMET (nvmet module or configfs missing)"
    mkdir -p /tmp/nvmet
    dd if=/dev/zero of="/tmp/nvmet/$nqn.img" bs=1M count=0 seek="$size" 2>/dev/null \
        || fail "cannot create backing file"
    loopdev=$(losetup -f) || fail "no free loop device"
    losetup "$loopdev" "/tmp/nvmet/$nqn.img" || fail "losetup $loopdev failed"
    mkdir "$NVMET/subsystems/$nqn"
    echo 1 >"$NVMET/subsystems/$nqn/attr_allow_any_host"
    mkdir "$NVMET/subsystems/$nqn/namespaces/1"
    printf '%s' "$loopdev" >"$NVMET/subsystems/$nqn/namespaces/1/device_path"
    echo 1 >"$NVMET/subsystems/$nqn/namespaces/1/enable"
    if [ ! -d "$NVMET/ports/1" ]; then
        mkdir "$NVMET/ports/1"
        echo tcp >"$NVMET/ports/1/addr_trtype"
        echo ipv4 >"$NVMET/ports/1/addr_adrfam"
        echo "$addr" >"$NVMET/ports/1/addr_traddr"
        echo "$port" >"$NVMET/ports/1/addr_trsvcid"
    fi
    ln -s "$NVMET/subsystems/$nqn" "$NVMET/ports/1/subsystems/$nqn"
    info "nvmet: $nqn nsid 1 = $loopdev (${size} MiB) on tcp $addr:$port"
}

# --- host-side command trace -------------------------------------------------
# nvme_trace_start: record every command the host sends and its completion,
# via the nvme:nvme_setup_cmd / nvme_complete_rq tracepoints.
TRACEFS=/sys/kernel/tracing
nvme_trace_start() {
    [ -d "$TRACEFS/events/nvme" ] || { info "no tracefs nvme events"; return 0; }
    echo 0 >"$TRACEFS/tracing_on"
    echo >"$TRACEFS/trace"
    echo 4096 >"$TRACEFS/buffer_size_kb"
    echo 1 >"$TRACEFS/events/nvme/nvme_setup_cmd/enable"
    echo 1 >"$TRACEFS/events/nvme/nvme_complete_rq/enable"
    echo 1 >"$TRACEFS/tracing_on"
}

# nvme_trace_dump: print the admin/fabrics commands (qid 0; the kernel also
# shows the Connect of each I/O queue there) with their completions, then a
# count of the I/O queue commands by opcode.
nvme_trace_dump() {
    [ -r "$TRACEFS/trace" ] || return 0
    echo 0 >"$TRACEFS/tracing_on"
    grep -v '^#' "$TRACEFS/trace" | sed 's/^.*\] [^ ]* *\([0-9.]*\): /\1 /' >/tmp/nvme-trace.txt
    echo "--- host NVMe admin/fabrics commands (trace, qid=0) ---"
    grep 'qid=0,' /tmp/nvme-trace.txt || true
    echo "--- host NVMe I/O queue commands (count by opcode) ---"
    grep -v 'qid=0,' /tmp/nvme-trace.txt | grep 'nvme_setup_cmd' \
        | sed 's/.*cmd=(\([a-z_]*\).*/\1/' | sort | uniq -c || true
    grep -v 'qid=0,' /tmp/nvme-trace.txt | grep 'nvme_complete_rq' | grep -v 'status=0x0$' \
        | sed 's/^/  non-zero I\/O status: /' || true
    echo "--- end of trace ---"
}

# --- dmesg -----------------------------------------------------------------------
# Lines of the kernel log about NVMe that report a problem. Benign lines such
# as "new ctrl", "Removing ctrl", "creating 2 I/O queues", "mapped 2/0/0
# default/read/poll queues", "creating nvm controller" and "Shutdown timeout
# set to N seconds" do not match.
NVME_ERR_RE='error|fail|invalid|timeout|timed out|reset|abort|unsupported|not supported|warn|refused|I/O Cmd|lost|bad|bogus|unable|cannot|couldn|unexpected|mismatch|duplicate|ignoring|changed|reconnect|no usable path|requeu|recovery'
NVME_BENIGN_RE='Shutdown timeout set to|EXT4-fs \(nvme[0-9]+n[0-9]+\): recovery complete'

# nvme_dmesg FILE: print the NVMe-related lines of FILE (a saved dmesg).
nvme_dmesg() {
    grep -iE 'nvme|nvmet' "$1" || true
}

# nvme_dmesg_errors FILE: print the NVMe problem lines of FILE; return 0 if
# there are some.
nvme_dmesg_errors() {
    grep -iE 'nvme|nvmet' "$1" | grep -iE "$NVME_ERR_RE" | grep -viE "$NVME_BENIGN_RE"
}
