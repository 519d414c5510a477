#!/usr/bin/env bash
# husk's main job at this stage: build everything, boot a guest under husk-vmm on a KVM host
# (this machine's KVM, or the emulated test host where /dev/kvm cannot boot stock guests),
# and print what the agent reports. Options are passed to husk-vmm, e.g. --vcpus 2.
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_all
exec "$repo/target/debug/husk-testhost" \
    --file "$repo/target/debug/husk-vmm:husk-vmm" \
    --file "$build_dir/guest/vmlinux:vmlinux" \
    --file "$build_dir/guest/initramfs.cpio:initramfs.cpio" \
    -- '"$HUSK_FILES/husk-vmm" --kernel "$HUSK_FILES/vmlinux"' \
    '--initramfs "$HUSK_FILES/initramfs.cpio" --init-arg=--poweroff' "$@"
