//! `containerd-shim-husk-v2`: containerd's shim for husk (runtime type
//! `io.containerd.husk.v2`). One shim process serves one sandbox VM.
//!
//! - `start`: find the sandbox the container belongs to (the CRI sandbox-id
//!   annotation, else the container itself), and start or reuse that
//!   sandbox's shim (containerd-shim's grouping by socket address);
//! - `delete`: clean up after a shim that died (VMM, mounts, run directory);
//! - otherwise: serve the task API ([`service`]) until Shutdown.

mod service;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{run, spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config as ShimConfig, Error, Flags, StartOpts};
use husk_shim::config::Config;
use husk_shim::spec;

/// The runtime type containerd knows husk by.
const RUNTIME_ID: &str = "io.containerd.husk.v2";

struct HuskShim {
    config: Result<Config, String>,
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

/// The bundle's config.json, read from the current directory (containerd
/// runs `start` and `delete` in the bundle).
fn bundle_spec() -> Vec<u8> {
    std::fs::read("config.json").unwrap_or_default()
}

/// The configuration file named by the runtime options in the bundle, if any.
fn options_config_path() -> Option<std::path::PathBuf> {
    let text = std::fs::read("options.json").ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v["config_path"]
        .as_str()
        .or_else(|| v["ConfigPath"].as_str())
        .filter(|p| !p.is_empty())
        .map(Into::into)
}

/// husk's `log_level` becomes the shim's own: containerd-shim sets up the
/// logger (containerd's log pipe) after `new`, from `default_log_level`. As
/// with every containerd-shim, `RUST_LOG` overrides it, and containerd's
/// `-debug` flag (its own debug level) raises it to debug.
fn set_log_level(shim_config: &mut ShimConfig, config: &Config) {
    shim_config.default_log_level = config.log_level.clone();
}

#[async_trait]
impl Shim for HuskShim {
    type T = service::Service;

    async fn new(_runtime_id: &str, args: &Flags, shim_config: &mut ShimConfig) -> Self {
        let config = Config::load(options_config_path().as_deref()).map_err(|e| {
            let mut text = e.to_string();
            if let Some(s) = std::error::Error::source(&e) {
                text = format!("{text}: {s}");
            }
            text
        });
        if let Ok(c) = &config {
            set_log_level(shim_config, c);
        }
        HuskShim {
            config,
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        if let Err(e) = &self.config {
            return Err(Error::InvalidArgument(e.clone()));
        }
        let grouping = spec::sandbox_id(&bundle_spec(), &opts.id);
        spawn(opts, &grouping, Vec::new()).await
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, Error> {
        if let Ok(config) = &self.config {
            let sandbox = spec::sandbox_id(&bundle_spec(), &self.id);
            service::cleanup_after_crash(config, &sandbox, &self.id);
        }
        let mut response = api::DeleteResponse::new();
        // The process died with its shim: report it killed, as runc's shim does.
        response.exit_status = 137;
        response.exited_at = containerd_shim::protos::protobuf::MessageField::some(
            containerd_shim::util::timestamp()?,
        );
        Ok(response)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = service::Events::start(publisher, self.namespace.clone());
        let config = self.config.clone().unwrap_or_default();
        service::Service::new(config, self.namespace.clone(), self.exit.clone(), events)
    }
}

#[tokio::main]
async fn main() {
    run::<HuskShim>(RUNTIME_ID, None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn husks_log_level_is_the_shims() {
        for level in ["error", "warn", "info", "debug"] {
            let mut shim_config = ShimConfig::default();
            let config = Config {
                log_level: level.into(),
                ..Config::default()
            };
            set_log_level(&mut shim_config, &config);
            assert_eq!(shim_config.default_log_level, level);
            // containerd-shim parses it with `log`'s names.
            let parsed: log::LevelFilter = level.parse().unwrap();
            assert_eq!(parsed.as_str().to_lowercase(), level);
        }
    }
}
