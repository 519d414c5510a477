//! What the guest reports about itself: the readiness line.
//!
//! Once PID 1 has set the guest up it prints exactly one line to stdout (the
//! serial console), which the host side waits for:
//!
//! ```text
//! HUSK-READY {"kernel_release":"6.1.0-husk","uptime_ms":1234,"vcpus":2,"ram_kib":261756,"mem_total_kib":230000,"agent_version":"0.1.0"}
//! ```
//!
//! `vcpus` and `ram_kib` are `null` when the guest cannot tell (an error is
//! logged then).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error;

/// The marker that starts the readiness line.
pub const READY_PREFIX: &str = "HUSK-READY ";

/// Where the kernel lists the online CPUs.
pub const CPU_ONLINE_PATH: &str = "/sys/devices/system/cpu/online";

/// Where the kernel shows the firmware (e820) memory map.
pub const MEMMAP_PATH: &str = "/sys/firmware/memmap";

/// The body of the readiness line. Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// uname(2) release.
    pub kernel_release: String,
    /// Time since boot (CLOCK_BOOTTIME), in milliseconds.
    pub uptime_ms: u64,
    /// Online CPUs.
    pub vcpus: Option<u32>,
    /// RAM the VMM's e820 map gave the guest, in KiB.
    pub ram_kib: Option<u64>,
    /// MemTotal from sysinfo(2), in KiB.
    pub mem_total_kib: u64,
    /// This agent's version.
    pub agent_version: &'static str,
}

impl Readiness {
    /// The readiness line, without its newline.
    pub fn line(&self) -> Result<String, serde_json::Error> {
        Ok(format!("{READY_PREFIX}{}", serde_json::to_string(self)?))
    }
}

/// Reading what the guest knows about itself failed.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bad CPU list {0:?}")]
    CpuList(String),
    #[error("bad value {value:?} in {path}")]
    Memmap { path: PathBuf, value: String },
    #[error("{0} failed")]
    Syscall(&'static str, #[source] io::Error),
}

fn read(path: &Path) -> Result<String, InfoError> {
    fs::read_to_string(path).map_err(|source| InfoError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Counts the CPUs in a kernel CPU list such as `0-1`, `0,2-3` or `5`.
pub fn parse_cpu_list(list: &str) -> Result<u32, InfoError> {
    let bad = || InfoError::CpuList(list.to_owned());
    let list = list.trim();
    if list.is_empty() {
        return Err(bad());
    }
    let mut count: u32 = 0;
    for part in list.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let first: u32 = first.parse().map_err(|_| bad())?;
        let last: u32 = last.parse().map_err(|_| bad())?;
        if last < first {
            return Err(bad());
        }
        count = count.checked_add(last - first + 1).ok_or_else(bad)?;
    }
    Ok(count)
}

/// The number of online CPUs, from `path` (normally [`CPU_ONLINE_PATH`]).
pub fn online_cpus(path: &Path) -> Result<u32, InfoError> {
    parse_cpu_list(&read(path)?)
}

fn parse_hex(path: &Path, text: &str) -> Result<u64, InfoError> {
    let value = text.trim();
    value
        .strip_prefix("0x")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| InfoError::Memmap {
            path: path.to_path_buf(),
            value: value.to_owned(),
        })
}

/// Sums the `System RAM` ranges of a firmware memory map directory (normally
/// [`MEMMAP_PATH`]), whose entries each hold `start`, `end` (inclusive) and
/// `type`. Returns KiB.
pub fn system_ram_kib(dir: &Path) -> Result<u64, InfoError> {
    let read_err = |source| InfoError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut bytes: u64 = 0;
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?.path();
        if read(&entry.join("type"))?.trim() != "System RAM" {
            continue;
        }
        let start_path = entry.join("start");
        let end_path = entry.join("end");
        let start = parse_hex(&start_path, &read(&start_path)?)?;
        let end = parse_hex(&end_path, &read(&end_path)?)?;
        let len = end
            .checked_sub(start)
            .and_then(|d| d.checked_add(1))
            .ok_or_else(|| InfoError::Memmap {
                path: end_path.clone(),
                value: format!("{end:#x} < start {start:#x}"),
            })?;
        bytes = bytes.saturating_add(len);
    }
    Ok(bytes / 1024)
}

/// uname(2) release.
pub fn kernel_release() -> Result<String, InfoError> {
    // SAFETY: utsname is plain old data; all-zero bytes are a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname that outlives the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(InfoError::Syscall("uname", io::Error::last_os_error()));
    }
    // The kernel NUL-terminates the field; take up to the first NUL, or the
    // whole field if there is none.
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Milliseconds since boot, suspend included (CLOCK_BOOTTIME).
pub fn uptime_ms() -> Result<u64, InfoError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec that outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Err(InfoError::Syscall(
            "clock_gettime",
            io::Error::last_os_error(),
        ));
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(secs.saturating_mul(1000).saturating_add(nanos / 1_000_000))
}

/// MemTotal as sysinfo(2) reports it, in KiB.
pub fn mem_total_kib() -> Result<u64, InfoError> {
    // SAFETY: sysinfo is plain old data; all-zero bytes are a valid value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: info is a valid, writable sysinfo that outlives the call.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return Err(InfoError::Syscall("sysinfo", io::Error::last_os_error()));
    }
    let unit = u64::from(info.mem_unit.max(1));
    Ok(info.totalram.saturating_mul(unit) / 1024)
}

/// Gathers the readiness report. Fields the guest cannot tell are logged as
/// errors and reported as `null`; failures of the basic system calls are
/// returned.
pub fn collect() -> Result<Readiness, InfoError> {
    let vcpus = online_cpus(Path::new(CPU_ONLINE_PATH))
        .map_err(|e| error!("vcpus: {}", crate::chain(&e)))
        .ok();
    let ram_kib = system_ram_kib(Path::new(MEMMAP_PATH))
        .map_err(|e| error!("ram_kib: {}", crate::chain(&e)))
        .ok();
    Ok(Readiness {
        kernel_release: kernel_release()?,
        uptime_ms: uptime_ms()?,
        vcpus,
        ram_kib,
        mem_total_kib: mem_total_kib()?,
        agent_version: env!("CARGO_PKG_VERSION"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "husk-agent-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn add_range(dir: &Path, index: u32, start: u64, end: u64, kind: &str) {
        let entry = dir.join(index.to_string());
        fs::create_dir(&entry).expect("create entry");
        fs::write(entry.join("start"), format!("{start:#x}\n")).expect("write start");
        fs::write(entry.join("end"), format!("{end:#x}\n")).expect("write end");
        fs::write(entry.join("type"), format!("{kind}\n")).expect("write type");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n").expect("valid"), 1);
        assert_eq!(parse_cpu_list("0-1\n").expect("valid"), 2);
        assert_eq!(parse_cpu_list("0,2-3").expect("valid"), 3);
        assert_eq!(parse_cpu_list("0-3,8-11,15").expect("valid"), 9);
        assert_eq!(parse_cpu_list("7").expect("valid"), 1);
    }

    #[test]
    fn bad_cpu_lists() {
        for bad in ["", "\n", "a", "0-", "-1", "3-1", "0,,1", "0-1-2", "1, 2"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn online_cpus_reads_a_file() {
        let dir = TempDir::new();
        let path = dir.0.join("online");
        fs::write(&path, "0-1\n").expect("write");
        assert_eq!(online_cpus(&path).expect("valid"), 2);
        assert!(matches!(
            online_cpus(&dir.0.join("missing")),
            Err(InfoError::Read { .. })
        ));
    }

    #[test]
    fn memmap_sums_system_ram_only() {
        // What husk-vmm's e820 map looks like for a 256 MiB guest: low memory
        // up to the legacy hole, then from 1 MiB to the end.
        let dir = TempDir::new();
        add_range(&dir.0, 0, 0, 0x9_fbff, "System RAM");
        add_range(&dir.0, 1, 0x9_fc00, 0x9_ffff, "Reserved");
        add_range(&dir.0, 2, 0x10_0000, 0xfff_ffff, "System RAM");
        add_range(&dir.0, 3, 0xf_0000, 0xf_ffff, "Reserved");
        let kib = system_ram_kib(&dir.0).expect("valid memmap");
        assert_eq!(kib, 639 + 255 * 1024);
        let configured_kib = 256 * 1024;
        assert!(configured_kib - 1024 < kib && kib <= configured_kib);
    }

    #[test]
    fn memmap_errors() {
        let dir = TempDir::new();
        assert!(matches!(
            system_ram_kib(&dir.0.join("missing")),
            Err(InfoError::Read { .. })
        ));
        add_range(&dir.0, 0, 0x1000, 0xfff, "System RAM");
        assert!(matches!(
            system_ram_kib(&dir.0),
            Err(InfoError::Memmap { .. })
        ));

        let dir = TempDir::new();
        let entry = dir.0.join("0");
        fs::create_dir(&entry).expect("create entry");
        fs::write(entry.join("type"), "System RAM\n").expect("write type");
        fs::write(entry.join("start"), "1000\n").expect("write start");
        fs::write(entry.join("end"), "0x1fff\n").expect("write end");
        assert!(matches!(
            system_ram_kib(&dir.0),
            Err(InfoError::Memmap { .. })
        ));
    }

    #[test]
    fn empty_memmap_is_zero() {
        let dir = TempDir::new();
        assert_eq!(system_ram_kib(&dir.0).expect("empty is valid"), 0);
    }

    #[test]
    fn readiness_line_shape() {
        let r = Readiness {
            kernel_release: "6.1.0-husk".into(),
            uptime_ms: 1234,
            vcpus: Some(2),
            ram_kib: Some(261_756),
            mem_total_kib: 230_000,
            agent_version: "0.1.0",
        };
        assert_eq!(
            r.line().expect("serialisable"),
            r#"HUSK-READY {"kernel_release":"6.1.0-husk","uptime_ms":1234,"vcpus":2,"ram_kib":261756,"mem_total_kib":230000,"agent_version":"0.1.0"}"#
        );
    }

    #[test]
    fn readiness_line_with_unknowns_is_null() {
        let r = Readiness {
            kernel_release: "6.1.0-husk".into(),
            uptime_ms: 5,
            vcpus: None,
            ram_kib: None,
            mem_total_kib: 1,
            agent_version: "0.1.0",
        };
        let line = r.line().expect("serialisable");
        assert!(!line.contains('\n'));
        let json: serde_json::Value =
            serde_json::from_str(line.strip_prefix(READY_PREFIX).expect("prefix")).expect("json");
        assert!(json["vcpus"].is_null());
        assert!(json["ram_kib"].is_null());
        assert_eq!(json["uptime_ms"], 5);
    }

    #[test]
    fn host_values_are_sane() {
        assert!(!kernel_release().expect("uname").is_empty());
        assert!(uptime_ms().expect("clock") > 0);
        assert!(mem_total_kib().expect("sysinfo") > 0);
    }
}
