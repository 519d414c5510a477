#!/usr/bin/env bash
# virtio-fs benchmark: sequential write and read throughput (dd, 1 MiB blocks; the write
# ends with fsync, the read starts with the page cache dropped) and small-file create, stat
# and unlink rates (husk-fs-check meta, caches dropped before each phase), through
# husk-vmm's virtio-fs device in a guest and, in the same run, directly on the same host
# directory. On the KVM test host (native or emulated), release builds.
#
# Usage: scripts/bench-fs.sh [MIB [FILES [ROUNDS]]]     (default 256 2000 3)
#
# The guest has one vCPU: on the emulated test host, two-vCPU guests were seen to hang in this
# benchmark (one vCPU spinning in the guest, the other halted, the file system idle), which
# looks like a lost IPI in nested KVM under TCG. Each side runs ROUNDS rounds; the table shows
# the median. Times are the test host's wall
# clock: the guest's progress lines are timestamped on arrival (`husk-fs-check stamp`), as
# the guest's own clock under-reports under nested virtualisation. Its own figures are
# printed too (OWN lines).
set -euo pipefail
source "$(dirname "$0")/common.sh"
mib="${1:-256}"
files="${2:-2000}"
rounds="${3:-3}"

build_all
"$repo/scripts/build-guest.sh" --release >&2
cargo build --release -p husk-vmm -p husk-tests --bins >&2
cargo build --release -p husk-shim --bin husk >&2
rel="$repo/target/release"

# husk-fs-check runs in the guest from the share, through the loader and libraries it
# needs, copied next to it.
loader="$(ldd "$rel/husk-fs-check" | awk '/ld-linux/ && $1 ~ /^\// {print $1}')"
libs="$(ldd "$rel/husk-fs-check" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | tr '\n' ' ')"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One side's rounds: $M is the directory to work in, $X runs husk-fs-check.
cat > "$work/bench.sh" <<'EOF'
mkdir -p "$M"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
r=1
while [ $r -le $ROUNDS ]; do
    echo "ROUND $r"
    drop
    echo "MARK write start"
    dd if=/dev/zero of="$M/seq" bs=1M count=$MIB conv=fsync 2>/dev/null
    echo "MARK write end"
    drop
    echo "MARK read start"
    dd if="$M/seq" of=/dev/null bs=1M 2>/dev/null
    echo "MARK read end"
    rm -f "$M/seq"
    $X meta "$M/meta" $FILES --drop-caches
    rm -rf "$M/meta"
    r=$((r + 1))
done
echo BENCH-DONE
EOF

job="$(cat <<EOF
F="\$HUSK_FILES"; B=/tmp/husk-fs-bench; S=\$B/share
rm -rf \$B; mkdir -p \$S/.husk/lib
cp "\$F/husk-fs-check" "\$F/bench.sh" \$S/.husk/
cp "$loader" \$S/.husk/lib/ld.so
for lib in $libs; do cp "\$lib" \$S/.husk/lib/; done
echo "BENCH-CONFIG mib=$mib files=$files rounds=$rounds kind=\$HUSK_TESTHOST cpus=\$(nproc)"
M=\$S/host X="\$F/husk-fs-check" MIB=$mib FILES=$files ROUNDS=$rounds sh "\$F/bench.sh" 2>&1 \\
    | "\$F/husk-fs-check" stamp host
mkdir -p \$B/run; mkfifo \$B/out
"\$F/husk-fs-check" stamp guest < \$B/out > \$B/guest.log &
"\$F/husk" run-vm --vmm "\$F/husk-vmm" --kernel "\$F/vmlinux" --initramfs "\$F/initramfs.cpio" \\
    --vcpus 1 --memory 1024 --run-dir \$B/run --share \$S -- sh -c \\
    "mkdir -p /mnt && mount -t virtiofs husk /mnt && M=/mnt/guest \\
     X='/mnt/.husk/lib/ld.so --library-path /mnt/.husk/lib /mnt/.husk/husk-fs-check' \\
     MIB=$mib FILES=$files ROUNDS=$rounds sh /mnt/.husk/bench.sh" > \$B/out 2>&1 &
H=\$!
# A guest that stops making progress for 10 minutes is reported with its console.
last=0; idle=0
while ! grep -q BENCH-DONE \$B/guest.log && [ \$idle -lt 600 ]; do
    sleep 5; n=\$(wc -l < \$B/guest.log)
    if [ "\$n" = "\$last" ]; then idle=\$((idle + 5)); else idle=0; last=\$n; fi
done
cat \$B/guest.log
if ! grep -q BENCH-DONE \$B/guest.log; then
    echo "bench-fs: the guest made no progress for 10 minutes; console and VMM log:"
    tail -50 \$B/run/*/console.log \$B/run/*/vmm.log
    kill \$H; sleep 5; kill -9 \$H 2>/dev/null
fi
wait
rm -rf \$B
EOF
)"

"$repo/target/debug/husk-testhost" --timeout 3600 --memory 3072 \
    --file "$rel/husk-vmm:husk-vmm" \
    --file "$rel/husk:husk" \
    --file "$rel/husk-fs-check:husk-fs-check" \
    --file "$work/bench.sh:bench.sh" \
    --file "$build_dir/guest/vmlinux:vmlinux" \
    --file "$build_dir/guest/initramfs.cpio:initramfs.cpio" \
    -- "$job" | tee "$work/out.log"

for side in host guest; do
    if ! grep -q "^$side T=[0-9]* BENCH-DONE" "$work/out.log"; then
        echo "bench-fs: the $side side did not finish" >&2
        exit 1
    fi
done

# The median of each phase per side, from the arrival times of the MARK lines.
awk -v mib="$mib" -v files="$files" '
function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
$1 ~ /^(host|guest)$/ && $3 == "MARK" {
    t = substr($2, 3) + 0
    if ($5 == "start") start[$1, $4] = t
    else ms[$1, $4] = ms[$1, $4] " " (t - start[$1, $4])
}
function rate(side, op, amount,    m) {
    m = median(ms[side, op]); if (m <= 0) m = 1
    return amount * 1000 / m
}
END {
    split("write read create stat unlink", ops, " ")
    label["write"] = "sequential write, " mib " MiB (MiB/s)"
    label["read"] = "sequential read, " mib " MiB (MiB/s)"
    label["create"] = "create " files " files (files/s)"
    label["stat"] = "stat " files " files (files/s)"
    label["unlink"] = "unlink " files " files (files/s)"
    printf "\n| operation | host directory | virtio-fs (guest) | virtio-fs / host |\n|---|---|---|---|\n"
    for (k = 1; k <= 5; k++) {
        op = ops[k]; amount = (op == "write" || op == "read") ? mib : files
        h = rate("host", op, amount); g = rate("guest", op, amount)
        printf "| %s | %.0f | %.0f | %.2f |\n", label[op], h, g, g / h
    }
}' "$work/out.log"
