//! husk-mkinitramfs: builds the guest's initramfs, reproducibly.
//!
//! ```text
//! husk-mkinitramfs --output FILE --init PATH [--file HOSTPATH:GUESTPATH[:MODE]]...
//!                  [--symlink LINK:TARGET]... [--busybox PATH]
//! ```
//!
//! The archive holds `/init` (mode 0755, from PATH), `/dev/console` (c 5 1,
//! mode 0600: the kernel opens it as PID 1's stdin, stdout and stderr), the
//! empty directories `/dev /proc /sys /run /tmp /root`, every `--file` (MODE
//! in octal, 0644 by default) and every `--symlink`. `--busybox` installs a
//! static busybox as `/bin/busybox` (0755) with a symlink `/bin/<applet>` for
//! each of [`BUSYBOX_APPLETS`] (and `/usr/bin/env`): the guest's shell and
//! tools for debugging and tests. The same inputs give the same bytes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use vmm::initramfs::Initramfs;

/// Builds husk's guest initramfs (a newc cpio archive).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Where to write the archive.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// The guest agent, installed as /init.
    #[arg(long, value_name = "PATH")]
    init: PathBuf,
    /// An extra file: HOSTPATH:GUESTPATH[:MODE], MODE in octal (default 0644).
    #[arg(long = "file", value_name = "HOSTPATH:GUESTPATH[:MODE]", value_parser = parse_file_spec)]
    files: Vec<FileSpec>,
    /// A symbolic link: LINK:TARGET (TARGET is stored as given).
    #[arg(long = "symlink", value_name = "LINK:TARGET", value_parser = parse_symlink_spec)]
    symlinks: Vec<(String, String)>,
    /// A static busybox, installed as /bin/busybox with its applet links.
    #[arg(long, value_name = "PATH")]
    busybox: Option<PathBuf>,
}

/// The applets linked to `/bin/busybox` by `--busybox`: a shell and the tools
/// the tests and a debugging session use. All are in Debian's busybox-static.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "[",
    "ash",
    "basename",
    "cat",
    "chmod",
    "cmp",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "dmesg",
    "du",
    "echo",
    "env",
    "false",
    "find",
    "free",
    "grep",
    "head",
    "hostname",
    "id",
    "ip",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mkfifo",
    "mknod",
    "mount",
    "mv",
    "nc",
    "nproc",
    "ping",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "sync",
    "tail",
    "tee",
    "test",
    "timeout",
    "touch",
    "tr",
    "true",
    "truncate",
    "umount",
    "uname",
    "wc",
    "xargs",
    "yes",
];

fn parse_symlink_spec(spec: &str) -> anyhow::Result<(String, String)> {
    match spec.split_once(':') {
        Some((link, target)) if !link.is_empty() && !target.is_empty() => {
            Ok((link.to_owned(), target.to_owned()))
        }
        _ => bail!("expected LINK:TARGET, got {spec:?}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileSpec {
    host: PathBuf,
    guest: String,
    mode: u32,
}

const DEFAULT_FILE_MODE: u32 = 0o644;

fn parse_file_spec(spec: &str) -> anyhow::Result<FileSpec> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, guest, mode) = match parts.as_slice() {
        [host, guest] => (*host, *guest, DEFAULT_FILE_MODE),
        [host, guest, mode] => {
            let mode = u32::from_str_radix(mode, 8)
                .with_context(|| format!("mode {mode:?} is not octal"))?;
            (*host, *guest, mode)
        }
        _ => bail!("expected HOSTPATH:GUESTPATH[:MODE], got {spec:?}"),
    };
    if host.is_empty() || guest.is_empty() {
        bail!("expected HOSTPATH:GUESTPATH[:MODE], got {spec:?}");
    }
    Ok(FileSpec {
        host: PathBuf::from(host),
        guest: guest.to_owned(),
        mode,
    })
}

fn build(cli: &Cli) -> anyhow::Result<Initramfs> {
    let mut cpio = Initramfs::new();
    cpio.file_from_host("/init", 0o755, &cli.init)?
        .char_device("/dev/console", 0o600, 5, 1)?
        .directory("/dev", 0o755)?
        .directory("/proc", 0o555)?
        .directory("/sys", 0o555)?
        .directory("/run", 0o755)?
        .directory("/tmp", 0o1777)?
        .directory("/root", 0o700)?;
    for f in &cli.files {
        cpio.file_from_host(&f.guest, f.mode, &f.host)
            .with_context(|| format!("adding {}", f.guest))?;
    }
    if let Some(busybox) = &cli.busybox {
        cpio.file_from_host("/bin/busybox", 0o755, busybox)?
            .symlink("/usr/bin/env", "/bin/busybox")?;
        for applet in BUSYBOX_APPLETS {
            cpio.symlink(&format!("/bin/{applet}"), "busybox")
                .with_context(|| format!("adding /bin/{applet}"))?;
        }
    }
    for (link, target) in &cli.symlinks {
        cpio.symlink(link, target)
            .with_context(|| format!("adding {link}"))?;
    }
    Ok(cpio)
}

/// Writes next to the output and renames, so a failed run leaves no half file.
fn write_atomically(cpio: &Initramfs, output: &Path) -> anyhow::Result<()> {
    let mut tmp_name = output.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| -> anyhow::Result<()> {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = std::io::BufWriter::new(file);
        cpio.write_to(&mut out)?;
        let file = out.into_inner().context("flushing the archive")?;
        file.sync_all().context("syncing the archive")?;
        std::fs::rename(&tmp, output).with_context(|| format!("renaming to {}", output.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cpio = build(&cli)?;
    write_atomically(&cpio, &cli.output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_specs() {
        assert_eq!(
            parse_file_spec("a/b:/etc/b").expect("valid"),
            FileSpec {
                host: "a/b".into(),
                guest: "/etc/b".into(),
                mode: 0o644
            }
        );
        assert_eq!(parse_file_spec("x:/bin/x:755").expect("valid").mode, 0o755);
        for bad in ["x", "x:", ":y", "x:y:9", "x:y:644:1"] {
            assert!(parse_file_spec(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn symlink_specs() {
        assert_eq!(
            parse_symlink_spec("/bin/sh:busybox").expect("valid"),
            ("/bin/sh".to_owned(), "busybox".to_owned())
        );
        for bad in ["x", "x:", ":y", ""] {
            assert!(parse_symlink_spec(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn busybox_and_symlinks() {
        let dir = std::env::temp_dir().join(format!("husk-mkinitramfs-bb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let init = dir.join("agent");
        let busybox = dir.join("busybox");
        std::fs::write(&init, b"agent").expect("write init");
        std::fs::write(&busybox, b"busybox binary").expect("write busybox");
        let args = |extra: &[&std::ffi::OsStr]| {
            let mut v: Vec<&std::ffi::OsStr> = vec![
                "husk-mkinitramfs".as_ref(),
                "--output".as_ref(),
                "unused".as_ref(),
                "--init".as_ref(),
                init.as_os_str(),
                "--busybox".as_ref(),
                busybox.as_os_str(),
            ];
            v.extend_from_slice(extra);
            Cli::parse_from(v)
        };
        let cli = args(&["--symlink".as_ref(), "/sbin/init:/init".as_ref()]);
        let bytes = build(&cli).and_then(|c| Ok(c.to_bytes()?));
        let clash = build(&args(&["--symlink".as_ref(), "/bin/sh:/x".as_ref()])).map(drop);
        let _ = std::fs::remove_dir_all(&dir);
        let bytes = bytes.expect("valid");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("bin/busybox\0"));
        assert!(text.contains("busybox binary"));
        for applet in [
            "sh",
            "cat",
            "sleep",
            "sha256sum",
            "kill",
            "dd",
            "env",
            "uname",
        ] {
            assert!(BUSYBOX_APPLETS.contains(&applet), "{applet} missing");
            assert!(
                text.contains(&format!("bin/{applet}\0")),
                "/bin/{applet} missing"
            );
        }
        assert!(text.contains("usr/bin/env\0"));
        assert!(text.contains("sbin/init\0"));
        let dup = format!("{:#}", clash.expect_err("duplicate /bin/sh"));
        assert!(dup.contains("duplicate entry \"bin/sh\""), "{dup}");
    }

    #[test]
    fn default_layout() {
        let dir =
            std::env::temp_dir().join(format!("husk-mkinitramfs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let init = dir.join("agent");
        let extra = dir.join("extra");
        std::fs::write(&init, b"\x7fELF agent").expect("write init");
        std::fs::write(&extra, b"hello").expect("write extra");
        let output = dir.join("initramfs.cpio");
        let cli = Cli::parse_from([
            "husk-mkinitramfs".as_ref(),
            "--output".as_ref(),
            output.as_os_str(),
            "--init".as_ref(),
            init.as_os_str(),
            "--file".as_ref(),
            format!("{}:/etc/extra:600", extra.display()).as_ref(),
        ]);
        let cpio = build(&cli).expect("valid");
        write_atomically(&cpio, &cli.output).expect("writes");
        let first = std::fs::read(&output).expect("read archive");
        write_atomically(&build(&cli).expect("valid"), &cli.output).expect("writes");
        let second = std::fs::read(&output).expect("read archive");

        let dup = Cli::parse_from([
            "husk-mkinitramfs".as_ref(),
            "--output".as_ref(),
            output.as_os_str(),
            "--init".as_ref(),
            init.as_os_str(),
            "--file".as_ref(),
            format!("{}:/init", extra.display()).as_ref(),
        ]);
        let dup_err = build(&dup).map(drop).expect_err("duplicate /init");
        let _ = std::fs::remove_dir_all(&dir);

        assert_eq!(first, second, "not reproducible");
        let text = String::from_utf8_lossy(&first);
        for name in [
            "init",
            "dev",
            "dev/console",
            "proc",
            "sys",
            "run",
            "tmp",
            "root",
            "etc",
            "etc/extra",
        ] {
            assert!(text.contains(&format!("{name}\0")), "{name} missing");
        }
        assert!(text.contains("\x7fELF agent"));
        assert!(format!("{dup_err:#}").contains("duplicate entry \"init\""));
    }
}
