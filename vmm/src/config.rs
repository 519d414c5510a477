//! VM configuration and its validation. `main` parses the command line into a [`VmConfig`]
//! and validates it once; the rest of the VMM takes the result as given.

use std::path::PathBuf;

use crate::arch::x86_64::mptable::MAX_VCPUS;
use crate::devices::virtio::vsock::MIN_GUEST_CID;

/// Least guest memory husk boots with: vmlinux is linked at 16 MiB and takes ~30 MiB.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Most guest memory accepted (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// Default KVM device.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// The VMM's standard output.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Nowhere.
    Null,
}

impl std::str::FromStr for ConsoleOutput {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(ConsoleOutput::Stdout),
            "none" | "null" => Ok(ConsoleOutput::Null),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(ConsoleOutput::File(path.into())),
                _ => Err(ConfigError::Console(s.to_string())),
            },
        }
    }
}

/// The VM's virtio-vsock device, served over a Unix socket on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// Host socket: clients connect here and write `CONNECT <port>`; guest connections to
    /// host port P reach `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Everything needed to build and boot one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Path of the guest `vmlinux` (ELF).
    pub kernel: PathBuf,
    /// Path of the initramfs (newc cpio), if any.
    pub initramfs: Option<PathBuf>,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Serial console destination.
    pub console: ConsoleOutput,
    /// Extra kernel parameters, appended after husk's defaults.
    pub kernel_params: Vec<String>,
    /// Arguments for the guest's init (after `--` on the kernel command line).
    pub init_args: Vec<String>,
    /// The KVM device node.
    pub kvm_device: PathBuf,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
}

impl VmConfig {
    /// A configuration with husk's defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initramfs: None,
            vcpus: 1,
            memory_mib: 128,
            console: ConsoleOutput::Stdout,
            kernel_params: Vec::new(),
            init_args: Vec::new(),
            kvm_device: DEFAULT_KVM_DEVICE.into(),
            vsock: None,
        }
    }

    /// Guest memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// Checks what can be checked before touching KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(initramfs) = &self.initramfs {
            if !initramfs.is_file() {
                return Err(ConfigError::InitramfsMissing(initramfs.clone()));
            }
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::TooLittleMemory(self.memory_mib));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::TooMuchMemory(self.memory_mib));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < MIN_GUEST_CID || vsock.guest_cid >= u64::from(u32::MAX) {
                return Err(ConfigError::GuestCid(vsock.guest_cid));
            }
            let parent_ok = vsock
                .uds_path
                .parent()
                .is_some_and(|p| p.as_os_str().is_empty() || p.is_dir());
            if !parent_ok {
                return Err(ConfigError::VsockDir(vsock.uds_path.clone()));
            }
        }
        Ok(())
    }
}

/// An invalid configuration. Each message is one line a user can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The kernel path is not a file.
    #[error("kernel image {0:?} does not exist or is not a file")]
    KernelMissing(PathBuf),
    /// The initramfs path is not a file.
    #[error("initramfs {0:?} does not exist or is not a file")]
    InitramfsMissing(PathBuf),
    /// vCPU count out of range.
    #[error("vCPU count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u8),
    /// Memory below the minimum.
    #[error("guest memory must be at least {MIN_MEMORY_MIB} MiB, got {0} MiB")]
    TooLittleMemory(u32),
    /// Memory above the maximum.
    #[error("guest memory must be at most {MAX_MEMORY_MIB} MiB, got {0} MiB")]
    TooMuchMemory(u32),
    /// vsock guest CID out of range.
    #[error("vsock guest CID must be between {MIN_GUEST_CID} and 4294967294, got {0}")]
    GuestCid(u64),
    /// The vsock socket's directory does not exist.
    #[error("the directory of the vsock socket {0:?} does not exist")]
    VsockDir(PathBuf),
    /// Unknown console destination.
    #[error("console must be stdout, none or file:PATH, got {0:?}")]
    Console(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> VmConfig {
        // Any existing file will do as a kernel for validation.
        VmConfig::new("/proc/self/exe")
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(valid().validate(), Ok(()));
        assert_eq!(valid().memory_bytes(), 128 << 20);
    }

    #[test]
    fn missing_files_are_reported() {
        let mut c = valid();
        c.kernel = "/nonexistent/vmlinux".into();
        assert_eq!(
            c.validate(),
            Err(ConfigError::KernelMissing("/nonexistent/vmlinux".into()))
        );
        let mut c = valid();
        c.kernel = "/".into();
        assert!(matches!(c.validate(), Err(ConfigError::KernelMissing(_))));
        let mut c = valid();
        c.initramfs = Some("/nonexistent/initramfs".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InitramfsMissing(_))
        ));
    }

    #[test]
    fn vcpu_and_memory_bounds() {
        let with = |vcpus, mib| VmConfig {
            vcpus,
            memory_mib: mib,
            ..valid()
        };
        assert_eq!(with(0, 128).validate(), Err(ConfigError::VcpuCount(0)));
        assert_eq!(with(33, 128).validate(), Err(ConfigError::VcpuCount(33)));
        assert_eq!(with(32, 128).validate(), Ok(()));
        assert_eq!(
            with(1, 63).validate(),
            Err(ConfigError::TooLittleMemory(63))
        );
        assert_eq!(with(1, 64).validate(), Ok(()));
        assert_eq!(
            with(1, MAX_MEMORY_MIB + 1).validate(),
            Err(ConfigError::TooMuchMemory(MAX_MEMORY_MIB + 1))
        );
        assert!(with(0, 1)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("between 1 and 32"));
    }

    #[test]
    fn vsock_bounds() {
        let with = |guest_cid, uds: &str| VmConfig {
            vsock: Some(VsockConfig {
                guest_cid,
                uds_path: uds.into(),
            }),
            ..valid()
        };
        assert_eq!(with(3, "/tmp/v.sock").validate(), Ok(()));
        assert_eq!(
            with(2, "/tmp/v.sock").validate(),
            Err(ConfigError::GuestCid(2))
        );
        assert_eq!(
            with(u64::from(u32::MAX), "/tmp/v.sock").validate(),
            Err(ConfigError::GuestCid(u64::from(u32::MAX)))
        );
        assert_eq!(
            with(3, "/nonexistent/dir/v.sock").validate(),
            Err(ConfigError::VsockDir("/nonexistent/dir/v.sock".into()))
        );
    }

    #[test]
    fn console_parsing() {
        assert_eq!("stdout".parse(), Ok(ConsoleOutput::Stdout));
        assert_eq!("none".parse(), Ok(ConsoleOutput::Null));
        assert_eq!(
            "file:/tmp/c.log".parse(),
            Ok(ConsoleOutput::File("/tmp/c.log".into()))
        );
        assert!("file:".parse::<ConsoleOutput>().is_err());
        assert!("tty".parse::<ConsoleOutput>().is_err());
    }
}
