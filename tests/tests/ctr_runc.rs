//! The containerd harness (`husk_tests::containerd`) proved with runc, the
//! runtime containerd's own shim uses, before the husk shim exists: one test-host
//! run starts a private containerd, imports the busybox image that `husk-image`
//! wrote on this machine, and runs containers with `ctr run`.
//!
//! The binaries are the host's (`host_root` mode), or those in
//! `$HUSK_CONTAINERD_BIN`. See `docs/containerd-tests.md`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{line_value, step};
use husk_tests::containerd::image::DEFAULT_IMAGE;
use husk_tests::containerd::{Containerd, Cri};
use husk_tests::testhost::{self, HostKind, Job, JobOutput};

/// Where the private containerd lives in L2: a tmpfs (its overlayfs snapshots
/// cannot sit on L2's overlay root).
const L2_BASE: &str = "/tmp/husk-containerd";
/// How many times `ctr run --rm IMG rN true` is timed.
const TRUE_RUNS: u32 = 3;

/// The job's script: each step is a section `BEGIN <name>` ... `END <name> exit=<code>`.
/// `ctrd` runs the containers; `cri` is a second containerd, started after the first
/// is gone, that only shows that the CRI configuration loads.
/// `manifest` is the image's manifest digest, as `husk-image` printed it.
fn script(ctrd: &Containerd, cri: &Containerd, manifest: &str) -> String {
    format!(
        r#"set -u
{functions}
sec() {{ _name=$1; shift; echo "BEGIN $_name"; "$@"; _rc=$?; echo "END $_name exit=$_rc"; }}
IMG={DEFAULT_IMAGE}
versions() {{ containerd --version && ctr --version && runc --version | head -n 1; }}
sec versions versions
sec start husk_containerd_start
_t=$(husk_ms)
sec import husk_ctr image import --index-name "$IMG" "$HUSK_FILES/busybox.tar"
echo "import_ms $(( $(husk_ms) - _t ))"
sec images husk_ctr image ls -q
manifest() {{ husk_ctr content get "$1"; _rc=$?; echo; return $_rc; }}
sec manifest manifest {manifest}
sec hello husk_ctr run --rm "$IMG" t1 echo hello
sec exit3 husk_ctr run --rm "$IMG" t2 sh -c 'exit 3'
_i=1
while [ "$_i" -le {TRUE_RUNS} ]; do
    _t=$(husk_ms)
    sec "true$_i" husk_ctr run --rm "$IMG" "r$_i" true
    echo "true_ms $(( $(husk_ms) - _t ))"
    _i=$((_i + 1))
done
leftovers() {{ husk_ctr containers ls -q && husk_ctr tasks ls -q; }}
sec leftovers leftovers
_t=$(husk_ms)
sec stop husk_containerd_stop
echo "stop_ms $(( $(husk_ms) - _t ))"
sec log grep -E 'level=(warning|error|fatal)' "$HUSK_CTRD_BASE/containerd.log"
husk_containerd_purge
{cri_functions}
sec cri_start husk_containerd_start
sec cri_plugins husk_ctr plugins ls
sec cri_oom grep -o -i -E 'restrictoomscoreadj[^a-z]{{0,4}}true' "$HUSK_CTRD_BASE/containerd.log"
husk_containerd_purge
"#,
        functions = ctrd.shell_functions(),
        cri_functions = cri.shell_functions(),
    )
}

/// The shared run, or `None` after a loud SKIPPED line.
fn run(test: &str) -> Option<&'static JobOutput> {
    static RUN: common::Shared<JobOutput> = common::Shared::new();
    let host = testhost::kvm_host_or_skip(test)?;
    if matches!(host, HostKind::Native { .. }) && !is_root() {
        let why = "containerd needs root, and a native test host runs the job as this user";
        assert!(
            std::env::var_os("HUSK_REQUIRE_KVM").is_none(),
            "{test}: {why}"
        );
        eprintln!("SKIPPED: {test}: {why}");
        return None;
    }
    Some(common::once(&RUN, || {
        let base = match host {
            HostKind::Emulated(_) => L2_BASE.to_string(),
            HostKind::Native { .. } => std::env::temp_dir()
                .join(format!("husk-containerd-{}", std::process::id()))
                .to_string_lossy()
                .into_owned(),
        };
        let ctrd = Containerd::new(&base)
            .and_then(Containerd::bin_dir_from_env)
            .expect("containerd settings");
        let cri = Containerd::new(&format!("{base}-cri"))
            .and_then(Containerd::bin_dir_from_env)
            .and_then(|c| {
                c.cri(Cri {
                    sandbox_image: None,
                    runtimes: vec![("husk".into(), "io.containerd.husk.v2".into())],
                    ..Default::default()
                })
            })
            .expect("containerd settings with CRI");
        for tool in ["containerd", "ctr", "containerd-shim-runc-v2", "runc"] {
            assert!(
                find_tool(ctrd.bin(), tool),
                "{tool} is not installed: apt-get install containerd runc \
                 (or set HUSK_CONTAINERD_BIN, see docs/containerd-tests.md)"
            );
        }
        if let Some(bin) = ctrd.bin() {
            // L2's view of the host root covers /tmp and /run with its own tmpfs.
            assert!(
                !(host.is_emulated() && (bin.starts_with("/tmp/") || bin.starts_with("/run/"))),
                "HUSK_CONTAINERD_BIN={bin} is hidden in the test host: use a directory outside /tmp and /run"
            );
        }
        let dir = std::env::temp_dir().join(format!("husk-ctr-runc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        let (image, manifest) = build_image(&dir);
        let job = Job::new(script(&ctrd, &cri, &manifest))
            .file(&image, "busybox.tar")
            .host_root(true)
            .timeout(Duration::from_secs(240));
        let out = testhost::run(&job);
        let _ = std::fs::remove_dir_all(&dir);
        let out = out.expect("test host run");
        eprintln!(
            "ctr_runc: {} (containerd from {}); L2 boot {:?}, total {:?}",
            out.kind.describe(),
            ctrd.bin().unwrap_or("PATH"),
            out.host_boot,
            out.total
        );
        eprintln!("{}", out.stdout);
        assert!(out.success(), "job failed:\n{}", out.stdout);
        out
    }))
}

/// Writes the busybox image into `dir` with `husk-image`, here rather than in L2,
/// where the debug build's SHA-256 takes about 4 s; its path and manifest digest.
fn build_image(dir: &Path) -> (PathBuf, String) {
    let tar = dir.join("busybox.tar");
    let out = Command::new(common::bin_dir().join("husk-image"))
        .arg(&tar)
        .output()
        .expect("run husk-image");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "husk-image failed: {stderr}");
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "husk-image printed {digest:?}"
    );
    (tar, digest)
}

/// Whether `tool` is in `bin` or in `PATH` (plus the sbin directories, where
/// Debian puts runc), as the job will look for it.
fn find_tool(bin: Option<&str>, tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = bin
        .into_iter()
        .chain(path.split(':'))
        .chain(["/usr/sbin", "/sbin"])
        .any(|dir| Path::new(dir).join(tool).is_file());
    found
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn containerd_starts_and_imports_the_busybox_image() {
    let Some(out) = run("containerd_starts_and_imports_the_busybox_image") else {
        return;
    };
    let versions = step(out, "versions", 0);
    assert!(versions.contains("containerd "), "{versions}");
    assert!(versions.contains("runc version"), "{versions}");
    let start = step(out, "start", 0);
    assert!(
        start.contains("husk containerd: ") && start.contains(" ready in "),
        "{start}"
    );
    step(out, "import", 0);
    let images = step(out, "images", 0);
    assert_eq!(
        images.lines().map(str::trim).collect::<Vec<_>>(),
        [DEFAULT_IMAGE],
        "the import makes exactly one image"
    );
    // The manifest husk-image wrote is in the content store under its digest, and
    // names the uncompressed layer.
    let manifest: serde_json::Value =
        serde_json::from_str(step(out, "manifest", 0).trim()).expect("manifest JSON");
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
}

#[test]
fn ctr_run_echo_prints_hello() {
    let Some(out) = run("ctr_run_echo_prints_hello") else {
        return;
    };
    let body = step(out, "hello", 0);
    assert_eq!(body.lines().collect::<Vec<_>>(), ["hello"], "{body}");
}

#[test]
fn ctr_run_exits_with_the_container_status() {
    let Some(out) = run("ctr_run_exits_with_the_container_status") else {
        return;
    };
    step(out, "exit3", 3);
}

#[test]
fn run_rm_leaves_nothing_and_containerd_stops() {
    let Some(out) = run("run_rm_leaves_nothing_and_containerd_stops") else {
        return;
    };
    let left = step(out, "leftovers", 0);
    assert!(left.trim().is_empty(), "containers or tasks left:\n{left}");
    let stop = step(out, "stop", 0);
    assert!(!stop.contains("SIGKILL"), "{stop}");
}

#[test]
fn ctr_run_true_wall_time() {
    let Some(out) = run("ctr_run_true_wall_time") else {
        return;
    };
    for i in 1..=TRUE_RUNS {
        step(out, &format!("true{i}"), 0);
    }
    let times: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("true_ms "))
        .collect();
    assert_eq!(times.len(), TRUE_RUNS as usize, "{}", out.stdout);
    let start = step(out, "start", 0);
    // Informational only: the emulated host is no place for pass/fail on time.
    eprintln!(
        "ctr_run_true_wall_time: {}; L2 boot {:?}; {}; image import {} ms; \
         ctr run --rm true (runc): {} ms; containerd stop {} ms",
        out.kind.describe(),
        out.host_boot,
        start.trim(),
        line_value(&out.stdout, "import_ms "),
        times.join(", "),
        line_value(&out.stdout, "stop_ms "),
    );
}

#[test]
fn cri_plugin_loads_with_restrict_oom_score_adj() {
    let Some(out) = run("cri_plugin_loads_with_restrict_oom_score_adj") else {
        return;
    };
    step(out, "cri_start", 0);
    let plugins = step(out, "cri_plugins", 0);
    let cri = plugins
        .lines()
        .find(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"io.containerd.grpc.v1") && w.get(1) == Some(&"cri")
        })
        .unwrap_or_else(|| panic!("no CRI plugin:\n{plugins}"));
    assert!(cri.trim_end().ends_with(" ok"), "CRI did not load: {cri}");
    // CRI logs its configuration at start: RestrictOOMScoreAdj:true (1.6, 1.7) or
    // "restrictOOMScoreAdj":true (2.x).
    step(out, "cri_oom", 0);
}
