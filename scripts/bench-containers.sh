#!/usr/bin/env bash
# Container benchmark: create+start latency of a container inside the guest (the agent's
# libcontainer helper, rootfs on the virtio-fs share), and the whole create, start, exit and
# remove cycle, through the agent API on the KVM host (native or emulated). Release builds.
# Extra arguments go to `husk-ctr-check bench` (e.g. --n 50).
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_all
"$repo/scripts/build-guest.sh" --release >&2
cargo build --release -p husk-vmm -p husk-tests --bins >&2
busybox="$(command -v busybox)"
exec "$repo/target/debug/husk-testhost" --timeout 1800 \
    --file "$repo/target/release/husk-vmm:husk-vmm" \
    --file "$repo/target/release/husk-ctr-check:husk-ctr-check" \
    --file "$busybox:busybox" \
    --file "$build_dir/guest/vmlinux:vmlinux" \
    --file "$build_dir/guest/initramfs.cpio:initramfs.cpio" \
    -- 'F=$HUSK_FILES; mkdir -p /run/husk/bench /srv/share; mount -t tmpfs tmpfs /srv/share;' \
    'chmod +x "$F/busybox";' \
    '"$F/husk-vmm" --kernel "$F/vmlinux" --initramfs "$F/initramfs.cpio" --vcpus 2 --memory 512' \
    '--vsock-uds /run/husk/bench/vsock.sock --fs-share /srv/share --console none & V=$!;' \
    '"$F/husk-ctr-check" bench --run-dir /run/husk/bench --share /srv/share --busybox "$F/busybox"' \
    "$@" '; rc=$?; kill $V; wait $V; exit $rc'
