//! `husk-ctr-bench`: containerd with runc and with husk, side by side in one test-host run.
//!
//! Starts a private containerd (the `husk_tests::containerd` harness) on the KVM host
//! (native, or the emulated test host), imports the busybox image, and measures:
//! - the wall time of `ctr run --rm IMG true`, N times each, alternating runc and husk;
//! - the memory of an idle container: RSS and PSS (`/proc/<pid>/smaps_rollup`) of the shim
//!   and, for husk, `husk-vmm`; for runc, the shim and the container's process.
//!
//! It prints numbers only (no pass/fail). Usage, with release builds:
//! husk-ctr-bench --shim PATH --vmm PATH --kernel PATH --initramfs PATH --image-tool PATH [--runs N]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_tests::containerd::image::DEFAULT_IMAGE;
use husk_tests::containerd::Containerd;
use husk_tests::testhost::{self, Job};

fn script(ctrd: &Containerd, runs: u32) -> String {
    format!(
        r#"set -u
{functions}
IMG={DEFAULT_IMAGE}
F="$HUSK_FILES"
chmod +x "$F"/*
mkdir -p /opt/husk-test/bin && cp "$F/containerd-shim-husk-v2" /opt/husk-test/bin/
export PATH="/opt/husk-test/bin:$PATH"
printf 'vmm = "%s"\nkernel = "%s"\ninitramfs = "%s"\nmemory_mib = 128\nlog_level = "warn"\n' \
    "$F/husk-vmm" "$F/vmlinux" "$F/initramfs.cpio" > /opt/husk-test/config.toml
export HUSK_CONFIG=/opt/husk-test/config.toml
husk_containerd_start >/dev/null || exit 1
"$F/husk-image" "$HUSK_CTRD_BASE/busybox.tar" >/dev/null || exit 1
husk_ctr image import --index-name "$IMG" "$HUSK_CTRD_BASE/busybox.tar" >/dev/null || exit 1
# One warm-up each (page cache, first-use costs), not counted.
husk_ctr run --rm "$IMG" w1 true; husk_ctr run --rm --runtime io.containerd.husk.v2 "$IMG" w2 true
i=1
while [ $i -le {runs} ]; do
    t=$(husk_ms); husk_ctr run --rm "$IMG" r$i true || exit 1; echo "RUN runc $(( $(husk_ms) - t ))"
    t=$(husk_ms); husk_ctr run --rm --runtime io.containerd.husk.v2 "$IMG" h$i true || exit 1
    echo "RUN husk $(( $(husk_ms) - t ))"
    i=$((i + 1))
done
mem() {{ awk -v who="$1" '/^Rss:/ {{r=$2}} /^Pss:/ {{p=$2}} END {{print "MEM", who, r, p}}' /proc/$2/smaps_rollup; }}
husk_ctr run -d "$IMG" idle-runc sleep 1000 || exit 1
husk_ctr run -d --runtime io.containerd.husk.v2 "$IMG" idle-husk sleep 1000 || exit 1
sleep 3
mem runc-shim "$(pgrep -f 'containerd-shim-runc-v2.*-id idle-runc' | head -n 1)"
mem runc-container "$(pgrep -x sleep | head -n 1)"
mem husk-shim "$(pgrep -f 'containerd-shim-husk-v2.*-id idle-husk' | head -n 1)"
mem husk-vmm "$(pgrep -f 'husk-vmm.*idle-husk' | head -n 1)"
for c in idle-runc idle-husk; do husk_ctr task kill -s KILL $c; sleep 1; husk_ctr task delete $c; husk_ctr container delete $c; done
husk_containerd_stop >/dev/null
"#,
        functions = ctrd.shell_functions(),
    )
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut shim, mut vmm, mut kernel, mut initramfs, mut image) = (None, None, None, None, None);
    let mut runs = 10u32;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--shim" => shim = Some(PathBuf::from(value()?)),
            "--vmm" => vmm = Some(PathBuf::from(value()?)),
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initramfs" => initramfs = Some(PathBuf::from(value()?)),
            "--image-tool" => image = Some(PathBuf::from(value()?)),
            "--runs" => runs = value()?.parse().context("--runs")?,
            other => bail!("unknown argument {other}"),
        }
    }
    let need = |p: Option<PathBuf>, name: &str| p.with_context(|| format!("--{name} is required"));
    let ctrd = Containerd::new("/tmp/husk-containerd")?.bin_dir_from_env()?;
    let job = Job::new(script(&ctrd, runs.max(1)))
        .file(need(shim, "shim")?, "containerd-shim-husk-v2")
        .file(need(vmm, "vmm")?, "husk-vmm")
        .file(need(kernel, "kernel")?, "vmlinux")
        .file(need(initramfs, "initramfs")?, "initramfs.cpio")
        .file(need(image, "image-tool")?, "husk-image")
        .host_root(true)
        // Two emulated CPUs, as in the numbers published so far.
        .cpus(2)
        .timeout(Duration::from_secs(1800));
    let out = testhost::run(&job)?;
    if !out.success() {
        bail!("benchmark job failed:\n{}", out.stdout);
    }
    let mut times: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for l in out.stdout.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["RUN", who, ms] => times.entry(who).or_default().push(ms.parse()?),
            ["MEM", who, rss, pss] => println!("memory {who}: RSS {rss} KiB, PSS {pss} KiB"),
            _ => {}
        }
    }
    println!(
        "host: {}; containerd from {}",
        out.kind.describe(),
        ctrd.bin().unwrap_or("PATH")
    );
    for (who, v) in &mut times {
        let (min, max) = (*v.iter().min().unwrap_or(&0), *v.iter().max().unwrap_or(&0));
        println!(
            "ctr run --rm true, {who}: median {} ms, min {min} ms, max {max} ms (n={})",
            median(v),
            v.len()
        );
    }
    Ok(())
}
