#!/usr/bin/env bash
# prepare.sh - build the QEMU test bed for the Linux kernel NVMe/TCP initiator.
#
# Installs (Debian packages only) and unpacks everything the bed needs into a
# cache directory, default ${FERRITE_CACHE:-$HOME/.cache/ferrite}/qemu
# (override the whole path with FERRITE_QEMU_CACHE):
#   - a private QEMU (qemu-system-x86 + -common + -data, `dpkg -x`, never
#     `apt-get install`ed: that would remove the machine's newer qemu-utils),
#     its runtime libraries, seabios and ipxe-qemu, and a firmware dir for -L;
#   - the Debian 6.1 cloud kernel (vmlinuz + modules, depmod'ed);
#   - a gzip'ed newc initramfs: busybox-static, nvme-cli, e2fsprogs' mke2fs,
#     e2fsck and resize2fs, util-linux's blkid, xfsprogs' mkfs.xfs and
#     xfs_growfs, the modules for nvme-tcp / nvmet-tcp / loop / virtio-net / xfs, a
#     host NQN and host ID, and an /init that runs /test.sh (added later by
#     run-guest.sh as an appended cpio) and prints FERRITE-GUEST-RESULT: PASS
#     or FAIL before powering off.
# Writes $CACHE/bed.env (paths for run-guest.sh) and a stamp file keyed by
# PREPARE_VERSION: a second run is a fast no-op. Needs root (apt-get).
# Set FERRITE_QEMU_REBUILD=1 to force a rebuild of the cache.
set -euo pipefail

# Bump when anything below changes what ends up in the cache.
PREPARE_VERSION="ferrite-qemu-bed-8"

CACHE="${FERRITE_QEMU_CACHE:-${FERRITE_CACHE:-$HOME/.cache/ferrite}/qemu}"
STAMP="$CACHE/stamp"

log() { printf 'prepare.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- fast path ---------------------------------------------------------------
bed_ok() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PREPARE_VERSION" ] || return 1
    [ -f "$CACHE/bed.env" ] || return 1
    # shellcheck source=/dev/null
    . "$CACHE/bed.env"
    [ -x "$FERRITE_QEMU_BIN" ] && [ -f "$FERRITE_QEMU_KERNEL" ] \
        && [ -f "$FERRITE_QEMU_INITRD" ] && [ -d "$FERRITE_QEMU_FW" ] || return 1
    # The runtime libraries live on the host, not in the cache: check them.
    "$FERRITE_QEMU_BIN" --version >/dev/null 2>&1
}

if [ "${FERRITE_QEMU_REBUILD:-0}" != 1 ] && bed_ok; then
    log "up to date ($PREPARE_VERSION) in $CACHE"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (uses apt-get)"
export DEBIAN_FRONTEND=noninteractive
start_ts=$(date +%s)

mkdir -p "$CACHE"
# One builder at a time; a second one waits, then finds the bed ready.
exec 9>"$CACHE/.lock"
flock 9
if [ "${FERRITE_QEMU_REBUILD:-0}" != 1 ] && bed_ok; then
    log "up to date ($PREPARE_VERSION) in $CACHE (built by another run)"
    exit 0
fi
rm -f "$STAMP"

# --- apt helpers ---------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq -o DPkg::Lock::Timeout=300
        APT_UPDATED=1
    fi
}

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# Install packages that are missing; never remove anything.
apt_install() {
    local missing=() p
    for p in "$@"; do
        is_installed "$p" || missing+=("$p")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    log "apt-get install ${missing[*]}"
    if ! apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends --no-remove "${missing[@]}" >/dev/null; then
        apt_update_once
        apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends --no-remove "${missing[@]}" >/dev/null
    fi
}

# Download .debs into $DEBS (cached there by name).
apt_download() {
    local p
    for p in "$@"; do
        if ! compgen -G "$DEBS/${p}_*.deb" >/dev/null; then
            log "apt-get download $p"
            if ! (cd "$DEBS" && apt-get download -qq "$p" 2> >(grep -v unsandboxed >&2)); then
                apt_update_once
                (cd "$DEBS" && apt-get download -qq "$p" 2> >(grep -v unsandboxed >&2))
            fi
        fi
    done
}

deb_of() { compgen -G "$DEBS/${1}_*.deb" | head -n1; }

# --- 1. host tools -------------------------------------------------------------
# cpio/gzip/kmod build the initramfs; nvme-cli, e2fsprogs, util-linux (blkid) and
# xfsprogs are copied into it (installed so that ldd resolves their libraries from
# the host).
if ! apt-cache show cpio >/dev/null 2>&1; then apt_update_once; fi
apt_install cpio gzip kmod nvme-cli e2fsprogs util-linux xfsprogs

DEBS="$CACHE/debs"
mkdir -p "$DEBS"

# --- 2. QEMU (private copy) ----------------------------------------------------
apt_download qemu-system-x86 qemu-system-common qemu-system-data
QROOT="$CACHE/qemu-root"
rm -rf "$QROOT"
mkdir -p "$QROOT"
for p in qemu-system-x86 qemu-system-common qemu-system-data; do
    dpkg -x "$(deb_of "$p")" "$QROOT"
done
# Runtime deps = the Depends of qemu-system-x86 minus the qemu-system-* we
# unpacked ourselves (first alternative of each, version constraints dropped).
mapfile -t qdeps < <(dpkg-deb -f "$(deb_of qemu-system-x86)" Depends \
    | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' \
    | grep -v -e '^$' -e '^qemu-system-')
apt_install "${qdeps[@]}"
QEMU_BIN="$QROOT/usr/bin/qemu-system-x86_64"
if ldd "$QEMU_BIN" | grep -q 'not found'; then
    ldd "$QEMU_BIN" | grep 'not found' >&2
    die "qemu-system-x86_64 still misses libraries"
fi

# Firmware directory for -L: links to QEMU's own blobs, SeaBIOS and iPXE.
FW="$CACHE/fw"
rm -rf "$FW"
mkdir -p "$FW"
for f in "$QROOT"/usr/share/qemu/* /usr/share/seabios/* /usr/lib/ipxe/qemu/*; do
    [ -e "$f" ] || continue
    ln -sfn "$f" "$FW/$(basename "$f")"
done
[ -e "$FW/bios-256k.bin" ] || die "no bios-256k.bin in $FW (seabios missing?)"
"$QEMU_BIN" --version | head -n1 >&2

# --- 3. kernel -----------------------------------------------------------------
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-cloud-amd64\)$/\1/p' | head -n1)
[ -n "$KPKG" ] || { apt_update_once; KPKG=$(apt-cache depends linux-image-cloud-amd64 \
    | sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-cloud-amd64\)$/\1/p' | head -n1); }
[ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 to a 6.1 image package"
KVER=${KPKG#linux-image-}
apt_download "$KPKG"
KROOT="$CACHE/kernel-root"
rm -rf "$KROOT"
mkdir -p "$KROOT"
dpkg -x "$(deb_of "$KPKG")" "$KROOT"
depmod -b "$KROOT" "$KVER"
[ -f "$KROOT/boot/vmlinuz-$KVER" ] || die "no vmlinuz-$KVER in $KPKG"
KERNEL="$CACHE/vmlinuz-$KVER"
cp "$KROOT/boot/vmlinuz-$KVER" "$KERNEL"

# --- 4. initramfs --------------------------------------------------------------
apt_download busybox-static   # unpacked privately: it conflicts with busybox
BBROOT="$CACHE/busybox-root"
rm -rf "$BBROOT"
mkdir -p "$BBROOT"
dpkg -x "$(deb_of busybox-static)" "$BBROOT"

STAGE="$CACHE/initramfs-root"
rm -rf "$STAGE"
mkdir -p "$STAGE"/usr/{bin,sbin,lib,lib64}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$STAGE/$d"; done   # merged /usr
mkdir -p "$STAGE"/{dev,proc,sys,tmp,run,mnt,root,etc/nvme}

install -m 0755 "$BBROOT/bin/busybox" "$STAGE/usr/bin/busybox"
while read -r applet; do
    [ -e "$STAGE/$applet" ] || [ -L "$STAGE/$applet" ] || ln -s /usr/bin/busybox "$STAGE/$applet"
done < <("$BBROOT/bin/busybox" --list-full)

# Copy a host binary plus every library ldd lists, at the same paths.
copy_with_libs() {
    local src=$1 dst=$2 lib
    rm -f "$STAGE$dst"
    install -D -m 0755 "$src" "$STAGE$dst"
    for lib in $(ldd "$src" | grep -o '/[^ ]*'); do
        [ -e "$STAGE$lib" ] && continue
        mkdir -p "$STAGE$(dirname "$lib")"
        cp -L "$lib" "$STAGE$lib"
    done
}
copy_with_libs /usr/sbin/nvme /usr/sbin/nvme
copy_with_libs /usr/sbin/mke2fs /usr/sbin/mke2fs
copy_with_libs /usr/sbin/e2fsck /usr/sbin/e2fsck
# For the CSI node plugin: low-level probing (busybox's blkid has no -p), online
# growth of ext4, and XFS.
copy_with_libs /usr/sbin/resize2fs /usr/sbin/resize2fs
copy_with_libs "$(command -v blkid)" /usr/sbin/blkid
copy_with_libs /usr/sbin/mkfs.xfs /usr/sbin/mkfs.xfs
copy_with_libs /usr/sbin/xfs_growfs /usr/sbin/xfs_growfs
for l in mkfs.ext4 mkfs.ext2 mkfs.ext3; do
    rm -f "$STAGE/usr/sbin/$l"
    ln -s mke2fs "$STAGE/usr/sbin/$l"
done
rm -f "$STAGE/usr/sbin/fsck.ext4"
ln -s e2fsck "$STAGE/usr/sbin/fsck.ext4"
cp /etc/mke2fs.conf "$STAGE/etc/mke2fs.conf"

# Modules, in dependency order. crc32c-intel only speeds up digests.
MODULES="virtio_pci virtio_net configfs loop nvme-fabrics nvme-tcp nvmet nvmet-tcp crc32c-intel xfs"
: >"$STAGE/etc/ferrite-modules"
for m in $MODULES; do
    modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | while read -r kind path _; do
        [ "$kind" = insmod ] || continue
        rel=${path#"$KROOT"}
        grep -qxF "$rel" "$STAGE/etc/ferrite-modules" && continue
        install -D -m 0644 "$path" "$STAGE$rel"
        echo "$rel" >>"$STAGE/etc/ferrite-modules"
    done
done
grep -q 'nvme-tcp.ko' "$STAGE/etc/ferrite-modules" || die "nvme-tcp.ko not found in $KPKG"

# Host identity (kept across rebuilds of the same cache).
if [ ! -s "$CACHE/hostnqn" ]; then
    nvme gen-hostnqn >"$CACHE/hostnqn"
fi
sed -n 's/.*uuid:\(.*\)$/\1/p' "$CACHE/hostnqn" >"$CACHE/hostid"
cp "$CACHE/hostnqn" "$STAGE/etc/nvme/hostnqn"
cp "$CACHE/hostid" "$STAGE/etc/nvme/hostid"

ln -sfn /proc/self/mounts "$STAGE/etc/mtab"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\n' >"$STAGE/etc/group"
mknod -m 0600 "$STAGE/dev/console" c 5 1
mknod -m 0666 "$STAGE/dev/null" c 1 3

cat >"$STAGE/init" <<'EOF'
#!/bin/sh
# /init of the Ferrite QEMU test bed: set the guest up, run /test.sh (with the
# variables of /test.env exported), print the result marker and power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t tmpfs -o size=512m tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
echo "FERRITE-GUEST: kernel $(uname -r), init at $(cut -d' ' -f1 /proc/uptime)s"
while read -r ko; do
    insmod "$ko" || echo "FERRITE-GUEST: insmod $ko failed"
done </etc/ferrite-modules
mount -t configfs configfs /sys/kernel/config
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
hostname ferrite-guest
echo "FERRITE-GUEST: ready at $(cut -d' ' -f1 /proc/uptime)s"
rc=1
if [ -f /test.sh ]; then
    (
        if [ -f /test.env ]; then set -a; . /test.env; set +a; fi
        cd /tmp && exec sh /test.sh
    )
    rc=$?
else
    echo "FERRITE-GUEST: no /test.sh"
fi
echo "FERRITE-GUEST: test.sh exited $rc at $(cut -d' ' -f1 /proc/uptime)s"
if [ $rc -eq 0 ]; then
    echo "FERRITE-GUEST-RESULT: PASS"
else
    echo "--- dmesg tail ---"
    dmesg | tail -n 20
    echo "FERRITE-GUEST-RESULT: FAIL"
fi
sync
poweroff -f
EOF
chmod 0755 "$STAGE/init"

INITRD="$CACHE/initramfs.cpio.gz"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
    | gzip -6 >"$INITRD.tmp"
mv "$INITRD.tmp" "$INITRD"
# The unpacked kernel (~100 MiB of modules) is no longer needed; its .deb stays.
rm -rf "$KROOT"

# --- 5. record -----------------------------------------------------------------
cat >"$CACHE/bed.env" <<EOF
# Written by e2e/qemu/prepare.sh ($PREPARE_VERSION); sourced by run-guest.sh.
FERRITE_QEMU_BIN='$QEMU_BIN'
FERRITE_QEMU_FW='$FW'
FERRITE_QEMU_KERNEL='$KERNEL'
FERRITE_QEMU_INITRD='$INITRD'
FERRITE_QEMU_KVER='$KVER'
FERRITE_QEMU_HOSTNQN='$(cat "$CACHE/hostnqn")'
EOF
echo "$PREPARE_VERSION" >"$STAMP"
log "prepared $CACHE in $(( $(date +%s) - start_ts ))s (kernel $KVER, initramfs $(du -h "$INITRD" | cut -f1))"
