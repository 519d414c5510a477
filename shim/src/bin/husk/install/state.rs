//! What `husk install` changed on a node, so that `husk uninstall` undoes exactly that:
//! `/opt/husk/install-state.toml`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::containerd::{Added, Format};
use super::files::{self, Root};

/// Where the state lives, as the node sees it.
pub const STATE_PATH: &str = "/opt/husk/install-state.toml";

const HEADER: &str =
    "# Written by `husk install` and read by `husk uninstall`: what was changed on this \
node.\n# Do not edit it; `husk uninstall` removes it.\n";

/// What an install changed. Paths are as the node sees them (without `--prefix`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// containerd's configuration file.
    pub containerd_config: PathBuf,
    /// Whether that file existed before the first install (if not, install made it).
    pub config_existed: bool,
    /// Its format, once planned.
    pub format: Option<Format>,
    /// What the file holds of husk's.
    #[serde(default)]
    pub added: Added,
    /// The copy of the file from before the first install edited it.
    pub backup: Option<PathBuf>,
    /// SHA-256 of the file as husk last left it.
    pub written_sha256: Option<String>,
    /// Whether the backup is the file as husk last left it minus husk's additions, i.e.
    /// nobody else edited the file in between: then uninstall restores the backup as it is.
    #[serde(default)]
    pub backup_exact: bool,
    /// The version 3 drop-in husk wrote, and its SHA-256.
    pub drop_in: Option<PathBuf>,
    pub drop_in_sha256: Option<String>,
    /// SHA-256 of `/etc/husk/config.toml` if install wrote it (it is never overwritten).
    pub husk_config_sha256: Option<String>,
    /// Directories install created outside `/opt/husk`, parents first.
    #[serde(default)]
    pub created_dirs: Vec<PathBuf>,
}

impl State {
    /// A fresh state for an install into `containerd_config`.
    pub fn new(containerd_config: &Path, config_existed: bool) -> Self {
        State {
            containerd_config: containerd_config.to_owned(),
            config_existed,
            format: None,
            added: Added::default(),
            backup: None,
            written_sha256: None,
            backup_exact: false,
            drop_in: None,
            drop_in_sha256: None,
            husk_config_sha256: None,
            created_dirs: Vec::new(),
        }
    }

    /// The state of the node under `root`, if husk is installed there.
    pub fn load(root: &Root) -> Result<Option<State>> {
        let path = root.local(Path::new(STATE_PATH));
        let Some(text) = files::read_optional(&path)? else {
            return Ok(None);
        };
        let state = toml::from_str(&text)
            .with_context(|| format!("{}: not a husk install state", path.display()))?;
        Ok(Some(state))
    }

    /// Writes the state under `root`.
    pub fn save(&self, root: &Root) -> Result<()> {
        let body = toml::to_string(self).context("encoding the install state")?;
        let path = root.local(Path::new(STATE_PATH));
        files::write_atomic(&path, format!("{HEADER}{body}").as_bytes(), 0o644)
    }

    /// Records directories created by this install.
    pub fn note_created(&mut self, dirs: Vec<PathBuf>) {
        for dir in dirs {
            if !self.created_dirs.contains(&dir) {
                self.created_dirs.push(dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml() {
        let mut state = State::new(Path::new("/etc/containerd/config.toml"), true);
        state.format = Some(Format::V3);
        state.added.import = Some("conf.d/husk.toml".into());
        state.added.imports_key = true;
        state.drop_in = Some("/etc/containerd/conf.d/husk.toml".into());
        state.created_dirs = vec!["/etc/containerd/conf.d".into()];
        let text = toml::to_string(&state).unwrap();
        assert_eq!(toml::from_str::<State>(&text).unwrap(), state);
        assert!(text.contains("format = \"v3\""), "{text}");
    }
}
