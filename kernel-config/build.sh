#!/usr/bin/env bash
# Build the husk guest kernel (an uncompressed ELF vmlinux) from Debian's
# linux-source tarball and the fragments in kernel-config/fragments/.
#
#   kernel-config/build.sh               build (or reuse the cache), publish
#   kernel-config/build.sh --check-only  tinyconfig + merge + verify, no build
#   kernel-config/build.sh --print-key   print the cache key and exit
#
# Environment:
#   HUSK_KERNEL_SOURCE  source tarball   (default /usr/src/linux-source-6.1.tar.xz)
#   HUSK_CACHE_DIR      cache root       (default /var/cache/husk)
#   HUSK_BUILD_DIR      output root      (default <repo>/build)
#   HUSK_KERNEL_JOBS    make -j          (default nproc)
#
# Outputs, in $HUSK_BUILD_DIR/guest/: vmlinux, config, kernel-release,
# cache-dir. Stdout gets exactly one line: the absolute path of that vmlinux.
# Everything else goes to stderr. See kernel-config/README.md.
set -euo pipefail

readonly ARCH=x86_64
SCRIPT_PATH=$(readlink -f -- "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname -- "$SCRIPT_PATH")
REPO_DIR=$(dirname -- "$SCRIPT_DIR")
FRAGMENT_DIR=$SCRIPT_DIR/fragments
SOURCE=${HUSK_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
CACHE_ROOT=${HUSK_CACHE_DIR:-/var/cache/husk}/kernel
OUT_DIR=${HUSK_BUILD_DIR:-$REPO_DIR/build}/guest
JOBS=${HUSK_KERNEL_JOBS:-$(nproc)}

# Variables the kernel's make honours from the environment; a stray one in a
# developer's shell or CI would change the result without changing the key.
unset KCONFIG_CONFIG KBUILD_OUTPUT O LOCALVERSION CROSS_COMPILE \
    KCFLAGS KCPPFLAGS KAFLAGS KRUSTFLAGS KBUILD_EXTMOD CONFIG_ || true

log() { printf 'husk-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,18s/^# \{0,1\}//p' "$SCRIPT_PATH" >&2
}

MODE=build
case "${1:-}" in
    "") ;;
    --check-only) MODE=check ;;
    --print-key) MODE=key ;;
    -h | --help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
esac
[[ $# -le 1 ]] || { usage; die "at most one argument"; }

# All fragments, sorted by name (C locale) so the merge order is stable.
FRAGMENTS=()
load_fragments() {
    local f
    while IFS= read -r f; do
        FRAGMENTS+=("$f")
    done < <(LC_ALL=C find "$FRAGMENT_DIR" -maxdepth 1 -type f -name '*.config' | LC_ALL=C sort)
    [[ ${#FRAGMENTS[@]} -gt 0 ]] || die "no fragments in $FRAGMENT_DIR"
}

# Conventions the fragments must follow: every option line has a comment on
# the line directly above it, comments never name a CONFIG_ symbol (the
# kernel's merge_config.sh greps for them), and no option is requested twice.
lint_fragments() {
    LC_ALL=C awk '
        function fail(msg) { print FILENAME ":" FNR ": " msg > "/dev/stderr"; bad = 1 }
        FNR == 1 { prev = "" }
        /^CONFIG_[A-Za-z0-9_]+=/ || /^# CONFIG_[A-Za-z0-9_]+ is not set$/ {
            name = $0
            sub(/^# /, "", name); sub(/[= ].*/, "", name)
            if (prev !~ /^#/ || prev ~ /^# CONFIG_/) fail(name " has no comment directly above it")
            if (name in seen) fail(name " already requested in " seen[name])
            seen[name] = FILENAME
            prev = $0; next
        }
        /^#/ { if ($0 ~ /CONFIG_/) fail("comment names a CONFIG_ symbol; drop the prefix") }
        /^[ \t]*$/ || /^#/ { prev = $0; next }
        { fail("not an option, a comment or a blank line: " $0) }
        END { exit bad }
    ' "${FRAGMENTS[@]}" || die "fragment lint failed (see above)"
}

# The cache key covers everything that decides the output: the source
# tarball's bytes, every fragment, this script, and the toolchain.
cache_manifest() {
    local f
    echo "husk guest kernel cache, format 1"
    echo "source $(basename -- "$SOURCE") $(sha256sum <"$SOURCE" | cut -d' ' -f1)"
    for f in "${FRAGMENTS[@]}"; do
        echo "fragment $(basename -- "$f") $(sha256sum <"$f" | cut -d' ' -f1)"
    done
    echo "script $(sha256sum <"$SCRIPT_PATH" | cut -d' ' -f1)"
    echo "cc $(gcc --version | head -n1)"
    echo "ld $(ld --version | head -n1)"
}

check_tools() {
    local t missing=()
    for t in make gcc ld flex bison bc tar xz sha256sum awk; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    [[ ${#missing[@]} -eq 0 ]] || die "missing tools: ${missing[*]} (apt-get install build-essential bc flex bison libelf-dev libssl-dev dwarves cpio xz-utils)"
}

# Kernel make, non-interactive, reproducible identity, output to the log.
kmake() {
    if ! make -C "$SRC" ARCH="$ARCH" \
        KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk \
        KBUILD_BUILD_TIMESTAMP="$BUILD_TIMESTAMP" \
        "$@" </dev/null >>"$LOG" 2>&1; then
        tail -n 40 -- "$LOG" >&2 || true
        die "make $* failed"
    fi
}

# Every CONFIG_X=v and "# CONFIG_X is not set" line requested by a fragment
# must appear, byte for byte, in the final .config.
verify_config() {
    local config=$1
    LC_ALL=C awk '
        FILENAME != CONFIG {
            if ($0 ~ /^CONFIG_[A-Za-z0-9_]+=/ || $0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) {
                name = $0; sub(/^# /, "", name); sub(/[= ].*/, "", name)
                want[name] = $0; from[name] = FILENAME; order[++n] = name
            }
            next
        }
        /^CONFIG_[A-Za-z0-9_]+=/ || /^# CONFIG_[A-Za-z0-9_]+ is not set$/ {
            name = $0; sub(/^# /, "", name); sub(/[= ].*/, "", name)
            have[name] = $0
        }
        END {
            for (i = 1; i <= n; i++) {
                name = order[i]
                if ((name in have) && have[name] == want[name]) continue
                bad++
                got = (name in have) ? have[name] : "(absent: its dependencies are not met)"
                f = from[name]; sub(/.*\//, "", f)
                printf "  %-22s wanted: %s\n  %-22s got:    %s\n", f, want[name], "", got > "/dev/stderr"
            }
            printf "%d requested options checked, %d mismatched\n", n, bad > "/dev/stderr"
            exit (bad > 0)
        }
    ' CONFIG="$config" "${FRAGMENTS[@]}" "$config"
}

# tinyconfig, merge the fragments, olddefconfig, verify. Leaves $SRC/.config.
configure() {
    log "extracting $(basename -- "$SOURCE") into $WORK"
    mkdir -p "$SRC"
    tar -xf "$SOURCE" -C "$SRC" --strip-components=1
    log "tinyconfig + ${#FRAGMENTS[@]} fragments + olddefconfig"
    kmake tinyconfig
    (cd "$SRC" && ./scripts/kconfig/merge_config.sh -m .config "${FRAGMENTS[@]}") >>"$LOG" 2>&1
    kmake olddefconfig
    if ! verify_config "$SRC/.config"; then
        die "requested options did not survive into the final .config (listed above)"
    fi
}

publish() {
    local entry=$1 f
    mkdir -p "$OUT_DIR"
    for f in vmlinux config kernel-release; do
        cp -f -- "$entry/$f" "$OUT_DIR/.$f.tmp"
        mv -f -- "$OUT_DIR/.$f.tmp" "$OUT_DIR/$f"
    done
    printf '%s\n' "$entry" >"$OUT_DIR/cache-dir"
    log "kernel release $(cat "$entry/kernel-release"), vmlinux $(stat -c %s "$entry/vmlinux") bytes"
    log "cache: $entry"
    log "output: $OUT_DIR/{vmlinux,config,kernel-release}"
    printf '%s\n' "$OUT_DIR/vmlinux"
}

# Sanity checks before anything goes into the cache: vmlinux is a 64-bit
# x86-64 ELF executable and the release is one line ending in our suffix.
check_outputs() {
    local dir=$1 magic release
    magic=$(od -An -tx1 -N20 -- "$dir/vmlinux" | tr -d ' \n')
    # \x7fELF, class 2 (64-bit), little endian, ..., e_type 2 (EXEC), e_machine 0x3e (x86-64)
    [[ $magic == 7f454c4602* && ${magic:32:4} == 0200 && ${magic:36:4} == 3e00 ]] ||
        die "vmlinux is not a 64-bit x86-64 ELF executable (header $magic)"
    release=$(cat -- "$dir/kernel-release")
    [[ $(wc -l <"$dir/kernel-release") -eq 1 && $release == *-husk ]] ||
        die "unexpected kernel release: '$release'"
}

is_complete() {
    local entry=$1
    [[ -f $entry/complete && -s $entry/vmlinux && -s $entry/config && -s $entry/kernel-release ]]
}

on_exit() {
    local rc=$?
    if [[ $rc -ne 0 && -n ${LOG:-} && -f $LOG ]]; then
        log "failed (exit $rc); log kept at $LOG"
    fi
    [[ -n ${WORK:-} && -d $WORK ]] && rm -rf -- "$WORK"
    [[ -n ${STAGE:-} && -d $STAGE ]] && rm -rf -- "$STAGE"
    return 0
}

main() {
    local started=$SECONDS
    [[ -r $SOURCE ]] || die "kernel source tarball not readable: $SOURCE (set HUSK_KERNEL_SOURCE or apt-get install linux-source-6.1)"
    check_tools
    load_fragments
    lint_fragments
    local manifest key
    manifest=$(cache_manifest)
    key=$(sha256sum <<<"$manifest" | cut -d' ' -f1)
    if [[ $MODE == key ]]; then
        printf '%s\n' "$key"
        return 0
    fi

    mkdir -p "$CACHE_ROOT"
    local entry=$CACHE_ROOT/$key
    BUILD_TIMESTAMP=$(date -u -d "@$(stat -c %Y "$SOURCE")" '+%Y-%m-%d %H:%M:%S UTC')
    trap on_exit EXIT

    if [[ $MODE == check ]]; then
        WORK=$CACHE_ROOT/check-$key.$$
        SRC=$WORK/src
        LOG=$CACHE_ROOT/check-$key.$$.log
        mkdir -p "$WORK"
        : >"$LOG"
        configure
        mkdir -p "$OUT_DIR"
        cp -f -- "$SRC/.config" "$OUT_DIR/config-check"
        rm -f -- "$LOG"
        log "check passed in $((SECONDS - started))s; resulting config: $OUT_DIR/config-check"
        return 0
    fi

    # One builder per key on this machine; the others wait, then reuse.
    exec 9>"$CACHE_ROOT/.lock-$key"
    if ! flock -n 9; then
        log "another build of $key is running; waiting for it"
        flock 9
    fi
    if is_complete "$entry"; then
        log "cache hit ($((SECONDS - started))s)"
        publish "$entry"
        return 0
    fi
    [[ -e $entry ]] && { log "removing incomplete cache entry $entry"; rm -rf -- "$entry"; }

    WORK=$CACHE_ROOT/build-$key
    SRC=$WORK/src
    LOG=$CACHE_ROOT/build-$key.log
    rm -rf -- "$WORK"
    mkdir -p "$WORK"
    : >"$LOG"
    log "cache miss; building $key (log: $LOG)"
    configure
    local t_config=$SECONDS
    log "configured in $((t_config - started))s; compiling vmlinux with -j$JOBS"
    kmake -j"$JOBS" vmlinux
    local t_build=$SECONDS
    log "compiled in $((t_build - t_config))s"

    STAGE=$CACHE_ROOT/.stage-$key.$$
    mkdir -p "$STAGE"
    cp -- "$SRC/vmlinux" "$STAGE/vmlinux"
    cp -- "$SRC/.config" "$STAGE/config"
    make -s --no-print-directory -C "$SRC" ARCH="$ARCH" kernelrelease </dev/null >"$STAGE/kernel-release"
    check_outputs "$STAGE"
    printf '%s\n' "$manifest" >"$STAGE/inputs"
    printf 'configure %ss\ncompile %ss\n' "$((t_config - started))" \
        "$((t_build - t_config))" >"$STAGE/timings"
    mv -- "$LOG" "$STAGE/build.log"
    LOG=$STAGE/build.log
    touch "$STAGE/complete"
    mv -T -- "$STAGE" "$entry"
    STAGE=
    LOG=$entry/build.log
    rm -rf -- "$WORK"
    log "built in $((SECONDS - started))s total"
    publish "$entry"
}

main
