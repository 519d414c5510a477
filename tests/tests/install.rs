//! `husk install` and `husk uninstall` against scratch node roots, checked with the real
//! containerd: `containerd --config FILE config dump` shows the configuration containerd would
//! run with (imports merged), without starting anything, so this runs on any machine.
//!
//! For each case: the dump before, `husk install --prefix <scratch>`, the dump after (the
//! husk runtime is there with the right `runtime_type` and `ConfigPath`, and everything else
//! is as before), a second install (changes nothing), `husk uninstall` (the file is
//! byte-identical to the user's, the dump is the one before, and the scratch root holds
//! exactly what it held before).
//!
//! containerd 1.6 is the system's (`/usr/bin/containerd`, Debian bookworm); 1.7 and 2.x are
//! fetched by `tests/containerd/fetch.sh` (trixie, sid). A version that cannot be fetched is
//! skipped with a loud `SKIPPED:` line.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const CRI_V2: &str = "plugins.\"io.containerd.grpc.v1.cri\"";
const CRI_V3: &str = "plugins.\"io.containerd.cri.v1.runtime\"";

/// A containerd 1.6/1.7 configuration with comments and settings of the user's own.
const V2_CONFIG: &str = r#"# containerd on this node: managed by hand, keep the comments.
version = 2
root = "/var/lib/containerd"
oom_score = -999    # inline comment

[debug]
  level = "warn"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.example/pause:3.9"
  max_container_log_line_size = 32768
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"

# Last line: a comment.
"#;

/// Lines of `V2_CONFIG`'s settings as containerd 1.x's dump shows them.
const V2_MARKS: &[&str] = &[
    "oom_score = -999",
    "level = \"warn\"",
    "sandbox_image = \"registry.example/pause:3.9\"",
    "max_container_log_line_size = 32768",
    "SystemdCgroup = true",
    "config_path = \"/etc/containerd/certs.d\"",
];

/// A containerd 2.x configuration.
const V3_CONFIG: &str = r#"# containerd 2.x, hand-written.
version = 3
root = "/var/lib/containerd"

[debug]
  level = "warn"

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "registry.example/pause:3.10"

[plugins."io.containerd.cri.v1.runtime"]
  enable_unprivileged_ports = false
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = true
"#;

fn husk_bin() -> PathBuf {
    let bin = common::bin_dir().join("husk");
    assert!(
        bin.is_file(),
        "{} is missing: run cargo build -p husk-shim",
        bin.display()
    );
    bin
}

/// containerd 1.6, the system's.
fn containerd_1_6() -> PathBuf {
    let bin = PathBuf::from("/usr/bin/containerd");
    assert!(
        bin.is_file(),
        "{} is missing: apt-get install containerd",
        bin.display()
    );
    bin
}

/// containerd from another Debian suite, or `None` after a loud SKIPPED line.
fn fetched(suite: &'static str, test: &str) -> Option<PathBuf> {
    static TRIXIE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static SID: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = if suite == "trixie" { &TRIXIE } else { &SID };
    let got = cell.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("containerd/fetch.sh");
        let out = Command::new("sh")
            .arg(&script)
            .arg(suite)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<_> = err.lines().rev().take(3).collect();
            return Err(format!(
                "fetch.sh {suite} failed ({}): {tail:?}",
                out.status
            ));
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(dir.join("containerd"))
    });
    match got {
        Ok(bin) if bin.is_file() => Some(bin.clone()),
        Ok(bin) => {
            let why = format!("{} is missing after fetch.sh {suite}", bin.display());
            skipped(test, &why)
        }
        Err(e) => skipped(
            test,
            &format!("containerd from {suite} could not be fetched: {e}"),
        ),
    }
}

/// Prints the loud line on the real stderr (the test harness captures `eprintln!`).
fn skipped(test: &str, why: &str) -> Option<PathBuf> {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test} because {why}");
    None
}

/// A scratch node root, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("husk-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc/containerd")).expect("scratch root");
        Scratch(dir)
    }

    fn config(&self) -> PathBuf {
        self.0.join("etc/containerd/config.toml")
    }

    /// Every path under the root, relative, with symlinks' targets.
    fn tree(&self) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            for entry in fs::read_dir(dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                let rel = path
                    .strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string();
                let meta = fs::symlink_metadata(&path).expect("lstat");
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).expect("readlink");
                    out.insert(format!("{rel} -> {}", target.display()));
                } else if meta.is_dir() {
                    out.insert(format!("{rel}/"));
                    walk(root, &path, out);
                } else {
                    out.insert(rel);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.0, &self.0, &mut out);
        out
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `husk ARGS --prefix ROOT`, checks it succeeded, returns its stdout.
fn husk(root: &Scratch, args: &[&str]) -> String {
    let out = Command::new(husk_bin())
        .args(args)
        .arg("--prefix")
        .arg(&root.0)
        .output()
        .expect("run husk");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "husk {args:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn install(root: &Scratch) -> String {
    let a = common::Artifacts::locate();
    let guest = a.vmlinux.parent().expect("build dir").to_path_buf();
    let bins = common::bin_dir();
    husk(
        root,
        &[
            "install",
            "--from",
            bins.to_str().expect("utf-8 path"),
            "--from",
            guest.to_str().expect("utf-8 path"),
        ],
    )
}

/// `containerd --config FILE config dump`: the configuration containerd would run with.
fn dump(containerd: &Path, config: &Path) -> String {
    let out = Command::new(containerd)
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .expect("run containerd config dump");
    assert!(
        out.status.success(),
        "{} config dump failed: {}",
        containerd.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 dump")
}

/// A dump as (section header, its `key = value` lines), trimmed, with 2.x's single quotes made
/// double so that both formats read alike.
type Sections = Vec<(String, Vec<String>)>;

fn sections(dump: &str) -> Sections {
    let mut out: Sections = vec![(String::new(), Vec::new())];
    for line in dump.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = line.replace('\'', "\"");
        match line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Some(header) => out.push((header.to_owned(), Vec::new())),
            None => out.last_mut().expect("non-empty").1.push(line),
        }
    }
    out
}

fn find<'a>(s: &'a Sections, header: &str) -> Option<&'a Vec<String>> {
    s.iter().find(|(h, _)| h == header).map(|(_, lines)| lines)
}

/// The dump without the husk runtime's sections and without the `imports` line (which lists
/// the files loaded), for comparing the rest.
fn without_husk(s: &Sections, cri: &str) -> Sections {
    let husk = format!("{cri}.containerd.runtimes.husk");
    s.iter()
        .filter(|(h, _)| *h != husk && !h.starts_with(&format!("{husk}.")))
        .map(|(h, lines)| {
            let lines = lines
                .iter()
                .filter(|l| !l.starts_with("imports ="))
                .cloned();
            (h.clone(), lines.collect())
        })
        .collect()
}

/// Checks the husk runtime in a dump.
fn assert_husk_runtime(s: &Sections, cri: &str, what: &str) {
    let husk = format!("{cri}.containerd.runtimes.husk");
    let runtime = find(s, &husk).unwrap_or_else(|| panic!("{what}: no [{husk}] in the dump"));
    for want in [
        "runtime_type = \"io.containerd.husk.v2\"",
        "privileged_without_host_devices = true",
    ] {
        assert!(
            runtime.iter().any(|l| l == want),
            "{what}: no {want} in {runtime:?}"
        );
    }
    let options = find(s, &format!("{husk}.options"))
        .unwrap_or_else(|| panic!("{what}: no [{husk}.options] in the dump"));
    assert_eq!(
        options,
        &["ConfigPath = \"/etc/husk/config.toml\""],
        "{what}: runtime options"
    );
}

/// The installed files are the built ones, the shim is linked onto containerd's PATH, and
/// husk's own configuration is there.
fn assert_installed(root: &Scratch) {
    let a = common::Artifacts::locate();
    let bins = common::bin_dir();
    for (src, dest) in [
        (
            bins.join("containerd-shim-husk-v2"),
            "opt/husk/bin/containerd-shim-husk-v2",
        ),
        (bins.join("husk-vmm"), "opt/husk/bin/husk-vmm"),
        (bins.join("husk"), "opt/husk/bin/husk"),
        (a.vmlinux.clone(), "opt/husk/share/vmlinux"),
        (a.initramfs.clone(), "opt/husk/share/initramfs"),
    ] {
        let installed = fs::read(root.0.join(dest)).unwrap_or_else(|e| panic!("{dest}: {e}"));
        assert!(
            installed == fs::read(&src).expect("source"),
            "{dest} differs from {}",
            src.display()
        );
    }
    let link = fs::read_link(root.0.join("usr/local/bin/containerd-shim-husk-v2")).expect("link");
    assert_eq!(link, Path::new("/opt/husk/bin/containerd-shim-husk-v2"));
    let config = fs::read_to_string(root.0.join("etc/husk/config.toml")).expect("husk config");
    assert!(
        config.contains("kernel = \"/opt/husk/share/vmlinux\""),
        "{config}"
    );
}

/// The whole cycle for a user's configuration `original` under containerd `containerd`.
/// `marks` are lines of the user's settings that the dump must show before and after (so that
/// "unchanged" is not vacuous).
fn cycle(name: &str, containerd: &Path, original: &str, cri: &str, marks: &[&str]) {
    let root = Scratch::new(name);
    fs::write(root.config(), original).expect("write config");
    let tree_before = root.tree();
    let before = sections(&dump(containerd, &root.config()));
    assert!(find(&before, &format!("{cri}.containerd.runtimes.husk")).is_none());
    let has = |s: &Sections, mark: &str| s.iter().any(|(_, lines)| lines.iter().any(|l| l == mark));
    for mark in marks {
        assert!(
            has(&before, mark),
            "{name}: the dump does not show {mark:?}"
        );
    }

    let out = install(&root);
    assert!(out.contains("restart containerd"), "{out}");
    assert_installed(&root);
    let installed_text = fs::read_to_string(root.config()).expect("config");
    let after = sections(&dump(containerd, &root.config()));
    assert_husk_runtime(&after, cri, name);
    assert_eq!(
        without_husk(&after, cri),
        without_husk(&before, cri),
        "{name}: settings other than the husk runtime changed"
    );
    for mark in marks {
        assert!(has(&after, mark), "{name}: {mark:?} is gone after install");
    }
    let backup = root.0.join("etc/containerd/config.toml.husk-backup");
    assert_eq!(fs::read_to_string(&backup).expect("backup"), original);

    let again = install(&root);
    assert!(again.contains("no restart needed"), "{again}");
    assert_eq!(
        fs::read_to_string(root.config()).expect("config"),
        installed_text
    );

    let out = husk(&root, &["uninstall"]);
    assert!(
        out.contains("restored /etc/containerd/config.toml"),
        "{out}"
    );
    assert_eq!(
        fs::read(root.config()).expect("config"),
        original.as_bytes(),
        "{name}: uninstall did not restore the user's file byte for byte"
    );
    let restored = sections(&dump(containerd, &root.config()));
    assert_eq!(restored, before, "{name}: the dump after uninstall differs");
    assert_eq!(
        root.tree(),
        tree_before,
        "{name}: uninstall left files behind"
    );
    eprintln!(
        "{name}: {}: husk runtime added and removed; other settings unchanged",
        containerd.display()
    );
}

#[test]
fn v2_config_containerd_1_6() {
    cycle("v2-1.6", &containerd_1_6(), V2_CONFIG, CRI_V2, V2_MARKS);
}

#[test]
fn v2_config_containerd_1_7() {
    if let Some(bin) = fetched("trixie", "v2_config_containerd_1_7") {
        cycle("v2-1.7", &bin, V2_CONFIG, CRI_V2, V2_MARKS);
    }
}

/// 2.x migrates a version 2 file on load; husk edits it in place like for 1.x.
#[test]
fn v2_config_containerd_2() {
    if let Some(bin) = fetched("sid", "v2_config_containerd_2") {
        // 2.x's dump shows the migrated runtimes under the version 3 plugin; it does not
        // show a migrated sandbox_image (containerd issue 11600), the daemon does use it.
        let marks = [
            "oom_score = -999",
            "level = \"warn\"",
            "SystemdCgroup = true",
        ];
        cycle("v2-2.x", &bin, V2_CONFIG, CRI_V3, &marks);
    }
}

/// A version 3 file gets a drop-in (conf.d/husk.toml) and an `imports` entry.
#[test]
fn v3_config_containerd_2() {
    let Some(bin) = fetched("sid", "v3_config_containerd_2") else {
        return;
    };
    let marks = [
        "sandbox = \"registry.example/pause:3.10\"",
        "SystemdCgroup = true",
        "level = \"warn\"",
    ];
    cycle("v3-2.x", &bin, V3_CONFIG, CRI_V3, &marks);

    // The drop-in, seen from inside: it is imported and holds only husk's runtime.
    let root = Scratch::new("v3-2.x-drop-in");
    fs::write(root.config(), V3_CONFIG).expect("write config");
    install(&root);
    let text = fs::read_to_string(root.config()).expect("config");
    let import = "imports = [\"conf.d/husk.toml\"]\n";
    assert!(text.contains(import), "{text}");
    assert_eq!(
        text.replacen(import, "", 1),
        V3_CONFIG,
        "more than the import changed"
    );
    let drop_in = root.0.join("etc/containerd/conf.d/husk.toml");
    let drop_in = fs::read_to_string(&drop_in).expect("drop-in");
    assert!(drop_in.contains("version = 3"), "{drop_in}");
    let dumped = dump(&bin, &root.config());
    assert!(
        dumped.contains("conf.d/husk.toml"),
        "imports line: {dumped}"
    );
    husk(&root, &["uninstall"]);
    assert!(!root.0.join("etc/containerd/conf.d").exists());
}

/// No configuration file: containerd runs on its defaults; install writes a minimal version 2
/// file (naming runc, which 1.x would otherwise drop) and uninstall removes it.
#[test]
fn no_config_containerd_1_6() {
    let containerd = containerd_1_6();
    let root = Scratch::new("none-1.6");
    let tree_before = root.tree();
    // Without a file containerd runs on its defaults (`config default`; 1.6's `config dump`
    // refuses a missing file).
    let out = Command::new(&containerd)
        .args(["config", "default"])
        .output()
        .expect("containerd config default");
    assert!(out.status.success(), "containerd config default failed");
    let before = sections(&String::from_utf8_lossy(&out.stdout));
    install(&root);
    assert_installed(&root);
    let after = sections(&dump(&containerd, &root.config()));
    assert_husk_runtime(&after, CRI_V2, "no config");
    let runc = find(&after, &format!("{CRI_V2}.containerd.runtimes.runc")).expect("runc");
    assert!(
        runc.iter()
            .any(|l| l == "runtime_type = \"io.containerd.runc.v2\""),
        "{runc:?}"
    );
    // The built-in runc has an options table of zero values, the named one an empty table:
    // the runc shim reads both as its defaults. Everything else is as without a file.
    let zero = |s: &Sections| -> Sections {
        let options = format!("{CRI_V2}.containerd.runtimes.runc.options");
        without_husk(s, CRI_V2)
            .into_iter()
            .map(|(h, lines)| {
                let lines = if h == options {
                    let zero = |l: &String| {
                        l.ends_with("= \"\"") || l.ends_with("= 0") || l.ends_with("= false")
                    };
                    lines.into_iter().filter(|l| !zero(l)).collect()
                } else {
                    lines
                };
                (h, lines)
            })
            .collect()
    };
    assert_eq!(
        zero(&after),
        zero(&before),
        "settings other than the runtimes changed"
    );

    let out = husk(&root, &["uninstall"]);
    assert!(out.contains("husk install made it"), "{out}");
    assert!(!root.config().exists());
    assert_eq!(root.tree(), tree_before, "uninstall left files behind");
}

/// A version 1 file (no `version`, plugin sections) is refused with a clear message and left
/// alone, and nothing is installed.
#[test]
fn version_1_config_is_refused() {
    let root = Scratch::new("v1");
    let original = "[plugins.cri]\n  sandbox_image = \"p\"\n";
    fs::write(root.config(), original).expect("write config");
    let tree_before = root.tree();
    let out = Command::new(husk_bin())
        .args(["install", "--from"])
        .arg(common::bin_dir())
        .arg("--prefix")
        .arg(&root.0)
        .output()
        .expect("run husk");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("version 1 configuration"), "{stderr}");
    assert_eq!(fs::read_to_string(root.config()).expect("config"), original);
    assert_eq!(root.tree(), tree_before);
}
