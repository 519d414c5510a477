#!/usr/bin/env bash
# Runs all of husk's checks: rustfmt, clippy (warnings are errors), the unit tests and the
# VM tests. VM tests need a KVM host; this script requires one (HUSK_REQUIRE_KVM=1), so a
# machine without one fails loudly instead of skipping.
#
# Then the containerd suite (ctr_husk) runs again against containerd 1.7 (trixie) and 2.x
# (sid), or the suites HUSK_CONTAINERD_SUITES names ("" for none). CI's whole run must end
# within 90 min: when HUSK_CI_STARTED (set by .ci/run, seconds since the epoch) is more
# than 65 min ago, a pass is not started and the script says so.
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
for suite in ${HUSK_CONTAINERD_SUITES-trixie sid}; do
    if [ -n "${HUSK_CI_STARTED:-}" ] && [ $(( $(date +%s) - HUSK_CI_STARTED )) -gt 3900 ]; then
        echo "NOT RUN: ctr_husk with containerd from $suite: CI has run for more than 65 min" >&2
        continue
    fi
    if ! bin=$(tests/containerd/fetch.sh "$suite"); then
        echo "SKIPPED: ctr_husk with containerd from $suite: fetching it failed" >&2
        continue
    fi
    echo "test.sh: ctr_husk with containerd from $suite ($bin)" >&2
    HUSK_CONTAINERD_BIN="$bin" HUSK_CTR_CYCLES=5 cargo test -p husk-tests --test ctr_husk
done
