# Shared by scripts/*.sh: build the pieces a VM needs. Source it; do not run it.
# shellcheck shell=bash

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${HUSK_BUILD_DIR:-$repo/build}"

# Builds (or takes from the cache) the guest kernel, the static agent and initramfs, the
# host binaries, and the emulated test host's kernel. HUSK_SKIP_BUILD=1 skips this (reuse
# what is built).
build_all() {
    if [ "${HUSK_SKIP_BUILD:-0}" = 1 ]; then return; fi
    "$repo/kernel-config/build.sh" >&2
    "$repo/scripts/build-guest.sh" >&2
    (cd "$repo" && cargo build --workspace --bins >&2)
    "$repo/tests/testhost/setup.sh" >/dev/null
}
