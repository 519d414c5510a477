#!/usr/bin/env bash
# vsock benchmark: RPC round-trip latency (Health, p50/p99) and stream throughput both ways
# (a guest process's stdout to the host, the host to a guest process's stdin), through
# husk-vmm's userspace virtio-vsock device and the agent API, on the KVM host (native or
# emulated). Release builds. Extra arguments go to `husk-agent-check bench`
# (e.g. --rpcs 2000 --mib 128).
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_all
"$repo/scripts/build-guest.sh" --release >&2
cargo build --release -p husk-vmm -p husk-tests --bins >&2
exec "$repo/target/debug/husk-testhost" --timeout 1800 \
    --file "$repo/target/release/husk-vmm:husk-vmm" \
    --file "$repo/target/release/husk-agent-check:husk-agent-check" \
    --file "$build_dir/guest/vmlinux:vmlinux" \
    --file "$build_dir/guest/initramfs.cpio:initramfs.cpio" \
    -- 'F=$HUSK_FILES; mkdir -p /run/husk/bench;' \
    '"$F/husk-vmm" --kernel "$F/vmlinux" --initramfs "$F/initramfs.cpio" --vcpus 2 --memory 512' \
    '--vsock-uds /run/husk/bench/vsock.sock --console none & V=$!;' \
    '"$F/husk-agent-check" bench --run-dir /run/husk/bench' "$@" '; rc=$?; kill $V; wait $V; exit $rc'
