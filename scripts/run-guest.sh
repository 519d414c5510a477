#!/usr/bin/env bash
# husk's main job at this stage: build everything, then on a KVM host (this machine's KVM, or
# the emulated test host where /dev/kvm cannot boot stock guests) boot a VM with `husk run-vm`,
# print what the guest reports (GetGuestDetails), run a command in it over the agent API and
# exit with the command's status.
# Usage: scripts/run-guest.sh [husk run-vm options, e.g. --vcpus 2 --memory 256] [-- CMD...]
# (default command: uname -a)
set -euo pipefail
source "$(dirname "$0")/common.sh"
opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
cmd=("$@")
[ ${#cmd[@]} -gt 0 ] || cmd=(uname -a)
quote() { local a out=""; for a in "$@"; do out+=" '${a//\'/\'\\\'\'}'"; done; printf '%s' "$out"; }
build_all
exec "$repo/target/debug/husk-testhost" \
    --file "$repo/target/debug/husk-vmm:husk-vmm" \
    --file "$repo/target/debug/husk:husk" \
    --file "$build_dir/guest/vmlinux:vmlinux" \
    --file "$build_dir/guest/initramfs.cpio:initramfs.cpio" \
    -- '"$HUSK_FILES/husk" run-vm --vmm "$HUSK_FILES/husk-vmm" --kernel "$HUSK_FILES/vmlinux"' \
    '--initramfs "$HUSK_FILES/initramfs.cpio" --details' "$(quote "${opts[@]+"${opts[@]}"}")" \
    "--$(quote "${cmd[@]}")"
