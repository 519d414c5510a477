#!/bin/sh
# Builds the installer image for deploy/daemonset.yaml from the release build:
#   kernel-config/build.sh && scripts/build-guest.sh --release && cargo build --release
#   deploy/build-image.sh registry.example/husk-installer:0.1.0
# Stages the five files into a fresh context directory (so the build context is 50 MB, not
# the whole tree) and runs `$CONTAINER_TOOL build` (default docker; podman works too).
# With --stage-only DIR it only stages into DIR.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = --stage-only ]; then
    ctx=${2:?usage: build-image.sh --stage-only DIR}
    image=
else
    image=${1:?usage: deploy/build-image.sh IMAGE | --stage-only DIR}
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
fi
release=$repo/target/release
guest=${HUSK_BUILD_DIR:-$repo/build}/guest
for f in "$release/husk" "$release/husk-vmm" "$release/containerd-shim-husk-v2" \
    "$guest/vmlinux" "$guest/initramfs.cpio"; do
    [ -f "$f" ] || { echo "build-image.sh: $f is missing (see the build line at the top)" >&2; exit 1; }
done
install -D -m 755 "$release/husk" "$ctx/bin/husk"
install -D -m 755 "$release/husk-vmm" "$ctx/bin/husk-vmm"
install -D -m 755 "$release/containerd-shim-husk-v2" "$ctx/bin/containerd-shim-husk-v2"
install -D -m 644 "$guest/vmlinux" "$ctx/share/vmlinux"
install -D -m 644 "$guest/initramfs.cpio" "$ctx/share/initramfs"
cp "$repo/deploy/Dockerfile" "$ctx/Dockerfile"
if [ -n "$image" ]; then
    "${CONTAINER_TOOL:-docker}" build -t "$image" "$ctx"
fi
