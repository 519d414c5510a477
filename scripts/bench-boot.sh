#!/usr/bin/env bash
# Boot benchmark: husk-vmm start → agent readiness line, 10 boots per configuration, and the
# VMM's idle RSS/PSS, on the KVM host (native or emulated). Prints a Markdown table.
# Extra arguments go to husk-bootbench (e.g. --runs 5 --configs 1:128,2:512).
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_all
cargo build --release -p husk-vmm -p husk-tests --bins >&2
exec "$repo/target/debug/husk-testhost" --timeout 1800 \
    --file "$repo/target/release/husk-vmm:husk-vmm" \
    --file "$repo/target/release/husk-bootbench:husk-bootbench" \
    --file "$build_dir/guest/vmlinux:vmlinux" \
    --file "$build_dir/guest/initramfs.cpio:initramfs.cpio" \
    -- 'cat /proc/cpuinfo | grep -m1 "model name"; uname -r;' \
    '"$HUSK_FILES/husk-bootbench" --vmm "$HUSK_FILES/husk-vmm" --kernel "$HUSK_FILES/vmlinux"' \
    '--initramfs "$HUSK_FILES/initramfs.cpio"' "$@"
