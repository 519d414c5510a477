#!/usr/bin/env bash
# containerd benchmark: `ctr run --rm IMG true` wall time with runc and with husk, and the
# memory (RSS/PSS) of an idle container's shim (and VMM), in one run on the KVM host
# (native or emulated). Release builds. Extra arguments go to husk-ctr-bench (e.g. --runs 20).
# HUSK_CONTAINERD_BIN selects another containerd (see tests/containerd/fetch.sh).
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_all
"$repo/scripts/build-guest.sh" --release >&2
cargo build --release -p husk-vmm -p husk-shim -p husk-tests --bins >&2
exec "$repo/target/release/husk-ctr-bench" \
    --shim "$repo/target/release/containerd-shim-husk-v2" \
    --vmm "$repo/target/release/husk-vmm" \
    --kernel "$build_dir/guest/vmlinux" \
    --initramfs "$build_dir/guest/initramfs.cpio" \
    --image-tool "$repo/target/release/husk-image" "$@"
