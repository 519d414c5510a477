#!/bin/sh
# Fetches containerd from another Debian suite into a cache directory,
# without installing them and without touching the system's apt configuration:
#   trixie -> containerd 1.7, sid -> containerd 2.x.
# Prints the directory to pass as HUSK_CONTAINERD_BIN. runc stays the system's (bookworm's
# 1.1): the newer suites' runc needs a newer glibc, their containerd (Go, libc only) does
# not. Idempotent; see docs/containerd-tests.md.
#
#   tests/containerd/fetch.sh trixie      # /var/cache/husk/containerd/trixie/<version>/usr/bin
set -eu
suite=${1:?usage: fetch.sh SUITE (trixie, sid)}
cache=${HUSK_CACHE_DIR:-/var/cache/husk}/containerd/$suite
apt=$cache/apt
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
rm -f ./*.deb
aptp download containerd >&2
version=$(dpkg-deb -f containerd_*.deb Version)
root=$cache/$version
if [ ! -e "$root/.complete" ]; then
    rm -rf "$root"
    mkdir -p "$root"
    dpkg-deb -x containerd_*.deb "$root"
    "$root/usr/bin/containerd" --version >&2
    touch "$root/.complete"
fi
echo "$root/usr/bin"
