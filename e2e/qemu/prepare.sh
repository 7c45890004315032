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
#   - the Debian 13 (trixie) 6.12 cloud kernel, whose initiator and nvmet have
#     NVMe in-band authentication (DH-HMAC-CHAP) built in: fetched with a
#     private apt state (never installed on the host), `dpkg -x`, its `.ko.xz`
#     modules decompressed into a second initramfs with the same userland
#     ($CACHE/bed-6.12.env; run-guest.sh uses it with FERRITE_QEMU_BED=6.12);
#   - a gzip'ed newc initramfs: busybox-static, nvme-cli, e2fsprogs' mke2fs,
#     e2fsck and resize2fs, util-linux's blkid, xfsprogs' mkfs.xfs and
#     xfs_growfs, the modules for nvme-tcp / nvmet-tcp / loop / virtio-net / xfs, a
#     host NQN and host ID, and an /init that runs /test.sh (added later by
#     run-guest.sh as an appended cpio) and prints FERRITE-GUEST-RESULT: PASS
#     or FAIL before powering off.
# Writes $CACHE/bed.env (paths for run-guest.sh) and a stamp file keyed by
# PREPARE_VERSION, and $CACHE/bed-6.12.env with its own stamp keyed by
# PREPARE_612_VERSION: a second run is a fast no-op. Needs root (apt-get).
# Set FERRITE_QEMU_REBUILD=1 to force a rebuild of the cache.
set -euo pipefail

# Bump when anything below changes what ends up in the cache.
PREPARE_VERSION="ferrite-qemu-bed-8"
# Bump when the 6.12 bed (section 6) changes; the 6.1 bed is then left alone.
PREPARE_612_VERSION="ferrite-qemu-612-1"

CACHE="${FERRITE_QEMU_CACHE:-${FERRITE_CACHE:-$HOME/.cache/ferrite}/qemu}"
STAMP="$CACHE/stamp"
STAMP612="$CACHE/stamp-6.12"

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

bed612_ok() {
    [ -f "$STAMP612" ] && [ "$(cat "$STAMP612")" = "$PREPARE_612_VERSION" ] || return 1
    [ -f "$CACHE/bed-6.12.env" ] || return 1
    (
        # shellcheck source=/dev/null
        . "$CACHE/bed-6.12.env"
        [ -f "$FERRITE_QEMU_KERNEL" ] && [ -f "$FERRITE_QEMU_INITRD" ]
    )
}

if [ "${FERRITE_QEMU_REBUILD:-0}" != 1 ] && bed_ok && bed612_ok; then
    log "up to date ($PREPARE_VERSION, $PREPARE_612_VERSION) in $CACHE"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (uses apt-get)"
export DEBIAN_FRONTEND=noninteractive
start_ts=$(date +%s)

mkdir -p "$CACHE"
# One builder at a time; a second one waits, then finds the bed ready.
exec 9>"$CACHE/.lock"
flock 9
if [ "${FERRITE_QEMU_REBUILD:-0}" != 1 ] && bed_ok && bed612_ok; then
    log "up to date ($PREPARE_VERSION, $PREPARE_612_VERSION) in $CACHE (built by another run)"
    exit 0
fi
MAIN_BED=1
if [ "${FERRITE_QEMU_REBUILD:-0}" != 1 ] && bed_ok; then
    MAIN_BED=0
fi

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

DEBS="$CACHE/debs"
STAGE="$CACHE/initramfs-root"

# Sections 1-5: the 6.1 bed (QEMU, kernel, initramfs).
build_main_bed() {
rm -f "$STAMP"
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
}

# --- 6. the Debian 13 6.12 kernel (NVMe in-band authentication) -------------------
# Debian 12's kernels lack NVME_HOST_AUTH; trixie's cloud kernel has it (and
# NVME_TARGET_AUTH) built in. Fetched through a private apt state so that the
# host's apt sources and package state are untouched; nothing is installed.
build_612_bed() {
    rm -f "$STAMP612"
    mkdir -p "$DEBS"
    apt_install cpio gzip kmod xz-utils debian-archive-keyring
    local tapt="$CACHE/trixie-apt"
    mkdir -p "$tapt/lists/partial" "$tapt/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        >"$tapt/sources.list"
    local aopts=(-o "Dir::Etc::sourcelist=$tapt/sources.list" -o Dir::Etc::sourceparts=-
        -o "Dir::State::Lists=$tapt/lists" -o "Dir::Cache=$tapt/cache")
    log "apt-get update (private trixie state in $tapt)"
    apt-get "${aopts[@]}" update -qq 2> >(grep -v unsandboxed >&2)
    local kpkg
    kpkg=$(apt-cache "${aopts[@]}" depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-6\.12\.[^ ]*-cloud-amd64\)$/\1/p' | head -n1)
    [ -n "$kpkg" ] || die "cannot resolve trixie's linux-image-cloud-amd64 to a 6.12 image package"
    local kver=${kpkg#linux-image-}
    if ! compgen -G "$DEBS/${kpkg}_*.deb" >/dev/null; then
        log "apt-get download $kpkg (trixie)"
        (cd "$DEBS" && apt-get "${aopts[@]}" download -qq "$kpkg" 2> >(grep -v unsandboxed >&2))
    fi
    local kroot="$CACHE/kernel-6.12-root"
    rm -rf "$kroot"
    mkdir -p "$kroot"
    dpkg -x "$(deb_of "$kpkg")" "$kroot"
    # Merged /usr: the host's depmod and modprobe look under <root>/lib/modules.
    if [ ! -d "$kroot/lib/modules/$kver" ]; then
        mkdir -p "$kroot/lib/modules"
        cp -al "$kroot/usr/lib/modules/$kver" "$kroot/lib/modules/$kver"
    fi
    depmod -b "$kroot" "$kver"
    local vmlinuz
    vmlinuz=$(find "$kroot/boot" "$kroot/usr/lib" -maxdepth 2 -name "vmlinuz-$kver" 2>/dev/null | head -n1)
    [ -n "$vmlinuz" ] || die "no vmlinuz-$kver in $kpkg"
    local kernel="$CACHE/vmlinuz-$kver"
    cp "$vmlinuz" "$kernel"

    # The 6.1 initramfs's userland with this kernel's modules (decompressed for busybox
    # insmod), and an /init that skips modules the kernel already loaded on its own.
    local stage="$CACHE/initramfs-6.12-root"
    rm -rf "$stage"
    cp -a "$STAGE" "$stage"
    rm -rf "$stage/usr/lib/modules"
    : >"$stage/etc/ferrite-modules"
    local m kind path rel
    for m in virtio_pci virtio_net configfs loop nvme-fabrics nvme-tcp nvmet nvmet-tcp crc32c-intel xfs; do
        while read -r kind path _; do
            [ "$kind" = insmod ] || continue
            rel=${path#"$kroot"}
            rel=/usr${rel#/usr}
            rel=${rel%.xz}
            grep -qxF "$rel" "$stage/etc/ferrite-modules" && continue
            mkdir -p "$stage$(dirname "$rel")"
            case $path in
                *.xz) xz -dc "$path" >"$stage$rel" ;;
                *) install -m 0644 "$path" "$stage$rel" ;;
            esac
            echo "$rel" >>"$stage/etc/ferrite-modules"
        done < <(modprobe -d "$kroot" -S "$kver" --show-depends "$m" 2>/dev/null || true)
    done
    grep -q 'nvme-tcp.ko' "$stage/etc/ferrite-modules" || die "nvme-tcp.ko not found in $kpkg"
    awk '/^    insmod "\$ko"/ { print "    [ -d \"/sys/module/$(basename \"$ko\" .ko | tr - _)\" ] && continue" } { print }' \
        "$STAGE/init" >"$stage/init"
    grep -q '/sys/module/' "$stage/init" || die "could not adapt /init for the 6.12 bed"
    local initrd="$CACHE/initramfs-6.12.cpio.gz"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
        | gzip -6 >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$kroot"
    {
        echo "# Written by e2e/qemu/prepare.sh ($PREPARE_612_VERSION); sourced by run-guest.sh"
        echo "# after bed.env when FERRITE_QEMU_BED=6.12."
        echo "FERRITE_QEMU_KERNEL='$kernel'"
        echo "FERRITE_QEMU_INITRD='$initrd'"
        echo "FERRITE_QEMU_KVER='$kver'"
    } >"$CACHE/bed-6.12.env"
    echo "$PREPARE_612_VERSION" >"$STAMP612"
    log "prepared the 6.12 bed in $CACHE (kernel $kver, initramfs $(du -h "$initrd" | cut -f1))"
}

if [ "$MAIN_BED" = 1 ]; then
    build_main_bed
else
    log "6.1 bed up to date ($PREPARE_VERSION)"
fi
if [ "${FERRITE_QEMU_REBUILD:-0}" = 1 ] || ! bed612_ok; then
    build_612_bed
fi

