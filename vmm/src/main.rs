//! `husk-vmm`: boot one VM and exit with a status that says how the guest ended.
//!
//! Exit status: 0 guest powered off, 1 VMM error (configuration, KVM, setup), 2 guest reset
//! (reboot or kernel panic), 3 triple fault, 4 other vCPU failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::config::{ConsoleOutput, FsConfig, NetConfig, VmConfig, VsockConfig, DEFAULT_KVM_DEVICE};
use vmm::devices::virtio::fs::{DEFAULT_MAX_FDS, DEFAULT_TAG};
use vmm::vm::Vm;

/// Boot a husk guest under KVM.
#[derive(Parser, Debug)]
#[command(name = "husk-vmm", version)]
struct Args {
    /// Guest kernel (vmlinux ELF).
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (newc cpio) whose /init is the guest agent.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Number of vCPUs (1-32).
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long = "memory", value_name = "MIB", default_value_t = 128)]
    memory_mib: u32,
    /// Serial console destination: stdout, none, or file:PATH.
    #[arg(long, default_value = "stdout")]
    console: String,
    /// Extra kernel parameters (space separated), after husk's defaults.
    #[arg(long = "cmdline", value_name = "PARAMS")]
    kernel_params: Option<String>,
    /// An argument for the guest's init (repeatable), passed after `--` on the command line.
    #[arg(long = "init-arg", value_name = "ARG", allow_hyphen_values = true)]
    init_args: Vec<String>,
    /// KVM device node.
    #[arg(long, default_value = DEFAULT_KVM_DEVICE)]
    kvm_device: PathBuf,
    /// Add a virtio-vsock device served on this Unix socket (hybrid vsock: write
    /// `CONNECT <port>`; guest connections to host port P go to `<PATH>_P`).
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock context id.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u64,
    /// Add a virtio-fs device exporting this host directory (the guest mounts it with
    /// `mount -t virtiofs TAG DIR`).
    #[arg(long, value_name = "DIR")]
    fs_share: Option<PathBuf>,
    /// The virtio-fs tag (1 to 36 characters).
    #[arg(long, value_name = "TAG", default_value = DEFAULT_TAG, requires = "fs_share")]
    fs_tag: String,
    /// The most host file descriptors virtio-fs holds for the guest (inodes it has looked up
    /// plus files it has open); RLIMIT_NOFILE is set to this plus the VMM's reserve.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FDS, requires = "fs_share")]
    fs_max_fds: u32,
    /// Add a virtio-net device on this tap descriptor, inherited from the parent and opened
    /// with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (the VMM sets the vnet header size, offloads
    /// and non-blocking mode itself).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    net_tap_fd: Option<i32>,
    /// Add a virtio-net device on the tap NAME in the VMM's network namespace, created if
    /// there is none (then it goes away with the VMM).
    #[arg(long, value_name = "NAME")]
    net_tap: Option<String>,
    /// The guest NIC's MAC address, aa:bb:cc:dd:ee:ff (required with a tap; unicast).
    #[arg(long, value_name = "MAC")]
    net_mac: Option<String>,
    /// The MTU the guest NIC is told (68-65535; default: none, the guest uses 1500).
    #[arg(long, value_name = "N")]
    net_mtu: Option<u32>,
    /// Log level of the VMM itself (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

fn config_from(args: Args) -> anyhow::Result<VmConfig> {
    let console: ConsoleOutput = args.console.parse()?;
    let net = NetConfig::from_options(
        args.net_tap_fd,
        args.net_tap,
        args.net_mac.as_deref(),
        args.net_mtu,
    )?;
    let config = VmConfig {
        kernel: args.kernel,
        initramfs: args.initramfs,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        console,
        kernel_params: args
            .kernel_params
            .map(|p| p.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        init_args: args.init_args,
        kvm_device: args.kvm_device,
        vsock: args.vsock_uds.map(|uds_path| VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        }),
        fs: args.fs_share.map(|shared_dir| FsConfig {
            shared_dir,
            tag: args.fs_tag,
            max_fds: args.fs_max_fds,
        }),
        net,
    };
    config.validate()?;
    Ok(config)
}

/// The log filter for `level`. fuse-backend-rs and virtio-queue log (through the `log` crate)
/// at error level on guest-triggered failures, which a guest could use to flood the host's
/// logs: they stay silent unless named in `level` (e.g. `warn,fuse_backend_rs=debug`); the
/// devices count those events instead.
fn log_filter(level: &str) -> String {
    let mut filter = level.to_string();
    for target in ["fuse_backend_rs", "virtio_queue"] {
        if !level.contains(target) {
            filter.push_str(&format!(",{target}=off"));
        }
    }
    filter
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // The log is usually a file (the shim's vmm.log): colour codes only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(log_filter(&args.log_level))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let result = config_from(args).and_then(|config| {
        let vm = Vm::build(&config)?;
        tracing::info!(cmdline = %vm.cmdline, "booting");
        Ok(vm.run()?)
    });
    match result {
        Ok(exit) => {
            eprintln!("husk-vmm: {exit}");
            // vCPU threads may still sit in KVM_RUN: end the process rather than join them.
            std::process::exit(exit.exit_code());
        }
        Err(e) => {
            eprintln!("husk-vmm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn guest_driven_library_logs_are_off_unless_asked_for() {
        assert_eq!(
            log_filter("warn"),
            "warn,fuse_backend_rs=off,virtio_queue=off"
        );
        assert_eq!(
            log_filter("debug,fuse_backend_rs=trace"),
            "debug,fuse_backend_rs=trace,virtio_queue=off"
        );
    }
}
