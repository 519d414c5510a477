//! The test-host job that drives CRI: a private containerd with CRI and the CNI
//! bridge, the busybox and pause images imported into CRI's namespace, then
//! `husk-cri-check` runs, each in its own section of the output:
//! `BEGIN <section>` ... `END <section> exit=<code>` around `key value` lines.
//!
//! Shared by the CRI tests (`tests/tests/common/cri.rs`) and the Pod-start
//! benchmark (`husk-cri-bench`), which only differ in which checks they run and
//! what they install first ([`husk_setup`] for the husk runtime).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::containerd::cni::{CNI_MODULES, TAP_MODULES};
use crate::containerd::image::{ImageError, OciImage, DEFAULT_IMAGE, PAUSE_IMAGE};
use crate::containerd::{Cni, Containerd, ContainerdError, Cri};
use crate::testhost::{self, Job};

/// The private containerd's directory in L2 (a tmpfs).
pub const L2_BASE: &str = "/tmp/husk-containerd";

/// The programs the job runs, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("runc", "runc"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
];

/// The CNI plugins the bridge network uses.
const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback"];

/// What went wrong preparing a CRI job.
#[derive(Debug, Error)]
pub enum CriJobError {
    #[error("containerd settings")]
    Containerd(#[from] ContainerdError),
    /// No static busybox for the images.
    #[error("{0}")]
    Busybox(String),
    #[error("writing an image")]
    Image(#[from] ImageError),
    /// A runtime handler that cannot be configured.
    #[error("{0}")]
    Handler(String),
}

/// A runtime handler the CRI job knows how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handler {
    pub name: &'static str,
    pub runtime_type: &'static str,
    /// For runc-compatible runtimes served by runc's shim: `options.BinaryName`.
    pub binary: Option<&'static str>,
    /// The Debian package that has it (`husk` comes from this workspace).
    pub package: &'static str,
}

/// The handlers `husk-cri-bench` compares. gVisor's `runsc` is served by runc's
/// shim: Debian packages no `containerd-shim-runsc-v1`. When
/// [`RUNSC_BIN_ENV`] names a directory (`tests/containerd/fetch.sh trixie
/// runsc` prints one), the runtime binary is the adapter
/// `tests/containerd/runsc-for-runc-shim` there, in front of that directory's
/// `runsc`; otherwise Debian's `/usr/bin/runsc` alone, which runc's shim cannot
/// take through a Pod's life. See `docs/benchmarks.md`, "gVisor".
pub const HANDLERS: &[Handler] = &[
    Handler {
        name: "runc",
        runtime_type: "io.containerd.runc.v2",
        binary: None,
        package: "runc",
    },
    Handler {
        name: "crun",
        runtime_type: "io.containerd.runc.v2",
        binary: Some("/usr/bin/crun"),
        package: "crun",
    },
    Handler {
        name: "runsc",
        runtime_type: "io.containerd.runc.v2",
        binary: Some("/usr/bin/runsc"),
        package: "runsc",
    },
    Handler {
        name: "husk",
        runtime_type: "io.containerd.husk.v2",
        binary: None,
        package: "(this workspace)",
    },
];

/// The directory of the `runsc` (and its adapter for runc's shim) to use
/// instead of `/usr/bin/runsc`.
pub const RUNSC_BIN_ENV: &str = "HUSK_RUNSC_BIN";

/// The adapter's name in [`RUNSC_BIN_ENV`]'s directory.
pub const RUNSC_ADAPTER: &str = "runsc-for-runc-shim";

/// The known handler `name`.
pub fn handler(name: &str) -> Option<&'static Handler> {
    HANDLERS.iter().find(|h| h.name == name)
}

/// The runtime binary of `h` on this machine: its [`Handler::binary`], or for
/// `runsc` the adapter in `$HUSK_RUNSC_BIN` when that is set.
fn handler_binary(h: &Handler) -> Option<String> {
    match std::env::var(RUNSC_BIN_ENV) {
        Ok(dir) if h.name == "runsc" && !dir.is_empty() => {
            Some(Path::new(&dir).join(RUNSC_ADAPTER).display().to_string())
        }
        _ => h.binary.map(str::to_string),
    }
}

/// [`containerd`] with the known handlers `names` (runc is always there); an
/// unknown name, or a runtime binary this machine lacks, is an error naming
/// the package.
pub fn containerd_for(base: &str, names: &[String]) -> Result<Containerd, CriJobError> {
    let mut runtimes = Vec::new();
    let mut binaries = Vec::new();
    for name in names {
        let h = handler(name).ok_or_else(|| {
            let known: Vec<&str> = HANDLERS.iter().map(|h| h.name).collect();
            CriJobError::Handler(format!(
                "unknown handler {name:?}; known: {}",
                known.join(", ")
            ))
        })?;
        if let Some(binary) = handler_binary(h) {
            if !Path::new(&binary).is_file() {
                let how = if binary.ends_with(RUNSC_ADAPTER) {
                    "tests/containerd/fetch.sh SUITE runsc".to_string()
                } else {
                    format!("apt-get install {}", h.package)
                };
                return Err(CriJobError::Handler(format!(
                    "{binary} is not installed: {how}"
                )));
            }
            binaries.push((h.name.to_string(), binary));
        }
        runtimes.push((h.name.to_string(), h.runtime_type.to_string()));
    }
    containerd_with(base, runtimes, binaries)
}

/// containerd with CRI (the pause image, runc and `runtimes`, as (handler,
/// runtime type) pairs) and the CNI bridge; its binaries from
/// [`crate::containerd::BIN_ENV`] if set.
pub fn containerd(base: &str, runtimes: &[(&str, &str)]) -> Result<Containerd, CriJobError> {
    let runtimes = runtimes
        .iter()
        .map(|(h, t)| (h.to_string(), t.to_string()))
        .collect();
    containerd_with(base, runtimes, Vec::new())
}

fn containerd_with(
    base: &str,
    runtimes: Vec<(String, String)>,
    binaries: Vec<(String, String)>,
) -> Result<Containerd, CriJobError> {
    let cri = Cri {
        sandbox_image: Some(PAUSE_IMAGE.into()),
        runtimes,
        binaries,
    };
    Ok(Containerd::new(base)?
        .bin_dir_from_env()?
        .cri(cri)?
        .cni(Cni::default())?)
}

/// One line per program or CNI plugin the job runs that this machine lacks
/// (containerd's programs may also come from `ctrd`'s binary directory), each
/// naming the package to install. Empty when everything is there.
pub fn missing_tools(ctrd: &Containerd) -> Vec<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = |tool: &str| {
        ctrd.bin()
            .into_iter()
            .chain(path.split(':'))
            .chain(["/usr/sbin", "/sbin"])
            .any(|dir| Path::new(dir).join(tool).is_file())
    };
    let mut missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| !found(tool))
        .map(|(tool, package)| format!("{tool} is not installed: apt-get install {package}"))
        .collect();
    let cni = Cni::default().bin_dir;
    for plugin in CNI_PLUGINS {
        if !Path::new(&cni).join(plugin).is_file() {
            missing.push(format!(
                "the CNI plugin {cni}/{plugin} is missing: apt-get install containernetworking-plugins"
            ));
        }
    }
    missing
}

/// Writes the busybox image ([`DEFAULT_IMAGE`]) and CRI's pause image
/// ([`PAUSE_IMAGE`]) as image-layout tars into `dir`, from the static busybox
/// the test host uses; their paths. With `probe`, the busybox image also holds
/// that static `husk-probe` as [`PROBE`](crate::cri::scenario::PROBE).
pub fn write_images(dir: &Path, probe: Option<&Path>) -> Result<(PathBuf, PathBuf), CriJobError> {
    let busybox = testhost::find_static_busybox().map_err(CriJobError::Busybox)?;
    let image = dir.join("busybox.tar");
    let pause = dir.join("pause.tar");
    let mut files = Vec::new();
    if let Some(probe) = probe {
        let bytes = std::fs::read(probe).map_err(|source| ImageError::Read {
            path: probe.to_path_buf(),
            source,
        })?;
        files.push((
            crate::cri::scenario::PROBE.trim_start_matches('/'),
            0o755,
            bytes,
        ));
    }
    OciImage::busybox_with(DEFAULT_IMAGE, &busybox, &files)?.write_layout_file(&image)?;
    OciImage::pause(PAUSE_IMAGE, &busybox)?.write_layout_file(&pause)?;
    Ok((image, pause))
}

/// One `husk-cri-check` run in the job: `husk-cri-check --handler <handler>
/// <args> <scenario>`, printed as the section `section`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub section: String,
    pub handler: String,
    /// Extra arguments, shell words (e.g. `--pods 5`).
    pub args: String,
    pub scenario: String,
}

impl Check {
    /// A run of `scenario` in the section of the same name.
    pub fn new(handler: &str, args: &str, scenario: &str) -> Self {
        Self::named(scenario, handler, args, scenario)
    }

    /// A run of `scenario` in the section `section`.
    pub fn named(section: &str, handler: &str, args: &str, scenario: &str) -> Self {
        Self {
            section: section.into(),
            handler: handler.into(),
            args: args.into(),
            scenario: scenario.into(),
        }
    }
}

/// The job script: `setup` (shell lines run first, e.g. [`husk_setup`]),
/// containerd started, both images imported into CRI's namespace, each of
/// `checks` in its section, then containerd stopped (its warnings and errors
/// printed in the section `log`) and purged. The sections `start`,
/// `import_busybox`, `import_pause` and `stop` show the steps around the checks.
pub fn script(ctrd: &Containerd, setup: &str, checks: &[Check]) -> String {
    let runs: String = checks
        .iter()
        .map(|c| {
            format!(
                "sec {} \"$F/husk-cri-check\" --socket \"$HUSK_CTRD_ADDRESS\" --handler {} {} {}\n",
                c.section, c.handler, c.args, c.scenario
            )
        })
        .collect();
    format!(
        r#"set -u
{functions}
sec() {{ _name=$1; shift; echo "BEGIN $_name"; "$@"; _rc=$?; echo "END $_name exit=$_rc"; }}
F="$HUSK_FILES"
chmod +x "$F/husk-cri-check"
# The streaming server listens on 127.0.0.1: the test host's loopback must be up.
ip link set lo up
{HOST_ROOT_AS_NAMESPACE_ROOT}
{setup}
sec start husk_containerd_start
sec import_busybox husk_ctr_cri image import --index-name {DEFAULT_IMAGE} "$F/busybox.tar"
sec import_pause husk_ctr_cri image import --index-name {PAUSE_IMAGE} "$F/pause.tar"
{runs}sec stop husk_containerd_stop
sec log grep -E 'level=(warning|error|fatal)' "$HUSK_CTRD_BASE/containerd.log"
husk_containerd_purge
"#,
        functions = ctrd.shell_functions(),
    )
}

/// In host-root mode the job runs chrooted into the host-root overlay, which L2
/// mounted at `/mnt/root` of its initramfs. `runc exec` (ExecSync, Exec) joins
/// the container's mount namespace with setns, which starts the process at the
/// namespace's root: the initramfs, where the container's pivoted root is not
/// (runc's pivot_root, under a chroot, put it at `/mnt/root`). So the overlay is
/// moved onto the initramfs' `/`, as switch_root does, from PID 1's root.
const HOST_ROOT_AS_NAMESPACE_ROOT: &str = r#"if [ "$HUSK_TESTHOST" = emulated ] && grep -q ' /mnt/root ' /proc/1/mountinfo; then
    nsenter --root=/proc/1/root /bin/busybox sh -c 'cd /mnt/root && /bin/busybox mount --move . /' || {
        echo "cannot move the host root onto the test host's /"; exit 1; }
fi"#;

/// The job: the script, `husk-cri-check` (`check`) and the images as files,
/// host-root mode, the CNI modules (and the tap modules a VM runtime needs).
pub fn job(script: String, check: &Path, busybox: &Path, pause: &Path, timeout: Duration) -> Job {
    let mut job = Job::new(script)
        .file(check, "husk-cri-check")
        .file(busybox, "busybox.tar")
        .file(pause, "pause.tar")
        .host_root(true)
        .timeout(timeout);
    for m in CNI_MODULES.iter().chain(TAP_MODULES) {
        job = job.module(*m);
    }
    job
}

/// How the husk runtime is installed in the test host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HuskGuest {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The shim's `log_level` (debug also copies the guest console into its log).
    pub log_level: String,
}

/// The job's files the husk runtime needs: the shim, the VMM, the guest
/// kernel and initramfs, under the names [`husk_setup`] expects.
pub fn husk_files(job: Job, shim: &Path, vmm: &Path, kernel: &Path, initramfs: &Path) -> Job {
    job.file(shim, "containerd-shim-husk-v2")
        .file(vmm, "husk-vmm")
        .file(kernel, "vmlinux")
        .file(initramfs, "initramfs.cpio")
}

/// Setup lines for [`script`]: the shim on containerd's `PATH` (as
/// `/opt/husk-test/bin/containerd-shim-husk-v2`) and its configuration
/// `/opt/husk-test/config.toml` (`HUSK_CONFIG`) naming the job's VMM, kernel
/// and initramfs ([`husk_files`]) and the guest's size.
pub fn husk_setup(guest: &HuskGuest) -> String {
    format!(
        r#"mkdir -p /opt/husk-test/bin
cp "$F/containerd-shim-husk-v2" /opt/husk-test/bin/
chmod +x /opt/husk-test/bin/containerd-shim-husk-v2 "$F/husk-vmm"
export PATH="/opt/husk-test/bin:$PATH"
cat > /opt/husk-test/config.toml <<EOF
vmm = "$F/husk-vmm"
kernel = "$F/vmlinux"
initramfs = "$F/initramfs.cpio"
vcpus = {vcpus}
memory_mib = {memory_mib}
log_level = "{log_level}"
EOF
export HUSK_CONFIG=/opt/husk-test/config.toml"#,
        vcpus = guest.vcpus,
        memory_mib = guest.memory_mib,
        log_level = guest.log_level,
    )
}

/// The text between `BEGIN <name>` and `END <name> exit=<code>` in a job's
/// output, and the code; `None` if the section is missing or never ended.
pub fn section<'a>(out: &'a str, name: &str) -> Option<(&'a str, i32)> {
    let begin = format!("BEGIN {name}\n");
    let end = format!("END {name} exit=");
    let start = out.find(&begin)? + begin.len();
    let len = out[start..].find(&end)?;
    let code = out[start + len + end.len()..]
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((&out[start..start + len], code))
}

/// A section's `key value` lines, by key, in order (a line without a space is
/// a key with an empty value).
pub fn values(body: &str) -> BTreeMap<&str, Vec<&str>> {
    let mut values: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in body.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        values.entry(k).or_default().push(v.trim());
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_values_parse() {
        let out = "noise\nBEGIN a\nx 1\ny two words\nx 3\nflag\nEND a exit=0\n\
                   BEGIN b\nresult failed: boom\nEND b exit=1\nBEGIN c\nx 1\n";
        let (body, code) = section(out, "a").expect("section a");
        assert_eq!(code, 0);
        let v = values(body);
        assert_eq!(v["x"], ["1", "3"]);
        assert_eq!(v["y"], ["two words"]);
        assert_eq!(v["flag"], [""]);
        let (body, code) = section(out, "b").expect("section b");
        assert_eq!((body, code), ("result failed: boom\n", 1));
        assert!(section(out, "c").is_none(), "never ended");
        assert!(section(out, "d").is_none(), "missing");
    }

    #[test]
    fn the_script_runs_each_check_in_its_section() {
        let ctrd = containerd(L2_BASE, &[("husk", "io.containerd.husk.v2")]).expect("settings");
        let checks = [
            Check::new("runc", "--pods 3", "pod"),
            Check::named("bench-r1-husk", "husk", "--pods 5", "bench"),
        ];
        let s = script(&ctrd, "echo setup-here", &checks);
        assert!(s.contains(
            "sec pod \"$F/husk-cri-check\" --socket \"$HUSK_CTRD_ADDRESS\" --handler runc --pods 3 pod\n"
        ));
        assert!(s.contains("sec bench-r1-husk \"$F/husk-cri-check\" --socket \"$HUSK_CTRD_ADDRESS\" --handler husk --pods 5 bench\n"));
        let order = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle}"));
        assert!(order("echo setup-here") < order("sec start"));
        assert!(order("sec import_pause") < order("sec pod "));
        assert!(order("sec bench-r1-husk") < order("sec stop"));
    }

    #[test]
    fn known_handlers_configure_runc_compatible_binaries() {
        let names = ["runc".to_string(), "husk".to_string()];
        let c = containerd_for(L2_BASE, &names).expect("runc and husk need no binary");
        let toml = c.config_toml();
        assert!(
            toml.contains("runtime_type = \"io.containerd.husk.v2\""),
            "{toml}"
        );
        assert!(!toml.contains("BinaryName"), "{toml}");
        let bad = containerd_for(L2_BASE, &["kata".to_string()]);
        assert!(matches!(bad, Err(CriJobError::Handler(m)) if m.contains("unknown handler")));
        assert_eq!(
            handler("runsc").and_then(|h| h.binary),
            Some("/usr/bin/runsc")
        );
    }

    #[test]
    fn husk_setup_names_the_guest_size() {
        let s = husk_setup(&HuskGuest {
            vcpus: 1,
            memory_mib: 256,
            log_level: "warn".into(),
        });
        assert!(s.contains("vcpus = 1\nmemory_mib = 256\nlog_level = \"warn\"\n"));
        assert!(s.contains("export HUSK_CONFIG=/opt/husk-test/config.toml"));
    }

    /// A stand-in runsc for the adapter: logs its arguments, says "created" until
    /// `start` ran, and has every container end with status 3.
    const FAKE_RUNSC: &str = r#"#!/bin/sh
d=$(dirname "$0")
echo "$*" >>"$d/calls"
for a; do id=$a; done
case " $* " in
    *" start "*) touch "$d/started"; echo out; echo err >&2 ;;
    *" state "*) if [ -e "$d/started" ]; then s=running; else s=created; fi
        printf '{\n  "id": "%s",\n  "status": "%s"\n}\n' "$id" "$s" ;;
    *" wait "*) printf '{"id":"%s","exitStatus":3}\n' "$id" ;;
    *" kill "*) echo "sandbox is not running"; exit 128 ;;
esac
"#;

    #[test]
    fn the_runsc_adapter_stands_a_watcher_in_for_an_app_container() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("husk-runsc-adapter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bundle")).unwrap();
        let runsc = dir.join("runsc");
        std::fs::write(&runsc, FAKE_RUNSC).unwrap();
        std::fs::set_permissions(&runsc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let adapter = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("containerd")
            .join(RUNSC_ADAPTER);
        std::fs::copy(&adapter, dir.join(RUNSC_ADAPTER)).unwrap();
        let config = dir.join("bundle/config.json");
        let pid_file = dir.join("pid");
        let run = |args: &[&str]| {
            std::process::Command::new(dir.join(RUNSC_ADAPTER))
                .args(["--root", "/r", "--log", "/l", "--log-format", "json"])
                .args(args)
                .output()
                .unwrap()
        };
        let create = |id: &str| {
            run(&[
                "create",
                "--bundle",
                dir.join("bundle").to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                id,
            ])
        };

        // The pause container: runsc's own pid file, no watcher.
        std::fs::write(
            &config,
            r#"{"annotations": {"io.kubernetes.cri.container-type": "sandbox"}}"#,
        )
        .unwrap();
        assert!(create("pod").status.success());
        assert!(!pid_file.exists(), "a watcher for the pause container");

        // An app container: the watcher waits for start, then exits with the status.
        std::fs::write(
            &config,
            r#"{"annotations": {"io.kubernetes.cri.container-type": "container"}}"#,
        )
        .unwrap();
        // This process then reaps the watcher, orphaned when the adapter exits,
        // as runc's shim does.
        // SAFETY: prctl(2) with integer arguments only.
        let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(subreaper, 0);
        assert!(create("app").status.success());
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .unwrap()
            .parse()
            .expect("a pid without a newline");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut status = 0;
        // SAFETY: waitpid(2) writes only to `status`.
        let early = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert_eq!(early, 0, "the watcher ended before the container started");

        let start = run(&["start", "app"]);
        assert!(start.status.success());
        assert!(
            start.stdout.is_empty() && start.stderr.is_empty(),
            "start kept its output: {start:?}"
        );
        // SAFETY: as above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3);

        // A kill after the end reads as runc's "container not running".
        let kill = run(&["kill", "app", "9"]);
        assert_eq!(kill.status.code(), Some(128));
        let said = String::from_utf8_lossy(&kill.stderr);
        assert!(said.starts_with("container not running: "), "{said}");

        let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
        assert!(calls.contains("--root /r wait app"), "{calls}");
        assert!(
            calls.contains("--root /r --log /l --log-format json start app"),
            "{calls}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
