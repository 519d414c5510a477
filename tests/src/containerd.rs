//! A private containerd for the tests, and the busybox image they run.
//!
//! The tests start their own containerd inside the KVM test host, with its own
//! root, state, gRPC and ttrpc sockets under one base directory, so that it never
//! meets a system containerd. [`Containerd`] writes its configuration and a
//! shell snippet of functions that a job script sources:
//!
//! ```sh
//! husk_containerd_start || exit 1     # writes config.toml, starts containerd, waits for it
//! husk_ctr image import --index-name husk.test/busybox:latest img.tar
//! husk_ctr run --rm husk.test/busybox:latest t1 echo hello
//! husk_containerd_stop                # SIGTERM, then SIGKILL after 10 s
//! husk_containerd_purge               # stop, unmount what is left under the base, remove it
//! ```
//!
//! The binaries come from `PATH`, or from [`Containerd::bin_dir`] (the tests take
//! it from `HUSK_CONTAINERD_BIN`), which is put first in `PATH` so that `ctr` and
//! the shims come from the same place. [`image`] builds the busybox OCI image
//! (and the pause image CRI needs); [`cni`] writes the CRI pod network's
//! configuration. See `docs/containerd-tests.md`.

pub mod cni;
pub mod image;
mod tar;

use std::fmt::Write as _;
use std::time::Duration;

use thiserror::Error;

pub use cni::Cni;

/// The variable naming a directory with `containerd`, `ctr` and
/// `containerd-shim-runc-v2` to use instead of those in `PATH`.
pub const BIN_ENV: &str = "HUSK_CONTAINERD_BIN";
/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "husk";
/// The containerd namespace CRI keeps its images, pods and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Where CRI's streaming server (exec, attach, port-forward) listens: the
/// loopback address of the machine containerd runs on.
pub const STREAM_SERVER_ADDRESS: &str = "127.0.0.1";
/// Plugins the tests never need. Disabling them keeps start-up fast (the aufs
/// snapshotter alone runs `modprobe aufs`) and keeps containerd from touching
/// paths outside its base (`opt` creates `/opt/containerd`). Names that a
/// containerd version does not have are ignored. The shim v1 runtime
/// (`io.containerd.runtime.v1.linux`) stays: 1.6's tasks service needs it.
pub const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.internal.v1.opt",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.differ.v1.erofs",
];
/// The CRI plugins (one in 1.6 and 1.7; 2.x split out images and runtime), and
/// NRI, which only CRI uses; disabled unless [`Containerd::cri`] asks for CRI.
pub const CRI_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
    "io.containerd.nri.v1.nri",
];
/// CRI's default runtime handler, always configured when CRI is on.
pub const RUNC_HANDLER: &str = "runc";
/// The runtime type of [`RUNC_HANDLER`]: containerd's own runc shim.
pub const RUNC_RUNTIME_TYPE: &str = "io.containerd.runc.v2";
/// How long [`Containerd::shell_functions`]' start waits for the socket by default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
const SOCKET_PATH_MAX: usize = 107;

/// What is wrong with a [`Containerd`] setting.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ContainerdError {
    /// A path must be absolute, without `..` components or control characters
    /// (and, for the binary directory, without `:`, which would split `PATH`).
    #[error("{0:?} is not an absolute path without '..' or control characters")]
    Path(String),
    /// The socket path would not fit a `sockaddr_un`.
    #[error("socket path {0:?} is longer than 107 bytes")]
    SocketTooLong(String),
    /// A CRI runtime handler is empty or not made of `[A-Za-z0-9_-]` (it is a
    /// bare TOML key), or a runtime type is empty.
    #[error("CRI runtime handler or type {0:?} is empty or not made of [A-Za-z0-9_-]")]
    RuntimeName(String),
    /// A CNI network name, bridge name or subnet is malformed.
    #[error("CNI setting {0:?} is malformed")]
    Cni(String),
}

/// The CRI plugin's settings, for tests that drive containerd through CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cri {
    /// The pause image (`sandbox_image`), if not containerd's default.
    pub sandbox_image: Option<String>,
    /// Extra runtimes: (handler, runtime_type), e.g. `("husk", "io.containerd.husk.v2")`.
    /// The default runtime, runc ([`RUNC_HANDLER`]), is always configured.
    pub runtimes: Vec<(String, String)>,
    /// `options.BinaryName` by handler, for runc-compatible runtimes served by runc's
    /// shim, e.g. `("crun", "/usr/bin/crun")`.
    pub binaries: Vec<(String, String)>,
}

/// A private containerd whose files all live under one base directory:
///
/// | path | what |
/// |---|---|
/// | `<base>/config.toml` | the configuration ([`Containerd::config_toml`]) |
/// | `<base>/root`, `<base>/state` | containerd's `root` and `state` |
/// | `<base>/containerd.sock` | the gRPC socket (`ctr --address`) |
/// | `<base>/containerd.sock.ttrpc` | the ttrpc socket (shims publish events there) |
/// | `<base>/containerd.log` | containerd's stdout and stderr |
///
/// The base must be on a file system overlayfs accepts as an upper directory
/// (tmpfs, ext4; not overlayfs, which the test host's root is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Containerd {
    base: String,
    bin_dir: Option<String>,
    cri: Option<Cri>,
    cni: Option<Cni>,
    stream_port: u16,
    log_level: &'static str,
    start_timeout: Duration,
}

impl Containerd {
    /// A containerd with everything under `base`, binaries from `PATH`, no CRI.
    pub fn new(base: &str) -> Result<Self, ContainerdError> {
        let base = checked_path(base)?.trim_end_matches('/').to_string();
        let c = Self {
            base,
            bin_dir: None,
            cri: None,
            cni: None,
            stream_port: 0,
            log_level: "info",
            start_timeout: DEFAULT_START_TIMEOUT,
        };
        for sock in [c.address(), c.ttrpc_address()] {
            if sock.len() > SOCKET_PATH_MAX {
                return Err(ContainerdError::SocketTooLong(sock));
            }
        }
        Ok(c)
    }

    /// Takes `containerd`, `ctr` and the shims from `dir` (put first in `PATH`).
    pub fn bin_dir(mut self, dir: &str) -> Result<Self, ContainerdError> {
        if dir.contains(':') {
            return Err(ContainerdError::Path(dir.to_string()));
        }
        self.bin_dir = Some(checked_path(dir)?.to_string());
        Ok(self)
    }

    /// [`Containerd::bin_dir`] from `$HUSK_CONTAINERD_BIN` when it is set and not empty.
    pub fn bin_dir_from_env(self) -> Result<Self, ContainerdError> {
        match std::env::var(BIN_ENV) {
            Ok(dir) if !dir.is_empty() => self.bin_dir(&dir),
            _ => Ok(self),
        }
    }

    /// Enables the CRI plugin with `cri`'s settings (and `restrict_oom_score_adj`).
    pub fn cri(mut self, cri: Cri) -> Result<Self, ContainerdError> {
        for (handler, runtime_type) in &cri.runtimes {
            // The handler is a bare TOML key: a '.' would make it a dotted key.
            let bare = !handler.is_empty()
                && handler
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
            if !bare {
                return Err(ContainerdError::RuntimeName(handler.clone()));
            }
            if runtime_type.is_empty() {
                return Err(ContainerdError::RuntimeName(runtime_type.clone()));
            }
        }
        self.cri = Some(cri);
        Ok(self)
    }

    /// Pod networking for CRI: the start function writes `cni`'s configuration
    /// list into [`Containerd::cni_conf_dir`], and CRI takes the plugins from
    /// `cni.bin_dir`. Only with CRI on ([`Containerd::cri`]). Without a network
    /// configuration CRI still loads, but refuses RunPodSandbox ("cni plugin not
    /// initialized").
    pub fn cni(mut self, cni: Cni) -> Result<Self, ContainerdError> {
        cni.check()?;
        self.cni = Some(cni);
        Ok(self)
    }

    /// The port of CRI's streaming server on [`STREAM_SERVER_ADDRESS`]; 0 (the
    /// default) takes a free port, which containerd then puts in the URLs that
    /// Exec, Attach and PortForward answer with.
    pub fn stream_port(mut self, port: u16) -> Self {
        self.stream_port = port;
        self
    }

    /// containerd's log level (`debug`, `info`, `warn`, ...); `info` by default.
    pub fn log_level(mut self, level: &'static str) -> Self {
        self.log_level = level;
        self
    }

    /// How long the start function waits for containerd to answer.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// The base directory.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The binary directory, if not `PATH`.
    pub fn bin(&self) -> Option<&str> {
        self.bin_dir.as_deref()
    }

    /// The gRPC socket, for `ctr --address`.
    pub fn address(&self) -> String {
        format!("{}/containerd.sock", self.base)
    }

    /// The ttrpc socket.
    pub fn ttrpc_address(&self) -> String {
        format!("{}/containerd.sock.ttrpc", self.base)
    }

    /// Where the configuration file is written.
    pub fn config_path(&self) -> String {
        format!("{}/config.toml", self.base)
    }

    /// Where containerd's output goes.
    pub fn log_path(&self) -> String {
        format!("{}/containerd.log", self.base)
    }

    /// The directory CRI reads CNI network configurations from.
    pub fn cni_conf_dir(&self) -> String {
        format!("{}/cni/net.d", self.base)
    }

    /// The file the CNI configuration list is written to.
    pub fn cni_conf_path(&self) -> String {
        format!("{}/{}", self.cni_conf_dir(), cni::CONF_FILE)
    }

    /// host-local IPAM's data directory (the leased addresses).
    pub fn cni_ipam_dir(&self) -> String {
        format!("{}/cni/ipam", self.base)
    }

    /// The CNI configuration list the start function writes, if any.
    pub fn cni_conflist(&self) -> Option<String> {
        self.cni.as_ref().map(|c| c.conflist(&self.cni_ipam_dir()))
    }

    /// The configuration, in the version 2 format that containerd 1.6 and 1.7
    /// read and 2.x migrates on load.
    pub fn config_toml(&self) -> String {
        let b = &self.base;
        let mut disabled: Vec<&str> = DISABLED_PLUGINS.to_vec();
        if self.cri.is_none() {
            disabled.extend_from_slice(CRI_PLUGINS);
        }
        let disabled: Vec<String> = disabled.iter().map(|p| format!("\"{p}\"")).collect();
        let mut s = String::new();
        // `writeln!` into a String cannot fail.
        let mut line = |l: &str| {
            let _ = writeln!(s, "{l}");
        };
        line("# A private containerd for husk's tests (husk_tests::containerd).");
        line("version = 2");
        line(&format!("root = {}", toml_string(&format!("{b}/root"))));
        line(&format!("state = {}", toml_string(&format!("{b}/state"))));
        line(&format!("disabled_plugins = [{}]", disabled.join(", ")));
        line("");
        line("[grpc]");
        line(&format!("  address = {}", toml_string(&self.address())));
        line("[ttrpc]");
        line(&format!(
            "  address = {}",
            toml_string(&self.ttrpc_address())
        ));
        line("[debug]");
        line(&format!("  level = {}", toml_string(self.log_level)));
        if let Some(cri) = &self.cri {
            let cni = self
                .cni
                .as_ref()
                .map(|c| (c.bin_dir.as_str(), self.cni_conf_dir()));
            for l in cri_section(cri, self.stream_port, cni) {
                line(&l);
            }
        }
        s
    }

    /// Shell functions (POSIX sh, busybox ash) for a job script:
    /// `husk_containerd_start`, `husk_containerd_stop`, `husk_containerd_purge`,
    /// `husk_ctr` (`ctr` on this containerd, namespace [`NAMESPACE`]) and
    /// `husk_ms` (milliseconds since boot, for durations). Start prints one line,
    /// `husk containerd: <version> ready in <ms> ms`, or containerd's log tail and
    /// returns 1.
    pub fn shell_functions(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# A private containerd (husk_tests::containerd).");
        let _ = writeln!(s, "HUSK_CTRD_BASE={}", sh_quote(&self.base));
        let _ = writeln!(s, "HUSK_CTRD_ADDRESS={}", sh_quote(&self.address()));
        let _ = writeln!(s, "HUSK_CTRD_PID=");
        if let Some(bin) = &self.bin_dir {
            let _ = writeln!(s, "PATH={}:\"$PATH\"; export PATH", sh_quote(bin));
        }
        let _ = writeln!(
            s,
            "# Milliseconds since boot, from /proc/uptime (10 ms steps; busybox date has no %N).\n\
             husk_ms() {{ read -r _up _ </proc/uptime; _cs=${{_up%.*}}${{_up#*.}}; \
             while [ \"${{_cs#0}}\" != \"$_cs\" ] && [ -n \"${{_cs#0}}\" ]; do _cs=${{_cs#0}}; done; \
             echo $((_cs * 10)); }}\n\
             husk_ctr() {{ ctr --address \"$HUSK_CTRD_ADDRESS\" --namespace {NAMESPACE} \"$@\"; }}\n\
             # ctr in CRI's namespace, e.g. to import the images CRI runs.\n\
             husk_ctr_cri() {{ ctr --address \"$HUSK_CTRD_ADDRESS\" --namespace {CRI_NAMESPACE} \"$@\"; }}\n\
             # True while process $1 exists and is not a zombie.\n\
             husk_alive() {{ [ -n \"$1\" ] || return 1; _st=; read -r _ _ _st _ 2>/dev/null <\"/proc/$1/stat\" || return 1; [ \"$_st\" != Z ]; }}"
        );
        s.push_str(&self.start_function());
        s.push_str(STOP_FUNCTIONS);
        s
    }

    fn start_function(&self) -> String {
        let tenths = self.start_timeout.as_millis().div_ceil(100);
        let secs = self.start_timeout.as_secs_f64();
        let cni = match self.cni_conflist() {
            Some(list) => format!(
                "    mkdir -p {dir} {ipam} || return 1\n    cat >{file} <<'HUSK_CNI_CONFIG'\n{list}\nHUSK_CNI_CONFIG\n",
                dir = sh_quote(&self.cni_conf_dir()),
                ipam = sh_quote(&self.cni_ipam_dir()),
                file = sh_quote(&self.cni_conf_path()),
            ),
            None => String::new(),
        };
        format!(
            r#"husk_containerd_start() {{
    mkdir -p "$HUSK_CTRD_BASE/root" "$HUSK_CTRD_BASE/state" || return 1
{cni}    cat >"$HUSK_CTRD_BASE/config.toml" <<'HUSK_CONTAINERD_CONFIG'
{config}HUSK_CONTAINERD_CONFIG
    _t0=$(husk_ms)
    containerd --config "$HUSK_CTRD_BASE/config.toml" >"$HUSK_CTRD_BASE/containerd.log" 2>&1 &
    HUSK_CTRD_PID=$!
    _n=0
    until [ -S "$HUSK_CTRD_ADDRESS" ]; do
        if ! husk_alive "$HUSK_CTRD_PID"; then
            echo "husk containerd: exited during start-up; its log:"
            tail -n 40 "$HUSK_CTRD_BASE/containerd.log"
            HUSK_CTRD_PID=
            return 1
        fi
        _n=$((_n + 1))
        if [ "$_n" -gt {tenths} ]; then
            echo "husk containerd: no socket after {secs} s; its log:"
            tail -n 40 "$HUSK_CTRD_BASE/containerd.log"
            return 1
        fi
        sleep 0.1
    done
    if ! _v=$(husk_ctr version 2>&1); then
        echo "husk containerd: ctr version failed: $_v"
        tail -n 40 "$HUSK_CTRD_BASE/containerd.log"
        return 1
    fi
    _v=$(echo "$_v" | sed -n 's/^ *Version: *//p' | tail -n 1)
    echo "husk containerd: $_v ready in $(( $(husk_ms) - _t0 )) ms"
}}
"#,
            config = self.config_toml(),
        )
    }
}

/// Stop (SIGTERM, SIGKILL after 10 s) and purge (stop, unmount everything left
/// under the base, deepest first, and remove it).
const STOP_FUNCTIONS: &str = r#"husk_containerd_stop() {
    [ -n "$HUSK_CTRD_PID" ] || return 0
    kill "$HUSK_CTRD_PID" 2>/dev/null
    _n=0
    while husk_alive "$HUSK_CTRD_PID"; do
        _n=$((_n + 1))
        if [ "$_n" -gt 100 ]; then
            echo "husk containerd: no exit 10 s after SIGTERM; SIGKILL"
            kill -9 "$HUSK_CTRD_PID" 2>/dev/null
            break
        fi
        sleep 0.1
    done
    wait "$HUSK_CTRD_PID" 2>/dev/null
    HUSK_CTRD_PID=
}
husk_containerd_purge() {
    husk_containerd_stop
    # A guest that triple-faulted under any shim: say so in the job's output, where the
    # test-host harness looks for it (docs/testing.md, "What the harness retries").
    grep -o 'husk-vmm: vCPU [0-9]* triple-faulted' "$HUSK_CTRD_BASE/containerd.log" 2>/dev/null | sort -u
    while read -r _ _ _ _ _mp _; do
        case "$_mp" in "$HUSK_CTRD_BASE"/*) echo "$_mp" ;; esac
    done </proc/self/mountinfo | sort -r | while read -r _mp; do
        umount "$_mp" || umount -l "$_mp"
    done
    rm -rf "$HUSK_CTRD_BASE"
}
"#;

/// The `[plugins."io.containerd.grpc.v1.cri"]` section; `cni` is the plugins'
/// directory and the configuration directory.
fn cri_section(cri: &Cri, stream_port: u16, cni: Option<(&str, String)>) -> Vec<String> {
    const CRI: &str = r#"[plugins."io.containerd.grpc.v1.cri"]"#;
    let mut l = vec![
        String::new(),
        CRI.to_string(),
        // The development machines withhold CAP_SYS_RESOURCE (bit 24 of CapEff), so no
        // process there may lower its oom_score_adj; with this, CRI caps a container's
        // score at containerd's own instead of failing to start it.
        "  restrict_oom_score_adj = true".to_string(),
    ];
    if let Some(image) = &cri.sandbox_image {
        l.push(format!("  sandbox_image = {}", toml_string(image)));
    }
    // Exec, attach and port-forward stream through this server; with port "0" it
    // takes a free port and puts the real one in the URLs it hands out.
    l.push(format!(
        "  stream_server_address = {}",
        toml_string(STREAM_SERVER_ADDRESS)
    ));
    l.push(format!(
        "  stream_server_port = {}",
        toml_string(&stream_port.to_string())
    ));
    l.push("  enable_tls_streaming = false".to_string());
    if let Some((bin_dir, conf_dir)) = cni {
        l.push(format!("{}.cni]", CRI.trim_end_matches(']')));
        l.push(format!("    bin_dir = {}", toml_string(bin_dir)));
        l.push(format!("    conf_dir = {}", toml_string(&conf_dir)));
        // One network: the first configuration file in conf_dir (CRI adds loopback itself).
        l.push("    max_conf_num = 1".to_string());
    }
    // Naming any runtime replaces CRI's default table, which holds runc, the default
    // runtime: without it 1.6 and 1.7 fail to load CRI ("no corresponding runtime
    // configured in `containerd.runtimes` for ... `default_runtime_name = \"runc\"`").
    let runc = (RUNC_HANDLER.to_string(), RUNC_RUNTIME_TYPE.to_string());
    let has_runc = cri.runtimes.iter().any(|(h, _)| h == RUNC_HANDLER);
    for (handler, runtime_type) in (!has_runc)
        .then_some(&runc)
        .into_iter()
        .chain(&cri.runtimes)
    {
        l.push(format!(
            "{}.containerd.runtimes.{handler}]",
            CRI.trim_end_matches(']')
        ));
        l.push(format!("    runtime_type = {}", toml_string(runtime_type)));
        if let Some((_, binary)) = cri.binaries.iter().find(|(h, _)| h == handler) {
            l.push(format!(
                "{}.containerd.runtimes.{handler}.options]",
                CRI.trim_end_matches(']')
            ));
            l.push(format!("    BinaryName = {}", toml_string(binary)));
        }
    }
    l
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` single-quoted for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `path` if it is absolute (not `/` itself), has no `..` component and no
/// control characters.
fn checked_path(path: &str) -> Result<&str, ContainerdError> {
    let plain = !path.chars().any(char::is_control);
    if path.starts_with('/') && path.len() > 1 && plain && !path.split('/').any(|c| c == "..") {
        Ok(path)
    } else {
        Err(ContainerdError::Path(path.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The configuration as (table, key) -> value, after checking that every line
    /// is blank, a comment, a `[table]` header or `key = value` with a TOML string,
    /// integer, boolean or array of strings as the value.
    fn parse(c: &Containerd) -> BTreeMap<(String, String), String> {
        let string = |v: &str| {
            v.len() >= 2
                && v.starts_with('"')
                && v.ends_with('"')
                && !v[1..v.len() - 1].contains('"')
        };
        let mut table = String::new();
        let mut out = BTreeMap::new();
        for line in c.config_toml().lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = t.to_string();
                continue;
            }
            let (key, value) = line.split_once(" = ").expect("key = value");
            assert!(!key.is_empty() && !key.contains(['"', ' ']), "{line}");
            let ok = string(value)
                || value.parse::<i64>().is_ok()
                || value == "true"
                || value == "false"
                || value
                    .strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .is_some_and(|v| v.split(", ").all(string));
            assert!(ok, "not a TOML value: {line}");
            let dup = out.insert((table.clone(), key.to_string()), value.to_string());
            assert!(dup.is_none(), "{key} twice in [{table}]");
        }
        out
    }

    fn get<'a>(t: &'a BTreeMap<(String, String), String>, table: &str, key: &str) -> &'a str {
        t.get(&(table.to_string(), key.to_string()))
            .unwrap_or_else(|| panic!("no {key} in [{table}]"))
    }

    fn disabled(t: &BTreeMap<(String, String), String>) -> Vec<String> {
        let list = get(t, "", "disabled_plugins");
        list[1..list.len() - 1]
            .split(", ")
            .map(|p| p.trim_matches('"').to_string())
            .collect()
    }

    #[test]
    fn config_puts_everything_under_the_base() {
        let c = Containerd::new("/tmp/husk-ctrd/").unwrap();
        assert_eq!(c.base(), "/tmp/husk-ctrd");
        let t = parse(&c);
        assert_eq!(get(&t, "", "version"), "2");
        assert_eq!(get(&t, "", "root"), r#""/tmp/husk-ctrd/root""#);
        assert_eq!(get(&t, "", "state"), r#""/tmp/husk-ctrd/state""#);
        assert_eq!(
            get(&t, "grpc", "address"),
            r#""/tmp/husk-ctrd/containerd.sock""#
        );
        assert_eq!(
            get(&t, "ttrpc", "address"),
            r#""/tmp/husk-ctrd/containerd.sock.ttrpc""#
        );
        assert_eq!(c.config_path(), "/tmp/husk-ctrd/config.toml");
        assert_eq!(c.log_path(), "/tmp/husk-ctrd/containerd.log");
        assert_eq!(get(&t, "debug", "level"), r#""info""#);
        let d = disabled(&t);
        for p in DISABLED_PLUGINS.iter().chain(CRI_PLUGINS) {
            assert!(d.iter().any(|x| x == p), "{p} not disabled");
        }
        assert_eq!(d.len(), DISABLED_PLUGINS.len() + CRI_PLUGINS.len());
        assert!(t.keys().all(|(table, _)| !table.starts_with("plugins")));
    }

    #[test]
    fn cri_keeps_its_plugins_and_restricts_oom_score_adj() {
        let c = Containerd::new("/run/c")
            .unwrap()
            .cri(Cri {
                sandbox_image: Some("husk.test/busybox:latest".into()),
                runtimes: vec![
                    ("husk".into(), "io.containerd.husk.v2".into()),
                    ("crun".into(), "io.containerd.runc.v2".into()),
                ],
                binaries: vec![("crun".into(), "/usr/bin/crun".into())],
            })
            .unwrap();
        let t = parse(&c);
        let d = disabled(&t);
        assert!(
            CRI_PLUGINS.iter().all(|p| !d.iter().any(|x| x == p)),
            "{d:?}"
        );
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        assert_eq!(get(&t, cri, "restrict_oom_score_adj"), "true");
        assert_eq!(
            get(&t, cri, "sandbox_image"),
            r#""husk.test/busybox:latest""#
        );
        assert_eq!(
            get(
                &t,
                &format!("{cri}.containerd.runtimes.husk"),
                "runtime_type"
            ),
            r#""io.containerd.husk.v2""#
        );
        let runc = format!("{cri}.containerd.runtimes.runc");
        assert_eq!(get(&t, &runc, "runtime_type"), r#""io.containerd.runc.v2""#);
        let crun = format!("{cri}.containerd.runtimes.crun.options");
        assert_eq!(get(&t, &crun, "BinaryName"), r#""/usr/bin/crun""#);
        let bad = Containerd::new("/run/c").unwrap().cri(Cri {
            sandbox_image: None,
            runtimes: vec![("a b".into(), "x".into())],
            ..Default::default()
        });
        assert_eq!(bad, Err(ContainerdError::RuntimeName("a b".into())));
        for (handler, runtime_type) in [("a.b", "x"), ("", "x"), ("ok", "")] {
            let bad = Containerd::new("/run/c").unwrap().cri(Cri {
                sandbox_image: None,
                runtimes: vec![(handler.into(), runtime_type.into())],
                ..Default::default()
            });
            assert!(
                matches!(bad, Err(ContainerdError::RuntimeName(_))),
                "{handler:?} {runtime_type:?}"
            );
        }
    }

    #[test]
    fn cri_streams_on_loopback_and_takes_cni_from_the_base() {
        let cri = Cri {
            sandbox_image: Some("husk.test/pause:latest".into()),
            runtimes: vec![("husk".into(), "io.containerd.husk.v2".into())],
            ..Default::default()
        };
        let c = Containerd::new("/tmp/b")
            .unwrap()
            .cri(cri.clone())
            .unwrap()
            .cni(Cni::default())
            .unwrap();
        let t = parse(&c);
        let plugin = r#"plugins."io.containerd.grpc.v1.cri""#;
        assert_eq!(get(&t, plugin, "stream_server_address"), r#""127.0.0.1""#);
        assert_eq!(get(&t, plugin, "stream_server_port"), r#""0""#);
        assert_eq!(get(&t, plugin, "enable_tls_streaming"), "false");
        let cni = format!("{plugin}.cni");
        assert_eq!(get(&t, &cni, "bin_dir"), r#""/usr/lib/cni""#);
        assert_eq!(get(&t, &cni, "conf_dir"), r#""/tmp/b/cni/net.d""#);
        assert_eq!(get(&t, &cni, "max_conf_num"), "1");
        assert_eq!(c.cni_conf_path(), "/tmp/b/cni/net.d/10-husk-pods.conflist");
        let list: serde_json::Value =
            serde_json::from_str(&c.cni_conflist().expect("a conflist")).unwrap();
        assert_eq!(list["plugins"][0]["ipam"]["dataDir"], "/tmp/b/cni/ipam");

        // A fixed port; no CNI section without Containerd::cni.
        let c = Containerd::new("/tmp/b")
            .unwrap()
            .cri(cri)
            .unwrap()
            .stream_port(10010);
        let t = parse(&c);
        assert_eq!(get(&t, plugin, "stream_server_port"), r#""10010""#);
        assert!(t.keys().all(|(table, _)| !table.ends_with(".cni")));
        assert_eq!(c.cni_conflist(), None);
        let bad = Cni {
            bridge: "no/slash".into(),
            ..Cni::default()
        };
        assert_eq!(
            c.cni(bad).err(),
            Some(ContainerdError::Cni("no/slash".into()))
        );
    }

    #[test]
    fn start_writes_the_cni_configuration() {
        for sh in shells() {
            let fake = Fake::new(
                "cni",
                "echo \"$$\" >\"$(dirname \"$2\")/pid\"; exec sleep 30",
            );
            let c = fake
                .containerd(DEFAULT_START_TIMEOUT)
                .cri(Cri::default())
                .unwrap()
                .cni(Cni::default())
                .unwrap();
            std::fs::create_dir_all(c.base()).unwrap();
            let _sock = UnixListener::bind(c.address()).unwrap();
            let (out, code) = fake.run(
                &sh,
                &c,
                "husk_containerd_start || exit 9\n\
                 husk_ctr_cri images ls\n\
                 [ -d \"$HUSK_CTRD_BASE/cni/ipam\" ] && echo ipam\n\
                 husk_containerd_purge",
            );
            assert_eq!(code, 0, "{sh:?}: {out}");
            let want = format!("ctr --address {} --namespace k8s.io images ls", c.address());
            assert!(out.contains(&want), "{out}");
            assert!(out.contains("ipam\n"), "{sh:?}: {out}");
        }
        // The file the function wrote, read back before the purge.
        let fake = Fake::new("cni2", "exec sleep 30");
        let c = fake
            .containerd(Duration::from_millis(200))
            .cri(Cri::default())
            .unwrap()
            .cni(Cni::default())
            .unwrap();
        let (out, _) = fake.run(
            &shells()[0],
            &c,
            &format!(
                "husk_containerd_start; cat {}; husk_containerd_stop",
                sh_quote(&c.cni_conf_path())
            ),
        );
        let json = &out[out.find('{').expect(&out)..=out.rfind('}').expect(&out)];
        let list: serde_json::Value = serde_json::from_str(json).expect(&out);
        assert_eq!(list["plugins"][0]["bridge"], "husk-cni0");
    }

    #[test]
    fn paths_are_checked() {
        for bad in ["", "/", "rel/dir", "/x/../y", "/a\nb", "/a\tb"] {
            assert_eq!(
                Containerd::new(bad),
                Err(ContainerdError::Path(bad.into())),
                "{bad:?}"
            );
        }
        let long = format!("/{}", "d".repeat(90));
        assert!(matches!(
            Containerd::new(&long),
            Err(ContainerdError::SocketTooLong(_))
        ));
        let c = Containerd::new("/run/c").unwrap();
        assert!(c.clone().bin_dir("bin").is_err());
        assert!(c.clone().bin_dir("/a:/b").is_err());
        let c = c.bin_dir("/cache/1.7.24~ds1-6+deb13u1/usr/bin").unwrap();
        assert_eq!(c.bin(), Some("/cache/1.7.24~ds1-6+deb13u1/usr/bin"));
        assert!(c
            .shell_functions()
            .contains("PATH='/cache/1.7.24~ds1-6+deb13u1/usr/bin':\"$PATH\"; export PATH"));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("x\ny"), r#""x\u000ay""#);
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    /// A scratch directory with fake `containerd` and `ctr` scripts.
    struct Fake {
        dir: PathBuf,
    }

    impl Fake {
        fn new(name: &str, containerd: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("husk ctrd'test~{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("bin")).unwrap();
            let script = |n: &str, body: &str| {
                let p = dir.join("bin").join(n);
                std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            };
            script("containerd", containerd);
            script(
                "ctr",
                "echo \"ctr $*\"; printf 'Server:\\n  Version:  9.9.9-fake\\n'",
            );
            Self { dir }
        }

        fn containerd(&self, timeout: Duration) -> Containerd {
            Containerd::new(self.dir.join("base").to_str().unwrap())
                .unwrap()
                .bin_dir(self.dir.join("bin").to_str().unwrap())
                .unwrap()
                .start_timeout(timeout)
        }

        /// Runs the functions and then `body` with `shell`; stdout+stderr and status.
        fn run(&self, shell: &[&str], c: &Containerd, body: &str) -> (String, i32) {
            let script = format!("{}\n{body}", c.shell_functions());
            let out = Command::new(shell[0])
                .args(&shell[1..])
                .arg("-c")
                .arg(script + " 2>&1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text, out.status.code().unwrap_or(-1))
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The shells the functions must work in: the host's sh and busybox ash.
    fn shells() -> Vec<Vec<&'static str>> {
        let mut v = vec![vec!["/bin/sh"]];
        if Path::new("/bin/busybox").is_file() {
            v.push(vec!["/bin/busybox", "sh"]);
        }
        v
    }

    #[test]
    fn start_waits_for_the_socket_and_stop_ends_containerd() {
        for sh in shells() {
            let fake = Fake::new(
                "ok",
                "echo \"$$\" >\"$(dirname \"$2\")/pid\"; exec sleep 30",
            );
            let c = fake.containerd(DEFAULT_START_TIMEOUT);
            std::fs::create_dir_all(c.base()).unwrap();
            let _sock = UnixListener::bind(c.address()).unwrap();
            let (out, code) = fake.run(
                &sh,
                &c,
                "husk_containerd_start || exit 9\n\
                 husk_alive \"$HUSK_CTRD_PID\" && echo alive\n\
                 husk_ctr images ls\n\
                 while [ ! -s \"$HUSK_CTRD_BASE/pid\" ]; do sleep 0.05; done\n\
                 husk_containerd_stop\n\
                 husk_alive \"$(cat \"$HUSK_CTRD_BASE/pid\")\" || echo stopped\n\
                 [ -f \"$HUSK_CTRD_BASE/config.toml\" ] && echo config\n\
                 husk_containerd_purge; [ -e \"$HUSK_CTRD_BASE\" ] || echo purged",
            );
            assert_eq!(code, 0, "{sh:?}: {out}");
            assert!(
                out.contains("husk containerd: 9.9.9-fake ready in "),
                "{out}"
            );
            assert!(out.contains("alive\n"), "{out}");
            let want = format!("ctr --address {} --namespace husk images ls", c.address());
            assert!(out.contains(&want), "{out}");
            for word in ["stopped\n", "config\n", "purged\n"] {
                assert!(out.contains(word), "{sh:?}: no {word}: {out}");
            }
        }
    }

    #[test]
    fn husk_ms_counts_milliseconds() {
        for sh in shells() {
            let fake = Fake::new("ms", "exit 0");
            let c = fake.containerd(DEFAULT_START_TIMEOUT);
            let (out, code) = fake.run(
                &sh,
                &c,
                "a=$(husk_ms); sleep 0.3; b=$(husk_ms); echo \"ms $a $b $((b - a))\"",
            );
            assert_eq!(code, 0, "{sh:?}: {out}");
            let line = out.lines().find(|l| l.starts_with("ms ")).expect(&out);
            let n: Vec<u64> = line[3..].split(' ').map(|x| x.parse().unwrap()).collect();
            assert!(n[0] > 0 && n[1] >= n[0], "{line}");
            assert!((250..2000).contains(&n[2]), "{sh:?}: {line}");
        }
    }

    #[test]
    fn start_reports_a_containerd_that_dies_or_never_listens() {
        for sh in shells() {
            let fake = Fake::new("dies", "echo 'level=fatal msg=boom'; exit 3");
            let c = fake.containerd(DEFAULT_START_TIMEOUT);
            let (out, code) = fake.run(&sh, &c, "husk_containerd_start || exit 7");
            assert_eq!(code, 7, "{sh:?}: {out}");
            assert!(out.contains("exited during start-up"), "{out}");
            assert!(out.contains("level=fatal msg=boom"), "{out}");

            let fake = Fake::new("mute", "exec sleep 30");
            let c = fake.containerd(Duration::from_millis(300));
            let (out, code) = fake.run(
                &sh,
                &c,
                "husk_containerd_start && exit 0\n\
                 _p=$HUSK_CTRD_PID; husk_containerd_stop; husk_alive \"$_p\" || echo stopped\n\
                 exit 7",
            );
            assert_eq!(code, 7, "{sh:?}: {out}");
            assert!(out.contains("no socket after 0.3 s"), "{out}");
            assert!(out.contains("stopped\n"), "{out}");
        }
    }
}
