//! husk's configuration: `/etc/husk/config.toml`.
//!
//! The path is, in order: the runtime options' `ConfigPath` (containerd's
//! `runtimeoptions.v1.Options`), `HUSK_CONFIG`, then [`DEFAULT_PATH`]. A
//! missing file at the default path means the defaults; a missing file named
//! explicitly is an error. Unknown keys are errors that name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration lives unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/husk/config.toml";

/// The environment variable that names another configuration file.
pub const CONFIG_ENV: &str = "HUSK_CONFIG";

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The configuration, with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The `husk-vmm` binary.
    pub vmm: PathBuf,
    /// The guest kernel (vmlinux).
    pub kernel: PathBuf,
    /// The guest initramfs (with the agent as /init).
    pub initramfs: PathBuf,
    /// vCPUs per VM.
    pub vcpus: u32,
    /// Guest memory per VM, in MiB.
    pub memory_mib: u32,
    /// Where sandboxes keep their run directories.
    pub run_dir: PathBuf,
    /// The shim's and the VMM's log level: error, warn, info or debug.
    pub log_level: String,
    /// Seconds to wait for a booting guest's agent.
    pub boot_timeout_secs: u64,
    /// Seconds a single agent call may take.
    pub agent_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vmm: "/opt/husk/bin/husk-vmm".into(),
            kernel: "/opt/husk/share/vmlinux".into(),
            initramfs: "/opt/husk/share/initramfs".into(),
            vcpus: 1,
            memory_mib: 256,
            run_dir: "/run/husk".into(),
            log_level: "info".into(),
            boot_timeout_secs: 60,
            agent_timeout_secs: 30,
        }
    }
}

impl Config {
    /// The agent's boot deadline.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs)
    }

    /// The deadline of one agent call.
    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.agent_timeout_secs)
    }

    /// Parses `text` (the file at `path`) and checks the values.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // Name the key: the message of a type error does not.
            let key = e
                .span()
                .and_then(|span| key_at(text, span.start))
                .map(|k| format!("{k}: "))
                .unwrap_or_default();
            ConfigError::Parse {
                path: path.to_owned(),
                message: format!("{key}{}", e.message()),
            }
        })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message: message.to_owned(),
            })
        };
        if !(1..=32).contains(&self.vcpus) {
            return invalid("vcpus", "must be 1 to 32");
        }
        if !(64..=65536).contains(&self.memory_mib) {
            return invalid("memory_mib", "must be 64 to 65536");
        }
        if !["error", "warn", "info", "debug"].contains(&self.log_level.as_str()) {
            return invalid("log_level", "must be error, warn, info or debug");
        }
        for (key, p) in [
            ("vmm", &self.vmm),
            ("kernel", &self.kernel),
            ("initramfs", &self.initramfs),
            ("run_dir", &self.run_dir),
        ] {
            if !p.is_absolute() {
                return invalid(key, "must be an absolute path");
            }
        }
        if self.boot_timeout_secs == 0 || self.agent_timeout_secs == 0 {
            let key = if self.boot_timeout_secs == 0 {
                "boot_timeout_secs"
            } else {
                "agent_timeout_secs"
            };
            return invalid(key, "must be at least 1");
        }
        Ok(())
    }

    /// Loads the configuration: from `explicit` (runtime options) if given,
    /// else from `$HUSK_CONFIG`, else from [`DEFAULT_PATH`] if it exists.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let (path, required) = match (explicit, env) {
            (Some(p), _) => (p.to_owned(), true),
            (None, Some(p)) => (p, true),
            (None, None) => (PathBuf::from(DEFAULT_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&path, &text),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }
}

/// The key of the `key = value` line holding byte `offset` of `text`.
fn key_at(text: &str, offset: usize) -> Option<&str> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    Some(key.trim()).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/husk/config.toml"), text)
    }

    #[test]
    fn empty_means_defaults_and_keys_override() {
        assert_eq!(parse("").unwrap(), Config::default());
        let c = parse("vcpus = 2\nmemory_mib = 512\nkernel = \"/k\"\n").unwrap();
        assert_eq!((c.vcpus, c.memory_mib), (2, 512));
        assert_eq!(c.kernel, Path::new("/k"));
        assert_eq!(c.initramfs, Config::default().initramfs);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("vcpu = 2").unwrap_err().to_string();
        assert!(e.contains("vcpu") && e.contains("unknown field"), "{e}");
        let e = parse("vcpus = 0").unwrap_err().to_string();
        assert!(e.contains("vcpus: must be 1 to 32"), "{e}");
        let e = parse("kernel = \"vmlinux\"").unwrap_err().to_string();
        assert!(e.contains("kernel: must be an absolute path"), "{e}");
        let e = parse("log_level = \"loud\"").unwrap_err().to_string();
        assert!(e.contains("log_level"), "{e}");
        let e = parse("memory_mib = \"lots\"").unwrap_err().to_string();
        assert!(e.contains("memory_mib"), "{e}");
    }

    #[test]
    fn an_explicit_missing_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/husk.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
