#!/usr/bin/env bash
# Build the guest images that Vouch boots under QEMU.
#
#   images/build.sh [--force] [minimal|systemd|all]      (default: all)
#
# Output root: ${VOUCH_IMAGES:-<repo>/.cache/images}.  Each image is built in
# <root>/<name>-<hash12>/ (hash12: sha256 over this script, the files under
# images/guest/ and the Debian package versions the image is made of), and
# <root>/<name> is a symlink to the newest one.  An image directory is
# complete iff it holds image.json: it is assembled in a temporary directory
# and renamed into place only at the very end.
#
# Needs root (debootstrap, chroot, mknod) and Debian's apt archive.
# See images/README.md for what the guests run.
set -euo pipefail

readonly SUITE=bookworm
readonly MIRROR=${VOUCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
readonly RECIPE_VERSION=1

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
IMAGES_DIR=$(dirname "$SCRIPT_PATH")
REPO_ROOT=$(dirname "$IMAGES_DIR")
GUEST_DIR=$IMAGES_DIR/guest
OUT_ROOT=${VOUCH_IMAGES:-$REPO_ROOT/.cache/images}
readonly SCRIPT_PATH IMAGES_DIR REPO_ROOT GUEST_DIR OUT_ROOT

# Packages of the systemd guest, on top of debootstrap's minbase.
readonly SYSTEMD_PACKAGES=(
    systemd systemd-sysv udev dbus iproute2 iputils-ping procps kmod
    nginx-light curl netcat-openbsd less ca-certificates libpam-systemd
    openssh-server
)

# The desktop guest: the systemd guest plus an X server on the VGA card
# (modesetting over bochs), a small window manager, xterm, and the X tools
# the driver's calls use (xwininfo, xwd), chvt (kbd) to switch consoles, and
# Xvfb for an X display where there is no VGA card (a container).
readonly DESKTOP_PACKAGES=(
    xserver-xorg-core xserver-xorg-input-libinput xinit xterm x11-utils x11-apps twm xfonts-base kbd xvfb
)

# Modules the guests insmod from their initramfs; build.sh adds their
# dependencies from modules.dep.  Names as in modules.dep (file stem).
readonly MINIMAL_MODULES=(
    virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    virtio_mmio virtio_console virtio_blk virtio-rng failover net_failover
    virtio_net netfs fscache 9pnet 9pnet_virtio 9p vmw_vsock_virtio_transport
)
readonly SYSTEMD_INITRD_MODULES=(
    virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    virtio_mmio virtio_blk crc32c_generic crc16 mbcache jbd2 ext4
)

# Module trees left out of the systemd guest's /lib/modules: hardware a
# QEMU test VM never has (saves ~200 MB of root disk).
readonly MODULE_EXCLUDES=(
    kernel/drivers/gpu kernel/drivers/media kernel/sound
    kernel/drivers/infiniband kernel/drivers/iio kernel/drivers/staging
    kernel/drivers/net/ethernet kernel/drivers/isdn kernel/drivers/bluetooth
    kernel/net/bluetooth
)

# Units that would grab the consoles the driver uses, or wait for a network
# or clock that a test VM does not have.  Masked in the systemd guest.
readonly CONSOLE_MASKS=(
    serial-getty@ttyS0.service serial-getty@hvc0.service getty@tty1.service
    console-getty.service getty-static.service
    systemd-networkd-wait-online.service systemd-time-wait-sync.service
)
# Units that only cost boot time in a throw-away test VM.  Also masked.
readonly TRIM_MASKS=(
    systemd-timesyncd.service
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
    e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer
    logrotate.timer systemd-tmpfiles-clean.timer
    systemd-hwdb-update.service ldconfig.service systemd-update-done.service
    systemd-journal-flush.service systemd-pstore.service
    systemd-firstboot.service systemd-machine-id-commit.service
    systemd-random-seed.service
    modprobe@drm.service
    dev-hugepages.mount sys-kernel-debug.mount sys-kernel-tracing.mount
)

FORCE=0
WORK=

log() { printf '%s build.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    cat >&2 <<EOF
usage: images/build.sh [--force] [minimal|systemd|desktop|all]

Builds Vouch guest images into \${VOUCH_IMAGES:-<repo>/.cache/images}
(now: $OUT_ROOT) and prints the image directories on stdout.
  --force   rebuild even if an image with the same recipe hash exists
            (also re-runs debootstrap instead of using its cached tarball)
EOF
}

cleanup() {
    local rc=$?
    if [[ -n $WORK && -d $WORK ]]; then
        # debootstrap/chroot may have left mounts behind if interrupted.
        local m
        while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done < <(awk -v w="$WORK" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r)
        rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}

check_tools() {
    # command:apt-package
    local need=(
        apt-get:apt apt-cache:apt dpkg-deb:dpkg dpkg-query:dpkg
        debootstrap:debootstrap busybox:busybox-static cpio:cpio xz:xz-utils
        gzip:gzip depmod:kmod mkfs.ext4:e2fsprogs file:file ldd:libc-bin
        sha256sum:coreutils flock:util-linux chroot:coreutils tar:tar
        gcc:gcc
    )
    local missing=() entry
    for entry in "${need[@]}"; do
        command -v "${entry%%:*}" > /dev/null 2>&1 || missing+=("${entry#*:}")
    done
    if ((${#missing[@]})); then
        die "missing tools; install them with: apt-get install $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
    fi
    if ! file -L "$(command -v busybox)" | grep -q 'statically linked'; then
        die "busybox is not statically linked; install with: apt-get install busybox-static"
    fi
    [[ -e /usr/lib/x86_64-linux-gnu/libc.a ]] || die "no static libc for vsockd; install with: apt-get install libc6-dev"
    ((EUID == 0)) || die "must run as root (debootstrap, chroot, mknod)"
}

# Installs the vsock backdoor (for firecracker and cloud-hypervisor) into a
# staging root: vsockd, built static so it runs in the busybox guest too.
stage_vsock_backdoor() {
    local root=$1
    mkdir -p "$root/usr/libexec/vouch"
    gcc -static -O2 -Wall -o "$root/usr/libexec/vouch/vsockd" "$GUEST_DIR/common/vsockd.c" ||
        die "cannot compile vsockd"
    strip "$root/usr/libexec/vouch/vsockd" 2>/dev/null || true
    install -m 0755 "$GUEST_DIR/common/vsock-shell" "$root/usr/libexec/vouch/vsock-shell"
    install -m 0755 "$GUEST_DIR/common/vsock-backdoor" "$root/usr/libexec/vouch/vsock-backdoor"
}

# ---------------------------------------------------------------- kernel ---

KPKG='' KDEBVER='' KVER='' KDIR=''

resolve_kernel() {
    KPKG=$(apt-cache depends --no-recommends --no-suggests linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    [[ -n $KPKG ]] || die "cannot resolve linux-image-amd64 (run: apt-get update)"
    KDEBVER=$(apt-cache policy "$KPKG" | awk '$1 == "Candidate:" { print $2; exit }')
    [[ -n $KDEBVER && $KDEBVER != "(none)" ]] || die "no candidate version for $KPKG (run: apt-get update)"
    KVER=${KPKG#linux-image-}
    KDIR=$OUT_ROOT/.kernel/${KPKG}_${KDEBVER}
}

# Unpacks the kernel package into a cache dir shared by all images:
# $KDIR/{vmlinux,modules/<kver>/...,kernelVersion}.
ensure_kernel() {
    [[ -f $KDIR/.complete ]] && return 0
    log "kernel: downloading $KPKG=$KDEBVER"
    local t=$WORK/kernel
    mkdir -p "$t/deb" "$t/x" "$t/out"
    (cd "$t/deb" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KDEBVER" > /dev/null) ||
        die "apt-get download $KPKG=$KDEBVER failed"
    log "kernel: unpacking"
    dpkg-deb -x "$t"/deb/*.deb "$t/x"
    local vmlinuz=$t/x/boot/vmlinuz-$KVER
    [[ -f $vmlinuz ]] || die "no /boot/vmlinuz-$KVER in $KPKG"
    [[ -d $t/x/lib/modules/$KVER ]] || die "no /lib/modules/$KVER in $KPKG"
    log "kernel: extracting the uncompressed ELF from vmlinuz"
    local off
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -n 1 | cut -d: -f1 || true)
    [[ -n $off ]] || die "no xz stream in $vmlinuz"
    # xz stops after the first stream, so tail may die of SIGPIPE: ignore it.
    { tail -c "+$((off + 1))" "$vmlinuz" || true; } | xz -dc --single-stream > "$t/out/vmlinux" ||
        die "unxz of the vmlinuz payload failed"
    file "$t/out/vmlinux" | grep -q 'ELF 64-bit LSB executable, x86-64' ||
        die "extracted vmlinux is not an x86-64 ELF: $(file -b "$t/out/vmlinux")"
    log "kernel: depmod $KVER"
    mkdir -p "$t/out/lib/modules"
    mv "$t/x/lib/modules/$KVER" "$t/out/lib/modules/"
    depmod -b "$t/out" "$KVER"
    echo "$KVER" > "$t/out/kernelVersion"
    touch "$t/out/.complete"
    mkdir -p "$(dirname "$KDIR")"
    rm -rf "$KDIR"
    mv -T "$t/out" "$KDIR"
    rm -rf "$t"
}

# Prints the module files (relative to /lib/modules/<kver>) needed for the
# named modules, dependencies first.
resolve_modules() {
    local dep=$KDIR/lib/modules/$KVER/modules.dep
    awk -v want="$*" '
        function stem(p,  s) { s = p; sub(/.*\//, "", s); sub(/\.ko(\.[a-z]+)?$/, "", s); gsub(/-/, "_", s); return s }
        function visit(m,  n, i, d) {
            if (m in done) return
            done[m] = 1
            n = split(deps[m], d, " ")
            # modules.dep lists the deepest dependency last
            for (i = n; i >= 1; i--) visit(stem(d[i]))
            print path[m]
        }
        {
            p = $1; sub(/:$/, "", p); m = stem(p); path[m] = p
            $1 = ""; deps[m] = $0
        }
        END {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) {
                m = w[i]; gsub(/-/, "_", m)
                if (!(m in path)) { print "missing module " w[i] > "/dev/stderr"; exit 1 }
                visit(m)
            }
        }' "$dep"
}

# ----------------------------------------------------------- recipe hash ---

# The recipe of an image: this script, the guest files, and versions.
recipe_hash() {
    local name=$1
    shift
    {
        echo "vouch-image-recipe $RECIPE_VERSION $name"
        echo "kernel $KPKG=$KDEBVER"
        printf '%s\n' "$@"
        echo "== build.sh"
        cat "$SCRIPT_PATH"
        local f
        while IFS= read -r -d '' f; do
            echo "== ${f#"$IMAGES_DIR"/}"
            cat "$f"
        done < <(find "$GUEST_DIR" -type f -print0 | LC_ALL=C sort -z)
    } | sha256sum | cut -c1-12
}

host_versions() {
    dpkg-query -W -f '${Package}=${Version}\n' "$@" 2>/dev/null | sort
}

# ------------------------------------------------------ shared builders ---

# Copies busybox (+ all applet links) into a staging root.
stage_busybox() {
    local root=$1 applet
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin}
    cp "$(command -v busybox)" "$root/bin/busybox"
    while read -r applet; do
        [[ $applet == bin/busybox ]] && continue
        [[ -e $root/$applet || -L $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
    done < <(busybox --list-full)
}

# Copies modules (already resolved) into a staging root and writes their
# load order to /etc/vouch/modules.
stage_modules() {
    local root=$1
    shift
    local src=$KDIR/lib/modules/$KVER dst=$root/lib/modules/$KVER ko
    mkdir -p "$dst" "$root/etc/vouch"
    : > "$root/etc/vouch/modules"
    while read -r ko; do
        mkdir -p "$dst/$(dirname "$ko")"
        cp "$src/$ko" "$dst/$ko"
        echo "$ko" >> "$root/etc/vouch/modules"
    done < <(resolve_modules "$@")
}

# Writes a gzip'd newc cpio of a staging root.
make_cpio() {
    local root=$1 out=$2
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -6 -n > "$out"
}

link_kernel() {
    local out=$1
    ln "$KDIR/vmlinux" "$out/vmlinux" 2>/dev/null || cp "$KDIR/vmlinux" "$out/vmlinux"
}

write_manifest() {
    local out=$1 name=$2 hash=$3 rootdisk=$4 ready=$5 cmdline=$6 hostparam=$7 rootdir=${8:-}
    local q_root=null q_ready=null q_dir=null
    [[ -n $rootdisk ]] && q_root="\"$rootdisk\""
    [[ -n $rootdir ]] && q_dir="\"$rootdir\""
    [[ -n $ready ]] && q_ready="\"$ready\""
    cat > "$out/image.json" <<EOF
{
  "name": "$name",
  "recipe": "$hash",
  "kernel": "vmlinux",
  "initrd": "initrd.img",
  "rootDisk": $q_root,
  "rootDirectory": $q_dir,
  "cmdline": "$cmdline",
  "readyUnit": $q_ready,
  "kernelVersion": "$KVER",
  "kernelPackage": "$KPKG=$KDEBVER",
  "hostnameParam": "$hostparam",
  "backdoorBanner": "Spawning backdoor root shell...",
  "vsockBackdoor": true
}
EOF
}

# Renames a finished build into place and repoints the <name> symlink.
publish() {
    local name=$1 hash=$2 tmp=$3
    local final=$OUT_ROOT/$name-$hash
    if [[ -e $final ]]; then
        mv -T "$final" "$WORK/old-$name"
    fi
    mv -T "$tmp" "$final"
    ln -sfn "$name-$hash" "$OUT_ROOT/.$name.link.$$"
    mv -T "$OUT_ROOT/.$name.link.$$" "$OUT_ROOT/$name"
    log "$name: done: $final"
    echo "$final"
}

# Returns 0 (and prints the dir) if a complete image with this hash exists.
cached() {
    local name=$1 hash=$2
    local final=$OUT_ROOT/$name-$hash
    if ((!FORCE)) && [[ -f $final/image.json ]] && grep -q "\"recipe\": \"$hash\"" "$final/image.json"; then
        ln -sfn "$name-$hash" "$OUT_ROOT/.$name.link.$$"
        mv -T "$OUT_ROOT/.$name.link.$$" "$OUT_ROOT/$name"
        log "$name: cached ($final)"
        echo "$final"
        return 0
    fi
    return 1
}

# --------------------------------------------------------------- minimal ---

readonly MINIMAL_CMDLINE="console=ttyS0 panic=-1 loglevel=4"

build_minimal() {
    local hash
    hash=$(recipe_hash minimal \
        "cmdline $MINIMAL_CMDLINE" \
        "modules ${MINIMAL_MODULES[*]}" \
        "$(host_versions busybox-static bash libc6 libtinfo6)")
    cached minimal "$hash" && return 0
    log "minimal: building recipe $hash"
    ensure_kernel

    local out=$WORK/minimal.out root=$WORK/minimal.root
    mkdir -p "$out" "$root"
    log "minimal: staging busybox, bash and modules"
    mkdir -p "$root"/{dev,proc,sys,tmp,run,root,etc/init.d,usr/libexec/vouch,lib64,lib/x86_64-linux-gnu}
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    stage_busybox "$root"
    rm -f "$root/bin/bash"
    cp /bin/bash "$root/bin/bash"
    local lib
    while read -r lib; do
        mkdir -p "$root/$(dirname "$lib")"
        cp -L "$lib" "$root/$lib"
    done < <(ldd /bin/bash | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
    stage_modules "$root" "${MINIMAL_MODULES[@]}"

    ln -s bin/busybox "$root/init"
    install -m 0644 "$GUEST_DIR/minimal/inittab" "$root/etc/inittab"
    install -m 0755 "$GUEST_DIR/minimal/rcS" "$root/etc/init.d/rcS"
    install -m 0755 "$GUEST_DIR/minimal/rcK" "$root/etc/init.d/rcK"
    install -m 0755 "$GUEST_DIR/minimal/backdoor" "$root/usr/libexec/vouch/backdoor"
    install -m 0755 "$GUEST_DIR/common/network" "$root/usr/libexec/vouch/network"
    stage_vsock_backdoor "$root"
    printf 'root::0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
    printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' > "$root/etc/group"
    printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"
    # bash (/dev/tcp/NAME/PORT) resolves through glibc's NSS: files (built
    # into libc.so.6 since glibc 2.34) and dns; busybox (static glibc) reads
    # /etc/hosts too.  The network script rewrites /etc/hosts at boot.
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
    printf '/bin/sh\n/bin/bash\n' > "$root/etc/shells"
    echo machine > "$root/etc/hostname"

    log "minimal: writing initrd.img"
    make_cpio "$root" "$out/initrd.img"
    link_kernel "$out"
    write_manifest "$out" minimal "$hash" "" "" "$MINIMAL_CMDLINE" vouch.hostname
    publish minimal "$hash" "$out"
}

# --------------------------------------------------------------- systemd ---

readonly SYSTEMD_CMDLINE="console=ttyS0 root=/dev/vda rw panic=-1 loglevel=4"

DBS_TAR='' DBS_VERSIONS=''

# debootstrap is the slow, network-bound step: its result is cached as a
# tarball keyed by suite, mirror and package list, with the resolved package
# versions beside it (they go into the image's recipe hash).
# ensure_debootstrap NAME PACKAGE...: the cached tarball for that package list.
ensure_debootstrap() {
    local name=$1 key
    shift
    key=$(printf '%s\n' "$SUITE" "$MIRROR" minbase "$@" | sha256sum | cut -c1-12)
    DBS_TAR=$OUT_ROOT/.debootstrap/$SUITE-$key.tar
    DBS_VERSIONS=$OUT_ROOT/.debootstrap/$SUITE-$key.versions
    if ((!FORCE)) && [[ -f $DBS_TAR && -f $DBS_VERSIONS ]]; then
        log "$name: using cached debootstrap $DBS_TAR"
        return 0
    fi
    local t=$WORK/debootstrap-$name
    mkdir -p "$t" "$OUT_ROOT/.debootstrap"
    local include
    include=$(IFS=,; echo "$*")
    log "$name: debootstrap $SUITE ($include) from $MIRROR"
    debootstrap --variant=minbase --include="$include" "$SUITE" "$t/root" "$MIRROR" > "$t/log" 2>&1 ||
        { tail -n 30 "$t/log" >&2; die "debootstrap failed (full log: $t/log)"; }
    chroot "$t/root" apt-get clean
    rm -rf "$t/root"/var/lib/apt/lists/*
    # shellcheck disable=SC2016 # dpkg-query format, not shell
    chroot "$t/root" dpkg-query -W -f '${Package}=${Version}\n' | sort > "$t/versions"
    log "$name: caching debootstrap result"
    tar --numeric-owner --xattrs -C "$t/root" -cf "$t/root.tar" .
    mv -T "$t/root.tar" "$DBS_TAR"
    mv -T "$t/versions" "$DBS_VERSIONS"
    rm -rf --one-file-system "$t"
}

configure_rootfs() {
    local r=$1 unit
    log "systemd: configuring the root filesystem"
    # Kernel modules of the guest kernel (so udev/modprobe work inside).
    mkdir -p "$r/lib/modules"
    local excl=()
    for unit in "${MODULE_EXCLUDES[@]}"; do excl+=(--exclude="./$unit"); done
    tar -C "$KDIR/lib/modules" "${excl[@]}" -cf - "./$KVER" | tar -C "$r/lib/modules" -xf -
    # The one display driver a test VM can have (QEMU's VGA card, for
    # "graphics": true): bochs and the DRM modules it needs, so that fbcon
    # shows the virtual consoles.
    local ko
    while read -r ko; do
        [[ -e $r/lib/modules/$KVER/$ko ]] && continue
        mkdir -p "$r/lib/modules/$KVER/$(dirname "$ko")"
        cp "$KDIR/lib/modules/$KVER/$ko" "$r/lib/modules/$KVER/$ko"
    done < <(resolve_modules bochs)
    depmod -b "$r" "$KVER"

    # Backdoor, host share, journald/systemd/sysctl settings.
    install -D -m 0755 "$GUEST_DIR/systemd/backdoor" "$r/usr/libexec/vouch/backdoor"
    install -D -m 0755 "$GUEST_DIR/systemd/mount-shared" "$r/usr/libexec/vouch/mount-shared"
    install -D -m 0755 "$GUEST_DIR/common/network" "$r/usr/libexec/vouch/network"
    install -D -m 0644 "$GUEST_DIR/systemd/vouch-network.service" "$r/etc/systemd/system/vouch-network.service"
    install -D -m 0644 "$GUEST_DIR/systemd/backdoor.service" "$r/etc/systemd/system/backdoor.service"
    stage_vsock_backdoor "$r"
    install -D -m 0644 "$GUEST_DIR/systemd/vsock-backdoor.service" "$r/etc/systemd/system/vsock-backdoor.service"
    install -D -m 0644 "$GUEST_DIR/systemd/vouch-shared.service" "$r/etc/systemd/system/vouch-shared.service"
    install -D -m 0644 "$GUEST_DIR/systemd/journald.conf" "$r/etc/systemd/journald.conf.d/vouch.conf"
    install -D -m 0644 "$GUEST_DIR/systemd/system.conf" "$r/etc/systemd/system.conf.d/vouch.conf"
    install -D -m 0644 "$GUEST_DIR/systemd/sysctl.conf" "$r/etc/sysctl.d/50-vouch.conf"
    mkdir -p "$r/etc/systemd/system/multi-user.target.wants" "$r/etc/systemd/system/local-fs.target.wants" \
        "$r/etc/systemd/system/sysinit.target.wants" "$r/etc/systemd/system/network-online.target.wants"
    ln -sf ../backdoor.service "$r/etc/systemd/system/multi-user.target.wants/backdoor.service"
    ln -sf ../vsock-backdoor.service "$r/etc/systemd/system/multi-user.target.wants/vsock-backdoor.service"
    ln -sf ../vouch-shared.service "$r/etc/systemd/system/local-fs.target.wants/vouch-shared.service"
    ln -sf ../vouch-network.service "$r/etc/systemd/system/sysinit.target.wants/vouch-network.service"
    ln -sf ../vouch-network.service "$r/etc/systemd/system/network-online.target.wants/vouch-network.service"
    # Kernel interface names (eth0, eth1, ... as in NixOS test VMs): no
    # predictable-name .link policy, so udev never renames a NIC the network
    # script has already brought up (a rename of an up link fails).
    mkdir -p "$r/etc/systemd/network"
    ln -sfn /dev/null "$r/etc/systemd/network/99-default.link"
    mkdir -p "$r/tmp/shared"

    local masks=("${CONSOLE_MASKS[@]}")
    [[ -n ${VOUCH_NO_TRIM:-} ]] || masks+=("${TRIM_MASKS[@]}")
    for unit in "${masks[@]}"; do
        ln -sfn /dev/null "$r/etc/systemd/system/$unit"
    done
    # nginx: enabled by its postinst; it listens on :80 and needs no network.
    [[ -L $r/etc/systemd/system/multi-user.target.wants/nginx.service ]] ||
        ln -s /lib/systemd/system/nginx.service "$r/etc/systemd/system/multi-user.target.wants/nginx.service"

    # Identity: the host name comes from systemd.hostname= on the kernel
    # command line; this is the fallback.
    echo machine > "$r/etc/hostname"
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$r/etc/hosts"
    # Root: empty password (like NixOS test VMs), login shell bash.
    chroot "$r" passwd -d root > /dev/null
    # A fixed machine id keeps systemd out of first-boot mode; the host can
    # give each VM its own with systemd.machine_id= on the command line.
    printf '%s\n' "$(printf 'vouch-%s' "$SUITE" | md5sum | cut -c1-32)" > "$r/etc/machine-id"
    # No fstab entry for /: the initramfs mounts it read-write, and an entry
    # would make systemd-fsck-root and remount-fs wait for dev-vda.device
    # (udev coldplug; ~5 s under TCG).
    printf '# / is mounted by the Vouch initramfs; /tmp/shared by vouch-shared.service\n' > "$r/etc/fstab"
    chroot "$r" ldconfig
    rm -rf "$r"/var/cache/apt/*.bin "$r"/var/log/*.log "$r"/var/log/apt/* "$r/etc/resolv.conf"
    touch "$r/etc/resolv.conf"
}

build_systemd_initrd() {
    local root=$1 out=$2
    mkdir -p "$root"/{dev,proc,sys,newroot,etc}
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    stage_busybox "$root"
    stage_modules "$root" "${SYSTEMD_INITRD_MODULES[@]}"
    install -m 0755 "$GUEST_DIR/common/initrd-init" "$root/init"
    make_cpio "$root" "$out"
}

build_systemd() {
    ensure_debootstrap systemd "${SYSTEMD_PACKAGES[@]}"
    build_systemd_like systemd multi-user.target
}

build_desktop() {
    ensure_debootstrap desktop "${SYSTEMD_PACKAGES[@]}" "${DESKTOP_PACKAGES[@]}"
    build_systemd_like desktop multi-user.target
}

# The root filesystem additions of the desktop guest: root logged in on
# tty1, an X server on vt7 started for graphical.target.
configure_desktop() {
    local r=$1
    log "desktop: autologin on tty1, X on vt7"
    rm -f "$r/etc/systemd/system/getty@tty1.service"  # the systemd guest masks it
    install -D -m 0644 "$GUEST_DIR/desktop/autologin.conf" "$r/etc/systemd/system/getty@tty1.service.d/autologin.conf"
    install -D -m 0644 "$GUEST_DIR/desktop/vouch-x.service" "$r/etc/systemd/system/vouch-x.service"
    install -D -m 0755 "$GUEST_DIR/desktop/xinitrc" "$r/etc/vouch/xinitrc"
    install -D -m 0644 "$GUEST_DIR/desktop/twmrc" "$r/etc/vouch/twmrc"
    mkdir -p "$r/etc/systemd/system/graphical.target.wants"
    ln -sf ../vouch-x.service "$r/etc/systemd/system/graphical.target.wants/vouch-x.service"
    ln -sfn /lib/systemd/system/graphical.target "$r/etc/systemd/system/default.target"
}

# build_systemd_like NAME READY_UNIT: a systemd guest from the debootstrap
# tarball ensure_debootstrap chose.
build_systemd_like() {
    local name=$1 ready=$2
    local hash
    hash=$(recipe_hash "$name" \
        "cmdline $SYSTEMD_CMDLINE" \
        "suite $SUITE mirror $MIRROR" \
        "initrd-modules ${SYSTEMD_INITRD_MODULES[*]}" \
        "$(host_versions busybox-static e2fsprogs)" \
        "$(cat "$DBS_VERSIONS")")
    cached "$name" "$hash" && return 0
    log "$name: building recipe $hash"
    ensure_kernel

    local out=$WORK/$name.out r=$WORK/$name.root
    mkdir -p "$out" "$r"
    log "$name: unpacking the debootstrap tarball"
    tar --numeric-owner --xattrs -C "$r" -xf "$DBS_TAR"
    configure_rootfs "$r"
    [[ $name != desktop ]] || configure_desktop "$r"

    local used size
    used=$(du -sm "$r" | cut -f1)
    size=$((used + 256))
    log "$name: mkfs.ext4 -d (${used} MiB used, ${size} MiB image)"
    # Keep the journal: the image is only ever a read-only qcow2 backing
    # file, but the overlay a VM writes to must survive crash() + restart.
    mkfs.ext4 -q -F -L vouch-root -m 0 -E lazy_itable_init=0,lazy_journal_init=0 \
        -d "$r" "$out/rootfs.ext4" "${size}M" >&2

    # The same tree, unpacked, is what containers (systemd-nspawn) boot: a
    # rename, so it costs disk space but no time.
    mv -T "$r" "$out/rootfs"

    log "$name: writing initrd.img"
    build_systemd_initrd "$WORK/$name.initrd" "$out/initrd.img"
    link_kernel "$out"
    write_manifest "$out" "$name" "$hash" rootfs.ext4 "$ready" "$SYSTEMD_CMDLINE" systemd.hostname rootfs
    publish "$name" "$hash" "$out"
}

# ------------------------------------------------------------------ main ---

main() {
    local targets=()
    while (($#)); do
        case $1 in
            --force) FORCE=1 ;;
            -h | --help) usage; exit 0 ;;
            minimal | systemd | desktop) targets+=("$1") ;;
            all) targets+=(minimal systemd desktop) ;;
            *) usage; exit 2 ;;
        esac
        shift
    done
    ((${#targets[@]})) || targets=(minimal systemd)

    check_tools
    mkdir -p "$OUT_ROOT"
    # One build at a time per output root.
    exec 9> "$OUT_ROOT/.lock"
    flock 9
    WORK=$(mktemp -d "$OUT_ROOT/.tmp-build.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    resolve_kernel
    log "kernel: $KPKG=$KDEBVER ($KVER)"
    local t
    for t in "${targets[@]}"; do
        "build_$t"
    done
}

main "$@"
