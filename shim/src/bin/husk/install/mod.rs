//! `husk install` and `husk uninstall`: put husk on a node and take it off again.
//!
//! Install copies the binaries to `/opt/husk/bin`, the guest kernel and initramfs to
//! `/opt/husk/share`, writes `/etc/husk/config.toml` if there is none, links
//! `/usr/local/bin/containerd-shim-husk-v2` (containerd finds shims on its `PATH`), and adds
//! the `husk` runtime to containerd's configuration ([`containerd`] says how, per format).
//! What it changed is recorded in `/opt/husk/install-state.toml`, and uninstall undoes exactly
//! that. Every path is taken under `--prefix`, the node's root as mounted here (`/`, or the
//! host's file system in the installer DaemonSet); paths written into files are the node's.

mod containerd;
mod files;
mod state;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use containerd::{DropIn, Runtime};
use files::Root;
use state::State;

pub use containerd::{RUNTIME_NAME, RUNTIME_TYPE};

/// husk's configuration file on the node.
const HUSK_CONFIG: &str = "/etc/husk/config.toml";
/// The installed shim, and the link on containerd's `PATH` that points to it.
const SHIM: &str = "/opt/husk/bin/containerd-shim-husk-v2";
const SHIM_LINK: &str = "/usr/local/bin/containerd-shim-husk-v2";
/// husk's own directories, removed by uninstall once empty (deepest first).
const OWN_DIRS: [&str; 3] = ["/opt/husk/bin", "/opt/husk/share", "/opt/husk"];
/// The drop-in of version 3 configurations, relative to the configuration's directory (as
/// containerd resolves relative `imports`).
const DROP_IN: &str = "conf.d/husk.toml";
const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
const DEFAULT_RESTART: &str = "systemctl restart containerd";

/// One installed file: where it goes, the names it may have where it comes from, its mode.
#[derive(Debug)]
struct Artifact {
    dest: &'static str,
    names: &'static [&'static str],
    mode: u32,
    how: &'static str,
}

const ARTIFACTS: [Artifact; 5] = [
    Artifact {
        dest: SHIM,
        names: &["containerd-shim-husk-v2"],
        mode: 0o755,
        how: "cargo build --release -p husk-shim",
    },
    Artifact {
        dest: "/opt/husk/bin/husk-vmm",
        names: &["husk-vmm"],
        mode: 0o755,
        how: "cargo build --release -p husk-vmm",
    },
    Artifact {
        dest: "/opt/husk/bin/husk",
        names: &["husk"],
        mode: 0o755,
        how: "cargo build --release -p husk-shim",
    },
    Artifact {
        dest: "/opt/husk/share/vmlinux",
        names: &["vmlinux"],
        mode: 0o644,
        how: "kernel-config/build.sh",
    },
    Artifact {
        dest: "/opt/husk/share/initramfs",
        names: &["initramfs", "initramfs.cpio"],
        mode: 0o644,
        how: "scripts/build-guest.sh --release",
    },
];

/// Options shared by install and uninstall.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Where the node's root file system is (the host's `/` mounted in a container, or a
    /// scratch directory). Paths written into files are the node's, without this prefix.
    #[arg(long, value_name = "DIR", default_value = "/")]
    prefix: PathBuf,
    /// containerd's configuration file, as the node sees it [install default:
    /// /etc/containerd/config.toml; uninstall default: the one install used].
    #[arg(long, value_name = "PATH")]
    containerd_config: Option<PathBuf>,
    /// Print what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Restart containerd if its configuration changed, with `systemctl restart containerd`
    /// or CMD (run by `sh -c`). Without it, husk only says that a restart is needed.
    #[arg(
        long,
        value_name = "CMD",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = DEFAULT_RESTART
    )]
    restart: Option<String>,
}

/// `husk install`.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    common: Common,
    /// A directory holding files to install (repeatable; searched in order): the binaries
    /// `containerd-shim-husk-v2`, `husk-vmm` and `husk`, `vmlinux`, and `initramfs` (or
    /// `initramfs.cpio`). Default: this program's directory, `../share` beside it, and the
    /// source tree's `build/guest` when run from `target/<profile>/`.
    #[arg(long = "from", value_name = "DIR")]
    from: Vec<PathBuf>,
}

/// `husk uninstall`.
#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[command(flatten)]
    common: Common,
}

/// Prints one line of what happened.
fn say(what: impl std::fmt::Display) {
    println!("husk: {what}");
}

fn default_sources() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(bin.join("../share"));
        // target/<profile>/husk in the source tree: the guest is in build/guest.
        dirs.push(bin.join("../../build/guest"));
        dirs.insert(0, bin);
    }
    dirs
}

/// Finds each artifact in `dirs`, or says which are missing and how to build them.
fn locate(dirs: &[PathBuf]) -> Result<Vec<(&'static Artifact, PathBuf)>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for artifact in &ARTIFACTS {
        let src = dirs.iter().find_map(|dir| {
            artifact
                .names
                .iter()
                .map(|name| dir.join(name))
                .find(|p| p.is_file())
        });
        match src {
            Some(src) => found.push((artifact, src)),
            None => missing.push(format!(
                "{} ({})",
                artifact.names.join(" or "),
                artifact.how
            )),
        }
    }
    if !missing.is_empty() {
        let dirs: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
        bail!(
            "not found in {}: {}; build them or pass --from DIR",
            dirs.join(", "),
            missing.join(", ")
        );
    }
    Ok(found)
}

/// The text of a new `/etc/husk/config.toml`: every key, at its default.
fn husk_config_text() -> String {
    let d = husk_shim::config::Config::default();
    let s = |v: &Path| toml_edit::Value::from(v.to_string_lossy().as_ref()).to_string();
    format!(
        "# husk's configuration, read by containerd-shim-husk-v2 (the runtime options' ConfigPath\n\
         # names this file). Written by `husk install`, which never overwrites it; `husk uninstall`\n\
         # removes it only if it is unchanged. Every key is optional; these are the defaults.\n\
         vmm = {}\nkernel = {}\ninitramfs = {}\nvcpus = {}\nmemory_mib = {}\nrun_dir = {}\n\
         log_level = {}\nboot_timeout_secs = {}\nagent_timeout_secs = {}\n",
        s(&d.vmm),
        s(&d.kernel),
        s(&d.initramfs),
        d.vcpus,
        d.memory_mib,
        s(&d.run_dir),
        toml_edit::Value::from(d.log_level.as_str()),
        d.boot_timeout_secs,
        d.agent_timeout_secs,
    )
}

/// The containerd configuration path: absolute, as the node sees it.
fn containerd_config(common: &Common, state: Option<&State>) -> Result<PathBuf> {
    let path = match (&common.containerd_config, state) {
        (Some(p), Some(s)) if *p != s.containerd_config => bail!(
            "husk was installed into {}, not {}: uninstall it first",
            s.containerd_config.display(),
            p.display()
        ),
        (Some(p), _) => p.clone(),
        (None, Some(s)) => s.containerd_config.clone(),
        (None, None) => PathBuf::from(DEFAULT_CONTAINERD_CONFIG),
    };
    if !path.is_absolute() || path.file_name().is_none() {
        bail!(
            "--containerd-config {} is not an absolute file path",
            path.display()
        );
    }
    Ok(path)
}

/// Every node path `husk install` writes with the default options (for the DaemonSet check).
#[cfg(test)]
pub fn node_paths_written() -> Vec<PathBuf> {
    let config = Path::new(DEFAULT_CONTAINERD_CONFIG);
    let mut paths: Vec<PathBuf> = ARTIFACTS.iter().map(|a| PathBuf::from(a.dest)).collect();
    paths.extend([state::STATE_PATH, HUSK_CONFIG, SHIM_LINK].map(PathBuf::from));
    paths.push(config.to_owned());
    paths.push(backup_path(config));
    paths.push(config.parent().expect("absolute").join(DROP_IN));
    paths
}

/// `husk install`.
pub fn install(args: InstallArgs) -> Result<()> {
    let root = Root::new(&args.common.prefix)?;
    let previous = State::load(&root)?;
    let config = containerd_config(&args.common, previous.as_ref())?;
    let config_local = root.local(&config);
    let config_dir = config.parent().expect("an absolute file path has a parent");
    let original = files::read_optional(&config_local)?;
    let drop_in = DropIn {
        host_path: config_dir.join(DROP_IN),
        import: DROP_IN.to_owned(),
    };
    let runtime = Runtime {
        config_path: HUSK_CONFIG.to_owned(),
    };
    let prev_added = previous
        .as_ref()
        .map(|s| s.added.clone())
        .unwrap_or_default();
    let plan = containerd::install(
        original.as_deref(),
        &prev_added,
        &runtime,
        &drop_in,
        config_dir,
    )
    .with_context(|| format!("{}", config.display()))?;
    let drop_in_local = root.local(&drop_in.host_path);
    let prev_drop_in_sha = previous.as_ref().and_then(|s| s.drop_in_sha256.clone());
    let drop_in_changed = match &plan.drop_in {
        None => false,
        Some(text) => {
            let existing = files::read_optional(&drop_in_local)?;
            if let Some(old) = &existing {
                let ours = prev_drop_in_sha.as_deref() == Some(&files::sha256(old.as_bytes()));
                if !ours && old != text {
                    bail!(
                        "{} exists and was not written by husk install: move it away first",
                        drop_in.host_path.display()
                    );
                }
            }
            existing.as_deref() != Some(text)
        }
    };

    let sources = if args.from.is_empty() {
        default_sources()
    } else {
        args.from.clone()
    };
    let artifacts = locate(&sources)?;

    if args.common.dry_run {
        return print_plan(&artifacts, &config, &plan, &drop_in, drop_in_changed);
    }

    let mut state = previous
        .clone()
        .unwrap_or_else(|| State::new(&config, original.is_some()));
    if original.is_none() && state.config_existed {
        // The user's file went away since the first install: this install makes a new one,
        // and uninstall must remove it rather than bring the old one back.
        state.config_existed = false;
        state.backup_exact = false;
    }
    // Files first: a runtime in containerd's configuration without its shim fails every Pod.
    for (artifact, src) in &artifacts {
        let dest = Path::new(artifact.dest);
        let dir = dest.parent().expect("artifact paths have a parent");
        let created = root.create_dirs(dir)?;
        state.note_created(created);
        let changed = files::install_file(src, &root.local(dest), artifact.mode)?;
        let verb = if changed { "installed" } else { "unchanged" };
        say(format_args!(
            "{verb} {} (from {})",
            dest.display(),
            src.display()
        ));
    }
    install_husk_config(&root, &mut state)?;
    let link_dir = Path::new(SHIM_LINK).parent().expect("has a parent");
    let created = root.create_dirs(link_dir)?;
    state.note_created(created);
    if files::ensure_symlink(&root.local(Path::new(SHIM_LINK)), Path::new(SHIM))? {
        say(format_args!("linked {SHIM_LINK} -> {SHIM}"));
    }
    state.save(&root)?;

    // containerd's configuration: the drop-in, then the main file.
    if let Some(text) = &plan.drop_in {
        if drop_in_changed {
            let created = root.create_dirs(drop_in.host_path.parent().expect("has a parent"))?;
            state.note_created(created);
            files::write_atomic(&drop_in_local, text.as_bytes(), 0o644)?;
            say(format_args!("wrote {}", drop_in.host_path.display()));
        }
        state.drop_in = Some(drop_in.host_path.clone());
        state.drop_in_sha256 = Some(files::sha256(text.as_bytes()));
    }
    if let (Some(old), Some(prev)) = (&original, &previous) {
        // Someone else edited the file since husk last wrote it: the backup no longer is
        // "the file minus husk's part".
        if prev.written_sha256.as_deref() != Some(&files::sha256(old.as_bytes())) {
            state.backup_exact = false;
        }
    }
    if let Some(text) = &plan.text {
        if let (Some(old), None) = (&original, &state.backup) {
            let backup = backup_path(&config);
            write_backup(&root.local(&backup), old)?;
            say(format_args!(
                "saved {} as {}",
                config.display(),
                backup.display()
            ));
            state.backup = Some(backup);
            state.backup_exact = true;
        }
        if original.is_none() {
            let created = root.create_dirs(config_dir)?;
            state.note_created(created);
        }
        files::write_atomic(&config_local, text.as_bytes(), 0o644)?;
        say(format_args!(
            "added the {RUNTIME_NAME:?} runtime ({RUNTIME_TYPE}) to {}",
            config.display()
        ));
    } else {
        say(format_args!("{} unchanged", config.display()));
    }
    let final_text = plan.text.as_deref().or(original.as_deref()).unwrap_or("");
    state.format = Some(plan.format);
    state.added = plan.added.clone();
    state.written_sha256 = Some(files::sha256(final_text.as_bytes()));
    state.save(&root)?;
    for note in &plan.notes {
        say(format_args!("note: {note}"));
    }
    finish(&args.common, plan.text.is_some() || drop_in_changed)
}

/// Writes `/etc/husk/config.toml` unless there is one; an existing one must be valid.
fn install_husk_config(root: &Root, state: &mut State) -> Result<()> {
    let host = Path::new(HUSK_CONFIG);
    let local = root.local(host);
    match files::read_optional(&local)? {
        Some(text) => {
            husk_shim::config::Config::parse(host, &text)
                .context("the existing husk configuration is not valid; fix or remove it")?;
            say(format_args!("kept {HUSK_CONFIG}"));
        }
        None => {
            let created = root.create_dirs(host.parent().expect("has a parent"))?;
            state.note_created(created);
            let text = husk_config_text();
            files::write_atomic(&local, text.as_bytes(), 0o644)?;
            state.husk_config_sha256 = Some(files::sha256(text.as_bytes()));
            say(format_args!("wrote {HUSK_CONFIG}"));
        }
    }
    Ok(())
}

fn backup_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().expect("checked").to_os_string();
    name.push(".husk-backup");
    config.with_file_name(name)
}

/// Saves the user's file; an existing different backup is never overwritten.
fn write_backup(path: &Path, text: &str) -> Result<()> {
    match files::read_optional(path)? {
        Some(old) if old == text => Ok(()),
        Some(_) => bail!(
            "{} exists (from an earlier install whose state is gone?): move it away first",
            path.display()
        ),
        None => files::write_atomic(path, text.as_bytes(), 0o600),
    }
}

fn print_plan(
    artifacts: &[(&Artifact, PathBuf)],
    config: &Path,
    plan: &containerd::Installed,
    drop_in: &DropIn,
    drop_in_changed: bool,
) -> Result<()> {
    for (artifact, src) in artifacts {
        say(format_args!(
            "would install {} from {}",
            artifact.dest,
            src.display()
        ));
    }
    say(format_args!(
        "would write {HUSK_CONFIG} if it does not exist"
    ));
    say(format_args!("would link {SHIM_LINK} -> {SHIM}"));
    if let (Some(text), true) = (&plan.drop_in, drop_in_changed) {
        say(format_args!("would write {}:", drop_in.host_path.display()));
        print!("{text}");
    }
    match &plan.text {
        Some(text) => {
            say(format_args!(
                "would write {} (keeping a backup):",
                config.display()
            ));
            print!("{text}");
        }
        None => say(format_args!("would leave {} unchanged", config.display())),
    }
    for note in &plan.notes {
        say(format_args!("note: {note}"));
    }
    Ok(())
}

/// Restarts containerd if asked and needed, or says that it is needed.
fn finish(common: &Common, changed: bool) -> Result<()> {
    if !changed {
        say("containerd's configuration did not change: no restart needed");
        return Ok(());
    }
    match &common.restart {
        None => {
            say(format_args!(
                "containerd's configuration changed: restart containerd for it to take effect \
                 ({DEFAULT_RESTART})"
            ));
            Ok(())
        }
        Some(cmd) => {
            say(format_args!("restarting containerd: {cmd}"));
            let status = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .status()
                .with_context(|| format!("running {cmd:?}"))?;
            if !status.success() {
                bail!("{cmd:?} failed ({status})");
            }
            Ok(())
        }
    }
}

/// `husk uninstall`.
pub fn uninstall(args: UninstallArgs) -> Result<()> {
    let root = Root::new(&args.common.prefix)?;
    let Some(state) = State::load(&root)? else {
        say(format_args!(
            "husk is not installed here (no {}): nothing to undo",
            state::STATE_PATH
        ));
        return Ok(());
    };
    let config = containerd_config(&args.common, Some(&state))?;
    if args.common.dry_run {
        say(format_args!(
            "would take husk out of {} and remove /opt/husk, {SHIM_LINK} and (if unchanged) \
             {HUSK_CONFIG}",
            config.display()
        ));
        return Ok(());
    }
    let mut changed = restore_containerd_config(&root, &state)?;
    if let Some(drop_in) = &state.drop_in {
        changed |= remove_if_unchanged(&root, drop_in, state.drop_in_sha256.as_deref())?;
    }
    if files::remove_symlink(&root.local(Path::new(SHIM_LINK)), Path::new(SHIM))? {
        say(format_args!("removed {SHIM_LINK}"));
    }
    for artifact in &ARTIFACTS {
        if files::remove_file(&root.local(Path::new(artifact.dest)))? {
            say(format_args!("removed {}", artifact.dest));
        }
    }
    let husk_config = Path::new(HUSK_CONFIG);
    remove_if_unchanged(&root, husk_config, state.husk_config_sha256.as_deref())?;
    files::remove_file(&root.local(Path::new(state::STATE_PATH)))?;
    let dirs = OWN_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(state.created_dirs.iter().rev().cloned());
    for dir in dirs {
        files::remove_empty_dir(&root.local(&dir))?;
    }
    say("husk is uninstalled");
    finish(&args.common, changed)
}

/// Removes husk's part of containerd's configuration; returns whether the file changed.
fn restore_containerd_config(root: &Root, state: &State) -> Result<bool> {
    let config = &state.containerd_config;
    let local = root.local(config);
    if !state.added.any() && state.config_existed {
        return Ok(false);
    }
    let Some(current) = files::read_optional(&local)? else {
        say(format_args!(
            "{} is gone: nothing to undo there",
            config.display()
        ));
        return Ok(false);
    };
    let untouched = state.written_sha256.as_deref() == Some(&files::sha256(current.as_bytes()));
    if untouched && !state.config_existed {
        files::remove_file(&local)?;
        say(format_args!(
            "removed {} (husk install made it)",
            config.display()
        ));
        return Ok(true);
    }
    if let (true, true, Some(backup)) = (untouched, state.backup_exact, &state.backup) {
        let backup_local = root.local(backup);
        if let Some(original) = files::read_optional(&backup_local)? {
            files::write_atomic(&local, original.as_bytes(), 0o644)?;
            files::remove_file(&backup_local)?;
            say(format_args!(
                "restored {} as it was before husk install",
                config.display()
            ));
            return Ok(true);
        }
    }
    // Edited since husk wrote it: take out husk's part only, keep the rest and the backup.
    let text = containerd::uninstall(&current, &state.added)
        .with_context(|| format!("{}", config.display()))?;
    if text == current {
        return Ok(false);
    }
    files::write_atomic(&local, text.as_bytes(), 0o644)?;
    say(format_args!(
        "took the husk runtime out of {}",
        config.display()
    ));
    if let Some(backup) = &state.backup {
        say(format_args!(
            "note: {} was edited after husk install, so its backup {} was kept",
            config.display(),
            backup.display()
        ));
    }
    Ok(true)
}

/// Removes a file husk wrote if it still has the bytes husk wrote; returns whether it did.
fn remove_if_unchanged(root: &Root, host: &Path, sha256: Option<&str>) -> Result<bool> {
    let Some(sha256) = sha256 else {
        return Ok(false);
    };
    let local = root.local(host);
    let Some(text) = files::read_optional(&local)? else {
        return Ok(false);
    };
    if files::sha256(text.as_bytes()) != sha256 {
        say(format_args!(
            "kept {}: it was changed after husk install wrote it",
            host.display()
        ));
        return Ok(false);
    }
    files::remove_file(&local)?;
    say(format_args!("removed {}", host.display()));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_husk_config_is_valid_and_says_the_defaults() {
        let text = husk_config_text();
        let parsed = husk_shim::config::Config::parse(Path::new(HUSK_CONFIG), &text).unwrap();
        assert_eq!(parsed, husk_shim::config::Config::default());
        assert!(
            text.contains("kernel = \"/opt/husk/share/vmlinux\""),
            "{text}"
        );
    }

    #[test]
    fn artifacts_land_where_the_defaults_look() {
        let d = husk_shim::config::Config::default();
        let dests: Vec<_> = ARTIFACTS.iter().map(|a| Path::new(a.dest)).collect();
        for p in [&d.vmm, &d.kernel, &d.initramfs] {
            assert!(
                dests.contains(&p.as_path()),
                "{} is not installed",
                p.display()
            );
        }
    }

    #[test]
    fn missing_artifacts_are_named_with_how_to_build_them() {
        let e = locate(&[PathBuf::from("/nonexistent")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("vmlinux (kernel-config/build.sh)"), "{e}");
        assert!(e.contains("initramfs or initramfs.cpio"), "{e}");
        assert!(e.contains("/nonexistent"), "{e}");
    }

    #[test]
    fn backup_sits_beside_the_config_and_is_not_a_toml_file() {
        let b = backup_path(Path::new("/etc/containerd/config.toml"));
        assert_eq!(b, Path::new("/etc/containerd/config.toml.husk-backup"));
    }
}
