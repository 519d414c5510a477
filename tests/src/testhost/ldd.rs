//! Finds the shared libraries (and the dynamic loader) a host executable needs,
//! so that it runs inside the test host's initramfs, where they are placed at the
//! same paths. `ldd(1)` does the resolution; this module parses its output.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::TestHostError;

/// Whether `path` starts with the ELF magic.
pub fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|()| &magic == b"\x7fELF")
        .unwrap_or(false)
}

/// The absolute paths of the libraries `path` loads, the loader included.
/// Empty for static executables and non-ELF files.
pub fn shared_libs(path: &Path) -> Result<Vec<PathBuf>, TestHostError> {
    if !is_elf(path) {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .map_err(|e| TestHostError::io("running ldd", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(TestHostError::InvalidJob(format!(
            "ldd {} failed: {}",
            path.display(),
            stderr.trim()
        )));
    }
    parse_ldd(&stdout).map_err(|e| TestHostError::InvalidJob(format!("{}: {e}", path.display())))
}

/// Parses `ldd` output:
/// ```text
///     linux-vdso.so.1 (0x00007ffc...)
///     libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f...)
///     /lib64/ld-linux-x86-64.so.2 (0x00007f...)
/// ```
/// The vDSO has no file and is skipped; a library that was `not found` is an error.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "statically linked" {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("shared library {} not found", name.trim()));
                }
                strip_address(rest)
            }
            None => strip_address(line),
        };
        // No path: the vDSO, or a library resolved to nothing (`=> (0x...)`).
        if target.starts_with('/') {
            let p = PathBuf::from(target);
            if !libs.contains(&p) {
                libs.push(p);
            }
        }
    }
    Ok(libs)
}

/// "/lib/libc.so.6 (0x7f00)" -> "/lib/libc.so.6"
fn strip_address(s: &str) -> &str {
    match s.rfind(" (0x") {
        Some(i) => s[..i].trim(),
        None => s.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_typical_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd6a5f6000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f5d1c0a0000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5d1bebf000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f5d1c1c6000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn not_found_is_an_error() {
        let text = "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n";
        let err = parse_ldd(text).unwrap_err();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn static_and_duplicates() {
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        let text = "a.so => /l/a.so (0x1)\nb.so => /l/a.so (0x2)\n";
        assert_eq!(parse_ldd(text).unwrap().len(), 1);
    }

    #[test]
    fn real_ldd_on_a_dynamic_host_binary() {
        // /bin/sh is dynamically linked on every glibc distribution we run on.
        let libs = shared_libs(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
        let not_elf = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert!(shared_libs(&not_elf).unwrap().is_empty());
    }
}
