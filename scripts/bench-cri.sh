#!/usr/bin/env bash
# CRI benchmark: Pod start latency (RunPodSandbox → CreateContainer → StartContainer) and
# host PSS per idle Pod, husk against runc (and crun and gVisor's runsc with
# --handlers runc,crun,runsc,husk), in one run on the KVM host (the emulated test host
# here; pass --native to run on a machine with native KVM, which gets a CNI bridge).
# --workload-rounds N adds CPU, system call, I/O and TCP numbers from husk-probe;
# --isolation adds the table of what each runtime lets a container see and do.
# Release builds. Extra arguments go to husk-cri-bench (e.g. --rounds 4 --pods 5, the
# defaults: 20 Pods per handler). HUSK_CONTAINERD_BIN selects another containerd (see
# tests/containerd/fetch.sh).
set -euo pipefail
source "$(dirname "$0")/common.sh"
build_all
"$repo/scripts/build-guest.sh" --release >&2
cargo build --release -p husk-vmm -p husk-shim -p husk-tests --bins >&2
exec "$repo/target/release/husk-cri-bench" \
    --shim "$repo/target/release/containerd-shim-husk-v2" \
    --vmm "$repo/target/release/husk-vmm" \
    --kernel "$build_dir/guest/vmlinux" \
    --initramfs "$build_dir/guest/initramfs.cpio" \
    --check "$repo/target/release/husk-cri-check" \
    --probe "$build_dir/guest/husk-probe" "$@"
