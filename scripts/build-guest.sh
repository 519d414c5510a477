#!/usr/bin/env bash
# Builds husk's guest initramfs: the static guest agent as /init and a static
# busybox (/bin/busybox, /bin/sh and the other applets: the guest's shell for
# tests and debugging), packed by husk-mkinitramfs into
# ${HUSK_BUILD_DIR:-<repo>/build}/guest/initramfs.cpio (next to it:
# husk-agent, the agent as packed, without debug info).
#
# busybox comes from Debian's busybox-static package (/bin/busybox), or from
# $HUSK_BUSYBOX.
#
# Usage: scripts/build-guest.sh [--release]
#
# The kernel is built separately by kernel-config/build.sh.
set -euo pipefail

usage() {
    echo "usage: $0 [--release]" >&2
    exit 2
}

profile=debug
for arg in "$@"; do
    case "$arg" in
        --release) profile=release ;;
        -h|--help) usage ;;
        *) echo "build-guest: unknown argument: $arg" >&2; usage ;;
    esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${HUSK_BUILD_DIR:-$repo/build}"
out_dir="$build_dir/guest"
target=x86_64-unknown-linux-gnu
cargo_profile_args=()
if [[ $profile == release ]]; then
    cargo_profile_args=(--release)
fi

cd "$repo"
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
if [[ -z $target_dir ]]; then
    echo "build-guest: cannot find cargo's target directory" >&2
    exit 1
fi

# The agent: static glibc (no musl here). --target keeps RUSTFLAGS away from
# host tools and gives the static build its own directory, so switching
# between this and host builds does not rebuild everything.
# libcontainer's seccomp support links libseccomp (libseccomp-dev): statically
# here, from the multiarch directory.
echo "build-guest: building husk-agent ($profile, static)" >&2
libdir="/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
if [[ ! -e $libdir/libseccomp.a ]]; then
    echo "build-guest: $libdir/libseccomp.a is missing (apt install libseccomp-dev)" >&2
    exit 1
fi
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$libdir" \
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build -p husk-agent --target "$target" "${cargo_profile_args[@]}"
agent="$target_dir/$target/$profile/husk-agent"

# The kernel starts /init with no loader; a dynamic binary would fail to exec.
file_out="$(file -b "$agent")"
if [[ $file_out != *"statically linked"* && $file_out != *"static-pie linked"* ]]; then
    echo "build-guest: $agent is not statically linked: $file_out" >&2
    exit 1
fi
if readelf -l "$agent" 2>/dev/null | grep -q 'INTERP'; then
    echo "build-guest: $agent has a program interpreter (dynamic loader)" >&2
    exit 1
fi

# The guest has no loader either: busybox must be static too.
busybox="${HUSK_BUSYBOX:-/bin/busybox}"
if [[ ! -x $busybox ]]; then
    echo "build-guest: no busybox at $busybox (apt-get install busybox-static)" >&2
    exit 1
fi
if readelf -l "$busybox" 2>/dev/null | grep -q 'INTERP'; then
    echo "build-guest: $busybox is dynamically linked (apt-get install busybox-static)" >&2
    exit 1
fi

echo "build-guest: building husk-mkinitramfs" >&2
cargo build -p husk-vmm --bin husk-mkinitramfs "${cargo_profile_args[@]}"
mkinitramfs="$target_dir/$profile/husk-mkinitramfs"

mkdir -p "$out_dir"
# Debug info and symbols would make up much of the initramfs, which the guest
# keeps in RAM; the full binary stays in target/ for addr2line.
guest_agent="$out_dir/husk-agent"
strip --strip-all -o "$guest_agent" "$agent"

initramfs="$out_dir/initramfs.cpio"
"$mkinitramfs" --output "$initramfs" --init "$guest_agent" --busybox "$busybox"

echo "build-guest: wrote $initramfs ($(stat -c %s "$initramfs") bytes)" >&2

# husk-probe goes into the benchmark's and the isolation suite's container image
# (not into the initramfs): static, so that it runs in any rootfs, and always
# optimised, because it measures.
echo "build-guest: building husk-probe (release, static)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build -p husk-probe --target "$target" --release
strip --strip-all -o "$out_dir/husk-probe" "$target_dir/$target/release/husk-probe"
if readelf -l "$out_dir/husk-probe" 2>/dev/null | grep -q 'INTERP'; then
    echo "build-guest: husk-probe is not statically linked" >&2
    exit 1
fi
echo "build-guest: wrote $out_dir/husk-probe" >&2
sha256sum "$initramfs"
