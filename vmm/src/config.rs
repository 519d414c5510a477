//! VM configuration and its validation. `main` parses the command line into a [`VmConfig`]
//! and validates it once; the rest of the VMM takes the result as given.

use std::path::PathBuf;

use crate::arch::x86_64::mptable::MAX_VCPUS;
use crate::devices::virtio::fs::{validate_tag, MAX_MAX_FDS, MIN_MAX_FDS, TAG_LEN};
use crate::devices::virtio::net::{validate_tap_name, MacAddr, MAX_MTU, MIN_MTU};
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

/// The VM's virtio-fs device: one host directory exported under a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The exported directory (the sandbox's `shared/`).
    pub shared_dir: PathBuf,
    /// The tag the guest mounts it by (`mount -t virtiofs <tag> <dir>`).
    pub tag: String,
    /// The most host descriptors the file system holds for the guest; `RLIMIT_NOFILE` is set
    /// to this plus the VMM's own reserve.
    pub max_fds: u32,
}

/// Where the virtio-net device's tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// A descriptor inherited from the parent, attached to a tap opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (the shim opens it in the Pod's network namespace).
    Fd(i32),
    /// A tap the VMM attaches to (or creates) by name in its own network namespace.
    Name(String),
}

/// The VM's virtio-net device: a tap and the guest NIC's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap.
    pub tap: TapSource,
    /// The guest NIC's MAC address (unicast).
    pub mac: MacAddr,
    /// The MTU the guest is told (68 to 65535); without it the guest assumes 1500 and the
    /// device offers no VIRTIO_NET_F_MTU.
    pub mtu: Option<u32>,
}

impl NetConfig {
    /// The device the command line's `--net-tap-fd`, `--net-tap`, `--net-mac` and `--net-mtu`
    /// describe, if any: exactly one tap source, and a MAC address with it.
    pub fn from_options(
        tap_fd: Option<i32>,
        tap_name: Option<String>,
        mac: Option<&str>,
        mtu: Option<u32>,
    ) -> Result<Option<Self>, ConfigError> {
        let tap = match (tap_fd, tap_name) {
            (Some(_), Some(_)) => return Err(ConfigError::NetTapTwice),
            (Some(fd), None) => TapSource::Fd(fd),
            (None, Some(name)) => TapSource::Name(name),
            (None, None) if mac.is_some() || mtu.is_some() => {
                return Err(ConfigError::NetWithoutTap)
            }
            (None, None) => return Ok(None),
        };
        let mac = mac.ok_or(ConfigError::NetMacMissing)?;
        let mac = mac
            .parse()
            .map_err(|_| ConfigError::NetMac(mac.to_string()))?;
        Ok(Some(Self { tap, mac, mtu }))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match &self.tap {
            TapSource::Fd(fd) if *fd < 3 => return Err(ConfigError::NetTapFdStdio(*fd)),
            TapSource::Fd(fd) => {
                // SAFETY: F_GETFD only reads the descriptor's flags; it touches no memory and
                // fails harmlessly on a number that is not open.
                if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                    return Err(ConfigError::NetTapFdClosed(*fd));
                }
            }
            TapSource::Name(name) => {
                if validate_tap_name(name).is_err() {
                    return Err(ConfigError::NetTapName(name.clone()));
                }
            }
        }
        if !self.mac.is_unicast() {
            return Err(ConfigError::NetMac(self.mac.to_string()));
        }
        match self.mtu {
            Some(mtu) if !(MIN_MTU..=MAX_MTU).contains(&mtu) => Err(ConfigError::NetMtu(mtu)),
            _ => Ok(()),
        }
    }
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
    /// The virtio-fs device, if any.
    pub fs: Option<FsConfig>,
    /// The virtio-net device, if any.
    pub net: Option<NetConfig>,
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
            fs: None,
            net: None,
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
        if let Some(fs) = &self.fs {
            fs.validate()?;
        }
        if let Some(net) = &self.net {
            net.validate()?;
        }
        Ok(())
    }
}

impl FsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.shared_dir.is_dir() {
            return Err(ConfigError::FsShare(self.shared_dir.clone()));
        }
        if validate_tag(&self.tag).is_err() {
            return Err(ConfigError::FsTag(self.tag.clone()));
        }
        if !(MIN_MAX_FDS..=MAX_MAX_FDS).contains(&self.max_fds) {
            return Err(ConfigError::FsMaxFds(self.max_fds));
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
    /// The virtio-fs share is not a directory.
    #[error("virtio-fs share {0:?} does not exist or is not a directory")]
    FsShare(PathBuf),
    /// The virtio-fs tag is unusable.
    #[error(
        "virtio-fs tag must be 1 to {TAG_LEN} printable ASCII characters without spaces, got {0:?}"
    )]
    FsTag(String),
    /// The virtio-fs descriptor budget is out of range.
    #[error("virtio-fs descriptor limit must be between {MIN_MAX_FDS} and {MAX_MAX_FDS}, got {0}")]
    FsMaxFds(u32),
    /// Both tap sources were given.
    #[error("--net-tap and --net-tap-fd are mutually exclusive")]
    NetTapTwice,
    /// Network options without a tap.
    #[error("--net-mac and --net-mtu need --net-tap or --net-tap-fd")]
    NetWithoutTap,
    /// A tap without a MAC address.
    #[error("--net-mac is required with --net-tap or --net-tap-fd")]
    NetMacMissing,
    /// The MAC address is malformed or not unicast.
    #[error("--net-mac must be a unicast MAC address like 02:00:00:00:00:01, got {0:?}")]
    NetMac(String),
    /// The MTU is out of range.
    #[error("--net-mtu must be between {MIN_MTU} and {MAX_MTU}, got {0}")]
    NetMtu(u32),
    /// The tap name cannot be an interface name.
    #[error(
        "--net-tap must be an interface name of 1 to 15 characters without '/', ':' or spaces, \
         got {0:?}"
    )]
    NetTapName(String),
    /// The tap descriptor is one of stdin, stdout, stderr.
    #[error("--net-tap-fd must be 3 or more (0, 1 and 2 are stdio), got {0}")]
    NetTapFdStdio(i32),
    /// The tap descriptor is not open.
    #[error("--net-tap-fd {0} is not an open file descriptor")]
    NetTapFdClosed(i32),
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
    fn fs_bounds() {
        let with = |dir: &str, tag: &str, max_fds| VmConfig {
            fs: Some(FsConfig {
                shared_dir: dir.into(),
                tag: tag.into(),
                max_fds,
            }),
            ..valid()
        };
        assert_eq!(with("/tmp", "husk", 64).validate(), Ok(()));
        assert_eq!(
            with("/", &"t".repeat(TAG_LEN), MAX_MAX_FDS).validate(),
            Ok(())
        );
        assert_eq!(
            with("/nonexistent/share", "husk", 64).validate(),
            Err(ConfigError::FsShare("/nonexistent/share".into()))
        );
        assert_eq!(
            with("/proc/self/exe", "husk", 64).validate(),
            Err(ConfigError::FsShare("/proc/self/exe".into()))
        );
        for tag in [
            "",
            "has space",
            "tab\t",
            "\u{e9}t\u{e9}",
            &"t".repeat(TAG_LEN + 1),
        ] {
            assert_eq!(
                with("/tmp", tag, 64).validate(),
                Err(ConfigError::FsTag(tag.into())),
                "{tag:?}"
            );
        }
        assert_eq!(
            with("/tmp", "husk", MIN_MAX_FDS - 1).validate(),
            Err(ConfigError::FsMaxFds(MIN_MAX_FDS - 1))
        );
        assert_eq!(
            with("/tmp", "husk", MAX_MAX_FDS + 1).validate(),
            Err(ConfigError::FsMaxFds(MAX_MAX_FDS + 1))
        );
    }

    #[test]
    fn net_options() {
        let mac = Some("02:00:00:00:00:01");
        let from = NetConfig::from_options;
        assert_eq!(from(None, None, None, None), Ok(None));
        assert_eq!(
            from(Some(3), Some("tap0".into()), mac, None),
            Err(ConfigError::NetTapTwice)
        );
        assert_eq!(from(None, None, mac, None), Err(ConfigError::NetWithoutTap));
        assert_eq!(
            from(None, None, None, Some(1500)),
            Err(ConfigError::NetWithoutTap)
        );
        assert_eq!(
            from(None, Some("tap0".into()), None, None),
            Err(ConfigError::NetMacMissing)
        );
        assert_eq!(
            from(Some(3), None, Some("02:00:00:00:00"), None),
            Err(ConfigError::NetMac("02:00:00:00:00".into()))
        );
        assert_eq!(
            from(None, Some("tap0".into()), mac, Some(1400)),
            Ok(Some(NetConfig {
                tap: TapSource::Name("tap0".into()),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                mtu: Some(1400),
            }))
        );
    }

    #[test]
    fn net_bounds() {
        let with = |tap: TapSource, mac: &str, mtu| VmConfig {
            net: Some(NetConfig {
                tap,
                mac: mac.parse().unwrap(),
                mtu,
            }),
            ..valid()
        };
        let name = |n: &str| TapSource::Name(n.into());
        let unicast = "02:00:00:00:00:01";
        assert_eq!(with(name("tap0"), unicast, None).validate(), Ok(()));
        assert_eq!(with(name("tap0"), unicast, Some(68)).validate(), Ok(()));
        assert_eq!(with(name("tap0"), unicast, Some(65535)).validate(), Ok(()));
        for mtu in [0, 67, 65536] {
            assert_eq!(
                with(name("tap0"), unicast, Some(mtu)).validate(),
                Err(ConfigError::NetMtu(mtu))
            );
        }
        for mac in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            assert_eq!(
                with(name("tap0"), mac, None).validate(),
                Err(ConfigError::NetMac(mac.into()))
            );
        }
        for bad in ["", "a/b", "x:1", "with space", "0123456789abcdef"] {
            assert_eq!(
                with(name(bad), unicast, None).validate(),
                Err(ConfigError::NetTapName(bad.into()))
            );
        }
        for fd in [-1, 0, 2] {
            assert_eq!(
                with(TapSource::Fd(fd), unicast, None).validate(),
                Err(ConfigError::NetTapFdStdio(fd))
            );
        }
        assert_eq!(
            with(TapSource::Fd(1_000_000), unicast, None).validate(),
            Err(ConfigError::NetTapFdClosed(1_000_000))
        );
        let open = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&open);
        assert_eq!(with(TapSource::Fd(fd), unicast, None).validate(), Ok(()));
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
