//! `husk-vmm`: boot one VM and exit with a status that says how the guest ended.
//!
//! Exit status: 0 guest powered off, 1 VMM error (configuration, KVM, setup), 2 guest reset
//! (reboot or kernel panic), 3 triple fault, 4 other vCPU failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::config::{ConsoleOutput, VmConfig, VsockConfig, DEFAULT_KVM_DEVICE};
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
    /// Log level of the VMM itself (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

fn config_from(args: Args) -> anyhow::Result<VmConfig> {
    let console: ConsoleOutput = args.console.parse()?;
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
    };
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
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
