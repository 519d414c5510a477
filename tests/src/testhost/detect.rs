//! Which KVM host this machine offers: its own VMX/SVM KVM, or the emulated one.
//!
//! Environment:
//! - `HUSK_TESTHOST`: `auto` (default), `native` or `emulated` to force a kind.
//! - `HUSK_QEMU`: the `qemu-system-x86_64` binary (default: from `PATH`).
//! - `HUSK_BUSYBOX`: a static busybox (default `/bin/busybox`, `/usr/bin/busybox`).
//! - `HUSK_TESTHOST_KERNEL_DIR`: a prepared L2 kernel directory to use as is.
//! - `HUSK_CACHE_DIR`: where `setup.sh` keeps L2 kernels (default `/var/cache/husk`).
//! - `HUSK_TESTHOST_SETUP=0`: never run `setup.sh` from here (default: run it when
//!   no prepared kernel is found).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{ldd, setup_script, EmulatedHost, HostKind, TestHostError};

/// Finds the KVM host, and on the first call in this process prints one line
/// `husk testhost: using <description>` to stderr (uncaptured by the test harness).
/// The result is computed once per process; the L2 kernel is prepared then if needed.
pub fn detect() -> Result<HostKind, TestHostError> {
    static PRINTED: OnceLock<()> = OnceLock::new();
    let kind = detect_quiet()?;
    PRINTED.get_or_init(|| {
        let _ = writeln!(
            std::io::stderr(),
            "husk testhost: using {}",
            kind.describe()
        );
    });
    Ok(kind)
}

/// [`detect`] without the line.
pub fn detect_quiet() -> Result<HostKind, TestHostError> {
    static CACHE: OnceLock<Result<HostKind, String>> = OnceLock::new();
    CACHE
        .get_or_init(detect_uncached)
        .clone()
        .map_err(TestHostError::Unavailable)
}

fn detect_uncached() -> Result<HostKind, String> {
    let mode = std::env::var("HUSK_TESTHOST").unwrap_or_default();
    match mode.as_str() {
        "" | "auto" => match native_probe() {
            Ok(module) => Ok(HostKind::Native { module }),
            Err(why) => emulated_probe(why.clone())
                .map(HostKind::Emulated)
                .map_err(|e| format!("{why}, and the emulated test host is unavailable: {e}")),
        },
        "native" => native_probe().map(|module| HostKind::Native { module }),
        "emulated" => emulated_probe("HUSK_TESTHOST=emulated".into()).map(HostKind::Emulated),
        other => Err(format!(
            "HUSK_TESTHOST={other:?}: expected auto, native or emulated"
        )),
    }
}

/// Ok(kvm_intel|kvm_amd) when /dev/kvm runs stock guests; Err(why not) otherwise.
fn native_probe() -> Result<String, String> {
    let meta = fs::metadata("/dev/kvm").map_err(|_| "there is no /dev/kvm".to_string())?;
    if !meta.file_type().is_char_device() {
        return Err("/dev/kvm is not a character device".into());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err("/dev/kvm is PVM".into());
    }
    let module = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .ok_or("/dev/kvm is neither kvm_intel nor kvm_amd")?;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm is not accessible: {e}"))?;
    Ok(module.to_string())
}

fn emulated_probe(reason: String) -> Result<EmulatedHost, String> {
    let qemu = match std::env::var_os("HUSK_QEMU") {
        Some(q) => PathBuf::from(q),
        None => find_in_path("qemu-system-x86_64")
            .ok_or("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")?,
    };
    let busybox = find_static_busybox()?;
    let l2_kernel = find_l2_kernel()?;
    let kernel_release = fs::read_to_string(l2_kernel.join("release"))
        .map_err(|e| format!("{}/release: {e}", l2_kernel.display()))?
        .trim()
        .to_string();
    let vmlinux = l2_kernel.join("vmlinux");
    let boot_image = if vmlinux.is_file() {
        vmlinux
    } else {
        l2_kernel.join("vmlinuz")
    };
    Ok(EmulatedHost {
        boot_image,
        l2_kernel,
        kernel_release,
        qemu,
        busybox,
        reason,
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A statically linked busybox on this machine (`HUSK_BUSYBOX` or the usual paths).
pub fn find_static_busybox() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("HUSK_BUSYBOX") {
        Some(b) => vec![b.into()],
        None => vec!["/bin/busybox".into(), "/usr/bin/busybox".into()],
    };
    for c in candidates.iter().filter(|c| c.is_file()) {
        if ldd::is_elf(c) && matches!(ldd::shared_libs(c), Ok(libs) if libs.is_empty()) {
            return Ok(c.clone());
        }
    }
    Err("no statically linked busybox (apt-get install busybox-static)".into())
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HUSK_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/husk"))
        .join("testhost")
}

fn find_l2_kernel() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("HUSK_TESTHOST_KERNEL_DIR") {
        let dir = PathBuf::from(dir);
        return if is_complete(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "HUSK_TESTHOST_KERNEL_DIR={} is not a prepared L2 kernel",
                dir.display()
            ))
        };
    }
    if let Some(dir) = newest_prepared(&cache_dir()) {
        return Ok(dir);
    }
    if std::env::var("HUSK_TESTHOST_SETUP").is_ok_and(|v| v == "0") {
        return Err(format!(
            "no L2 kernel in {} (run {})",
            cache_dir().display(),
            setup_script().display()
        ));
    }
    run_setup()
}

fn is_complete(dir: &Path) -> bool {
    dir.join(".complete").is_file() && dir.join("vmlinuz").is_file()
}

/// The prepared kernel directory with the highest version, e.g. `6.1.0-56-amd64`.
fn newest_prepared(cache: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_complete(p))
        .collect();
    dirs.sort_by_key(|p| version_key(&p.file_name().unwrap_or_default().to_string_lossy()));
    dirs.pop()
}

/// "6.1.0-56-amd64" -> [6, 1, 0, 56]: numeric fields compare as numbers.
pub(super) fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn run_setup() -> Result<PathBuf, String> {
    let script = setup_script();
    if !script.is_file() {
        return Err(format!(
            "no L2 kernel prepared and {} is missing",
            script.display()
        ));
    }
    let _ = writeln!(
        std::io::stderr(),
        "husk testhost: preparing the L2 kernel with {}",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if is_complete(&dir) {
        Ok(dir)
    } else {
        Err(format!(
            "{} printed no prepared directory",
            script.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64"]);
    }

    #[test]
    fn newest_prepared_skips_incomplete() {
        let t = super::super::tempdir::TempDir::new().unwrap();
        for (name, complete) in [
            ("6.1.0-9-amd64", true),
            ("6.1.0-60-amd64", false),
            ("6.1.0-10-amd64", true),
        ] {
            let d = t.path().join(name);
            fs::create_dir(&d).unwrap();
            fs::write(d.join("vmlinuz"), b"").unwrap();
            if complete {
                fs::write(d.join(".complete"), b"").unwrap();
            }
        }
        assert_eq!(
            newest_prepared(t.path()).unwrap(),
            t.path().join("6.1.0-10-amd64")
        );
        assert!(newest_prepared(&t.path().join("missing")).is_none());
    }
}
