#!/usr/bin/env bash
# Runs all of husk's checks: rustfmt, clippy (warnings are errors), the unit tests and the
# VM tests. VM tests need a KVM host; this script requires one (HUSK_REQUIRE_KVM=1), so a
# machine without one fails loudly instead of skipping.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$repo"
cargo fmt --all -- --check
build_all
cargo clippy --workspace --all-targets -- -D warnings
export HUSK_REQUIRE_KVM="${HUSK_REQUIRE_KVM:-1}"
cargo test --workspace --no-fail-fast
