#!/usr/bin/env bash
# Runs all of husk's checks: rustfmt, clippy (warnings are errors), the unit tests and the
# VM tests. VM tests need a KVM host; this script requires one (HUSK_REQUIRE_KVM=1), so a
# machine without one fails loudly instead of skipping.
#
# HUSK_CONTAINERD_SUITES="trixie sid" runs the containerd suite (ctr_husk) again against
# containerd 1.7 (trixie) and 2.x (sid). CI leaves it out: on the emulated test host each
# pass costs about 10 min, and CI's whole run must end within 90 min (docs/testing.md).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$repo"
cargo fmt --all -- --check
build_all
cargo clippy --workspace --all-targets -- -D warnings
export HUSK_REQUIRE_KVM="${HUSK_REQUIRE_KVM:-1}"
cargo test --workspace --no-fail-fast

# containerd from other Debian suites, fetched into the cache without installing them
# (tests/containerd/fetch.sh), with fewer leak cycles.
suites="${HUSK_CONTAINERD_SUITES:-}"
if [ -z "$suites" ]; then
    echo "test.sh: NOT RUN: ctr_husk against containerd 1.7 and 2.x (set HUSK_CONTAINERD_SUITES=\"trixie sid\")" >&2
fi
for suite in $suites; do
    if ! bin=$(tests/containerd/fetch.sh "$suite"); then
        echo "SKIPPED: ctr_husk with containerd from $suite: fetching it failed" >&2
        continue
    fi
    echo "test.sh: ctr_husk with containerd from $suite ($bin)" >&2
    HUSK_CONTAINERD_BIN="$bin" HUSK_CTR_CYCLES=5 cargo test -p husk-tests --test ctr_husk
done
