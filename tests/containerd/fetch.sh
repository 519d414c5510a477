#!/bin/sh
# Fetches a package from another Debian suite into a cache directory, without installing
# it and without touching the system's apt configuration:
#   fetch.sh trixie         -> containerd 1.7
#   fetch.sh sid            -> containerd 2.x
#   fetch.sh sid runsc      -> gVisor's runsc (bookworm's 20221219 cannot start a CRI
#                              container; sid's is a static Go binary that runs here)
# Prints the package's usr/bin directory: HUSK_CONTAINERD_BIN for containerd,
# HUSK_RUNSC_BIN for runsc (with tests/containerd/runsc-for-runc-shim copied beside it). runc stays the system's (bookworm's 1.1): the newer suites'
# runc needs a newer glibc, their containerd and runsc (Go) do not. Idempotent; see
# docs/containerd-tests.md.
#
#   tests/containerd/fetch.sh trixie      # /var/cache/husk/containerd/trixie/<version>/usr/bin
#   tests/containerd/fetch.sh sid runsc   # /var/cache/husk/runsc/sid/<version>/usr/bin
set -eu
here=$(cd "$(dirname "$0")" && pwd)
suite=${1:?usage: fetch.sh SUITE (trixie, sid) [PACKAGE (containerd, runsc)]}
package=${2:-containerd}
case $package in
    containerd) probe="containerd --version" ;;
    runsc) probe="runsc --version" ;;
    *) echo "fetch.sh: unknown package $package (containerd, runsc)" >&2; exit 2 ;;
esac
cache=${HUSK_CACHE_DIR:-/var/cache/husk}/$package/$suite
# One private apt per suite, shared by the packages fetched from it.
apt=${HUSK_CACHE_DIR:-/var/cache/husk}/containerd/$suite/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$apt/empty.d"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
    >"$apt/sources.list"
# A private apt: only this suite, its own lists and cache, no pinning from the system.
aptp() {
    apt-get -q -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts="$apt/empty.d" \
        -o Dir::Etc::Preferences="$apt/empty.d/none" -o Dir::Etc::PreferencesParts="$apt/empty.d" \
        -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" \
        -o APT::Sandbox::User=root "$@"
}
aptp update >&2
cd "$apt/debs"
rm -f ./"${package}"_*.deb
aptp download "$package" >&2
version=$(dpkg-deb -f "${package}"_*.deb Version)
root=$cache/$version
if [ ! -e "$root/.complete" ]; then
    rm -rf "$root"
    mkdir -p "$root"
    dpkg-deb -x "${package}"_*.deb "$root"
    "$root/usr/bin/"$probe >&2
    touch "$root/.complete"
fi
if [ "$package" = runsc ]; then
    # The adapter that lets runc's shim drive runsc, refreshed from the tree every time.
    cp "$here/runsc-for-runc-shim" "$root/usr/bin/runsc-for-runc-shim.new"
    mv "$root/usr/bin/runsc-for-runc-shim.new" "$root/usr/bin/runsc-for-runc-shim"
fi
echo "$root/usr/bin"
