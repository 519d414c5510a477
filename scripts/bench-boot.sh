#!/usr/bin/env bash
# Boot benchmark: husk-vmm start → agent readiness line, 10 boots per configuration, and the
# VMM's idle RSS/PSS, on the KVM host (native or emulated). Prints a Markdown table.
# Each configuration runs in a test host of its own: on the emulated host, L2 has been seen to
# wedge after a few dozen nested boots in a row (docs/benchmarks.md).
# Usage: scripts/bench-boot.sh [--runs N] [CONFIG...]   (CONFIG = VCPUS:MIB)
set -euo pipefail
source "$(dirname "$0")/common.sh"
runs=10
if [ "${1:-}" = "--runs" ]; then runs=$2; shift 2; fi
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(1:128 2:128 1:512 2:512)
build_all
"$repo/scripts/build-guest.sh" --release >&2
cargo build --release -p husk-vmm -p husk-tests --bins >&2
for config in "${configs[@]}"; do
    "$repo/target/debug/husk-testhost" --timeout 900 \
        --file "$repo/target/release/husk-vmm:husk-vmm" \
        --file "$repo/target/release/husk-bootbench:husk-bootbench" \
        --file "$build_dir/guest/vmlinux:vmlinux" \
        --file "$build_dir/guest/initramfs.cpio:initramfs.cpio" \
        -- '"$HUSK_FILES/husk-bootbench" --vmm "$HUSK_FILES/husk-vmm"' \
        '--kernel "$HUSK_FILES/vmlinux" --initramfs "$HUSK_FILES/initramfs.cpio"' \
        "--runs $runs --configs $config"
done | awk '!/^\|/ || !seen[$0]++'
