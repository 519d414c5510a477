#!/usr/bin/env bash
# Prepare the kernel of the emulated KVM test host ("L2"), see docs/testing.md.
#
# Downloads Debian's stock linux-image-6.1.0-*-amd64 package (not installed, only
# unpacked) and lays it out under
#   ${HUSK_CACHE_DIR:-/var/cache/husk}/testhost/<kernel-release>/
#     vmlinuz                   the bzImage as packaged
#     vmlinux                   the uncompressed ELF kernel, which QEMU boots by
#                               PVH: no decompression under emulation (~3 s saved)
#     config                    the kernel's .config
#     lib/modules/<release>/    the whole module tree, uncompressed, with modules.dep
#     release                   the kernel release, e.g. 6.1.0-56-amd64
#     .complete                 written last: the directory is ready
# and prints that directory on stdout. Everything else goes to stderr.
#
# Idempotent: a complete directory is reused. Safe to run concurrently (flock).
#
# Environment:
#   HUSK_CACHE_DIR             cache root (default /var/cache/husk)
#   HUSK_TESTHOST_KERNEL_PKG   exact package, e.g. linux-image-6.1.0-56-amd64
#                              (default: the newest linux-image-6.1.0-N-amd64 apt knows)
#
# Needs: apt-get, apt-cache, dpkg-deb, depmod (kmod), flock (util-linux), grep,
# xz-utils (the kernel image is xz-compressed; zstd/gzip images work too).
set -euo pipefail

log() { echo "husk testhost setup: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

cache_root="${HUSK_CACHE_DIR:-/var/cache/husk}/testhost"
pkg_re='^linux-image-6\.1\.0-[0-9]+-amd64$'

# The newest linux-image-6.1.0-N-amd64 in apt's lists, or nothing.
newest_pkg() {
    apt-cache search --names-only "$pkg_re" 2>/dev/null |
        awk '{print $1}' | grep -E "$pkg_re" | sort -V | tail -n 1 || true
}

# The newest complete cache directory, or nothing.
newest_cached() {
    local d best=""
    for d in "$cache_root"/6.1.0-*-amd64; do
        [ -f "$d/.complete" ] && best="$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n 1)"
    done
    printf '%s' "$best"
}

pick_pkg() {
    if [ -n "${HUSK_TESTHOST_KERNEL_PKG:-}" ]; then
        printf '%s' "$HUSK_TESTHOST_KERNEL_PKG"
        return
    fi
    local pkg
    pkg="$(newest_pkg)"
    if [ -z "$pkg" ]; then
        # Offline but already prepared once: use that.
        local cached
        cached="$(newest_cached)"
        if [ -n "$cached" ]; then
            printf 'linux-image-%s' "$(basename "$cached")"
            return
        fi
        log "apt knows no $pkg_re package; running apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        pkg="$(newest_pkg)"
    fi
    [ -n "$pkg" ] || die "no package matches $pkg_re (set HUSK_TESTHOST_KERNEL_PKG)"
    printf '%s' "$pkg"
}

# Uncompress .ko.xz / .ko.zst / .ko.gz modules in place; prints how many it did.
decompress_modules() {
    local tree="$1" n=0 f
    while IFS= read -r -d '' f; do
        case "$f" in
        *.ko.xz) xz -d -q "$f" ;;
        *.ko.zst) zstd -d -q --rm "$f" ;;
        *.ko.gz) gzip -d -q "$f" ;;
        esac
        n=$((n + 1))
    done < <(find "$tree" \( -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0)
    echo "$n"
}

# Writes the ELF kernel inside bzImage $1 to $2 (as the kernel's own
# scripts/extract-vmlinux does: try each compressed-stream magic).
extract_vmlinux() {
    local img="$1" out="$2" magic off
    for magic in '\xfd7zXZ\x00' '\x28\xb5\x2f\xfd' '\x1f\x8b\x08'; do
        while read -r off; do
            case "$magic" in
            *xfd7zXZ*) tail -c +$((off + 1)) "$img" | xz -dcq >"$out" 2>/dev/null || true ;;
            *x28*) tail -c +$((off + 1)) "$img" | zstd -dcq >"$out" 2>/dev/null || true ;;
            *) tail -c +$((off + 1)) "$img" | gzip -dcq >"$out" 2>/dev/null || true ;;
            esac
            if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
                return 0
            fi
        done < <(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1)
    done
    rm -f "$out"
    return 1
}

prepare() {
    local pkg="$1" release="$2" dest="$3"
    local work
    work="$(mktemp -d "$cache_root/.tmp-$release.XXXXXX")"
    # shellcheck disable=SC2064  # expand $work now
    trap "rm -rf '$work'" EXIT

    log "downloading $pkg"
    local apt_opts=()
    # apt drops privileges to _apt for downloads, which cannot write to our
    # root-owned work directory.
    [ "$(id -u)" = 0 ] && apt_opts=(-o APT::Sandbox::User=root)
    (cd "$work" && apt-get download -q "${apt_opts[@]}" "$pkg" >&2) ||
        die "apt-get download $pkg failed"
    local deb
    deb="$(find "$work" -maxdepth 1 -name '*.deb' | head -n 1)"
    [ -n "$deb" ] || die "apt-get download left no .deb"

    log "unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$work/root"
    rm -f "$deb"

    local modsrc=""
    for d in "$work/root/lib/modules/$release" "$work/root/usr/lib/modules/$release"; do
        [ -d "$d" ] && modsrc="$d"
    done
    [ -n "$modsrc" ] || die "$pkg has no modules for $release"
    [ -f "$work/root/boot/vmlinuz-$release" ] || die "$pkg has no /boot/vmlinuz-$release"

    mkdir -p "$work/out/lib/modules"
    mv "$work/root/boot/vmlinuz-$release" "$work/out/vmlinuz"
    mv "$work/root/boot/config-$release" "$work/out/config"
    mv "$modsrc" "$work/out/lib/modules/$release"
    rm -rf "$work/root"

    extract_vmlinux "$work/out/vmlinuz" "$work/out/vmlinux" ||
        log "warning: could not extract vmlinux; QEMU will boot the slower bzImage"

    local n
    n="$(decompress_modules "$work/out/lib/modules/$release")"
    [ "$n" = 0 ] || log "decompressed $n modules"
    # The package has no modules.dep (and names change after decompression).
    depmod -b "$work/out" "$release"
    for m in kvm kvm-amd irqbypass ccp; do
        grep -qE "/$m\.ko:" "$work/out/lib/modules/$release/modules.dep" ||
            die "module $m.ko missing from $pkg"
    done

    printf '%s\n' "$release" >"$work/out/release"
    printf 'package=%s\nprepared=%s\n' "$pkg" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        >"$work/out/.complete"
    rm -rf "$dest"
    mv "$work/out" "$dest"
    rm -rf "$work"
    trap - EXIT
}

main() {
    mkdir -p "$cache_root"
    local pkg release dest
    pkg="$(pick_pkg)"
    [[ "$pkg" =~ ^linux-image- ]] || die "not a linux-image package: $pkg"
    release="${pkg#linux-image-}"
    dest="$cache_root/$release"

    # Directories prepared before vmlinux was extracted get it now.
    if [ -f "$dest/.complete" ] && [ ! -f "$dest/vmlinux" ]; then
        exec 9>"$cache_root/.lock"
        flock 9
        if [ ! -f "$dest/vmlinux" ]; then
            extract_vmlinux "$dest/vmlinuz" "$dest/vmlinux.tmp" &&
                mv "$dest/vmlinux.tmp" "$dest/vmlinux" && log "extracted $dest/vmlinux"
        fi
        flock -u 9
    fi
    if [ ! -f "$dest/.complete" ]; then
        exec 9>"$cache_root/.lock"
        flock 9
        # Another run may have finished while we waited.
        if [ ! -f "$dest/.complete" ]; then
            # Leftovers of runs that were killed.
            rm -rf "$cache_root"/.tmp-"$release".*
            prepare "$pkg" "$release" "$dest"
            log "prepared $dest"
        fi
        flock -u 9
    fi
    printf '%s\n' "$dest"
}

main "$@"
