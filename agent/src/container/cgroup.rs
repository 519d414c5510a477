//! A container's cgroup v2 directory: statistics, freezing, resource updates,
//! its processes, and OOM kills.
//!
//! Every container lives in its own cgroup, `/sys/fs/cgroup/husk/<id>`
//! (libcontainer creates it from the spec's `cgroupsPath`, which the agent
//! sets). Reading is done here from the flat files, with the root as a
//! parameter so that unit tests use a temporary directory; resource updates
//! go through libcgroups, which knows the OCI-to-cgroup v2 conversions.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_proto::pb;
use libcgroups::common::{CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;

/// Where cgroup2 is mounted in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The parent cgroup of every container, relative to the root.
pub const PARENT: &str = "husk";

/// How long freezing may take before it is reported as failed.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors on a container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {0} did not reach the freezer state in time")]
    FreezeTimeout(PathBuf),
    #[error("applying resources: {0}")]
    Apply(String),
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    root: PathBuf,
    /// Relative to `root`, e.g. `husk/c1`.
    relative: PathBuf,
}

/// The `cgroupsPath` a container's spec gets (absolute within the hierarchy).
pub fn spec_path(container_id: &str) -> String {
    format!("/{PARENT}/{container_id}")
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses "key value" lines; unparsable lines are skipped.
fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

/// A single number, or 0 for "max".
fn single(text: &str) -> u64 {
    let t = text.trim();
    if t == "max" {
        0
    } else {
        t.parse().unwrap_or(0)
    }
}

/// Sums `rbytes` and `wbytes` over the devices of io.stat.
fn io_bytes(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            r = r.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            w = w.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (r, w)
}

impl Cgroup {
    /// The cgroup of `container_id` under the guest's cgroup2 mount.
    pub fn of(container_id: &str) -> Cgroup {
        Cgroup::with_root(CGROUP_ROOT.as_ref(), container_id)
    }

    /// The cgroup of `container_id` under `root` (tests).
    pub fn with_root(root: &Path, container_id: &str) -> Cgroup {
        Cgroup {
            root: root.to_owned(),
            relative: Path::new(PARENT).join(container_id),
        }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.relative)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// A file's text, or "" if the controller is not enabled here.
    fn optional(&self, name: &str) -> Result<String, CgroupError> {
        match read(&self.file(name)) {
            Err(CgroupError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(String::new())
            }
            other => other,
        }
    }

    /// Statistics in the agent API's terms.
    pub fn stats(&self) -> Result<pb::ContainerStats, CgroupError> {
        let cpu = self.optional("cpu.stat")?;
        let cpu = flat_keyed(&cpu);
        let memory_stat = self.optional("memory.stat")?;
        let memory_stat = flat_keyed(&memory_stat);
        let usage = single(&self.optional("memory.current")?);
        let inactive_file = memory_stat.get("inactive_file").copied().unwrap_or(0);
        let (io_read_bytes, io_write_bytes) = io_bytes(&self.optional("io.stat")?);
        let us = |k: &str| cpu.get(k).copied().unwrap_or(0).saturating_mul(1000);
        Ok(pb::ContainerStats {
            cpu_usage_ns: us("usage_usec"),
            cpu_user_ns: us("user_usec"),
            cpu_system_ns: us("system_usec"),
            memory_usage_bytes: usage,
            memory_limit_bytes: single(&self.optional("memory.max")?),
            memory_working_set_bytes: usage.saturating_sub(inactive_file),
            pids: single(&self.optional("pids.current")?),
            oom_kills: self.oom_kills()?,
            pids_limit: single(&self.optional("pids.max")?),
            io_read_bytes,
            io_write_bytes,
            frozen: self.frozen()?,
        })
    }

    /// memory.events `oom_kill`: processes the OOM killer killed here.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let events = self.optional("memory.events")?;
        Ok(flat_keyed(&events).get("oom_kill").copied().unwrap_or(0))
    }

    /// cgroup.events `frozen`.
    pub fn frozen(&self) -> Result<bool, CgroupError> {
        let events = self.optional("cgroup.events")?;
        Ok(flat_keyed(&events).get("frozen") == Some(&1))
    }

    /// The pids in the cgroup (cgroup.procs), ascending.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids: Vec<u32> = read(&self.file("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    fn write(&self, name: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.file(name);
        std::fs::write(&path, value).map_err(|source| CgroupError::Write { path, source })
    }

    /// Freezes (`true`) or thaws every process, and waits until the kernel
    /// reports the new state.
    pub async fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })?;
        let start = Instant::now();
        while self.frozen()? != frozen {
            if start.elapsed() > FREEZE_TIMEOUT {
                return Err(CgroupError::FreezeTimeout(self.path()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// SIGKILLs every process in the cgroup (cgroup.kill).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        self.write("cgroup.kill", "1")
    }

    /// Applies OCI resources (UpdateContainer).
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let manager =
            libcgroups::v2::manager::Manager::new(self.root.clone(), self.relative.clone())
                .map_err(|e| CgroupError::Apply(e.to_string()))?;
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        manager
            .apply(&opt)
            .map_err(|e| CgroupError::Apply(crate::chain(&e)))
    }

    /// Removes the (empty) cgroup directory; a missing one is fine. Retries
    /// EBUSY briefly: the kernel lets go of exited tasks asynchronously.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(self.path()) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(CgroupError::Write {
                        path: self.path(),
                        source: e,
                    })
                }
                _ => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(files: &[(&str, &str)]) -> (tempdir::Dir, Cgroup) {
        let dir = tempdir::Dir::new();
        let cg = Cgroup::with_root(dir.path(), "c1");
        std::fs::create_dir_all(cg.path()).unwrap();
        for (name, text) in files {
            std::fs::write(cg.path().join(name), text).unwrap();
        }
        (dir, cg)
    }

    /// A temporary directory removed on drop (no extra dev-dependency).
    mod tempdir {
        use std::path::{Path, PathBuf};
        pub struct Dir(PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "husk-cgroup-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn stats_read_the_v2_files() {
        let (_d, cg) = fake(&[
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n",
            ),
            ("memory.current", "10485760\n"),
            ("memory.max", "33554432\n"),
            (
                "memory.stat",
                "anon 100\ninactive_file 4096\nactive_file 0\n",
            ),
            ("memory.events", "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n"),
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
            (
                "io.stat",
                "254:0 rbytes=100 wbytes=200 rios=1 wios=2\n254:16 rbytes=1 wbytes=2\n",
            ),
            ("cgroup.events", "populated 1\nfrozen 0\n"),
        ]);
        let s = cg.stats().unwrap();
        assert_eq!(s.cpu_usage_ns, 1_500_000);
        assert_eq!(s.cpu_user_ns, 1_000_000);
        assert_eq!(s.cpu_system_ns, 500_000);
        assert_eq!(s.memory_usage_bytes, 10 << 20);
        assert_eq!(s.memory_limit_bytes, 32 << 20);
        assert_eq!(s.memory_working_set_bytes, (10 << 20) - 4096);
        assert_eq!(s.pids, 3);
        assert_eq!(s.pids_limit, 0, "max means unlimited");
        assert_eq!(s.oom_kills, 1);
        assert_eq!((s.io_read_bytes, s.io_write_bytes), (101, 202));
        assert!(!s.frozen);
    }

    #[test]
    fn missing_controllers_read_as_zero() {
        let (_d, cg) = fake(&[("cgroup.events", "populated 0\nfrozen 1\n")]);
        let s = cg.stats().unwrap();
        assert_eq!(s.cpu_usage_ns, 0);
        assert_eq!(s.memory_limit_bytes, 0);
        assert!(s.frozen);
    }

    #[test]
    fn pids_are_sorted_and_garbage_skipped() {
        let (_d, cg) = fake(&[("cgroup.procs", "30\n4\nx\n17\n")]);
        assert_eq!(cg.pids().unwrap(), vec![4, 17, 30]);
    }

    #[test]
    fn a_missing_cgroup_is_an_error_for_pids_and_fine_for_remove() {
        let dir = tempdir::Dir::new();
        let cg = Cgroup::with_root(dir.path(), "gone");
        assert!(matches!(cg.pids(), Err(CgroupError::Read { .. })));
        cg.remove().unwrap();
    }

    #[test]
    fn spec_path_is_under_the_parent() {
        assert_eq!(spec_path("c1"), "/husk/c1");
        assert_eq!(
            Cgroup::with_root("/sys/fs/cgroup".as_ref(), "c1").path(),
            Path::new("/sys/fs/cgroup/husk/c1")
        );
    }
}
