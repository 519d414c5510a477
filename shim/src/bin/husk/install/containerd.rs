//! Adding the husk runtime to a containerd configuration file, and taking it out again.
//!
//! Which file gets what depends on the file's `version` (decision 0006):
//! - **version 2** (containerd 1.6 and 1.7; 2.x migrates it on load), or no file at all: the
//!   runtime goes into the file itself. A drop-in cannot be used there: 1.6 and 1.7 merge an
//!   imported file's plugin section over the main file's *whole* plugin section, so a drop-in
//!   naming the husk runtime would wipe every other CRI setting. Naming any runtime also
//!   replaces 1.x's built-in runtime table, so when the file names no runtime for the default
//!   runtime name `runc`, `runc` is added too (with its built-in `runtime_type`).
//! - **version 3** (containerd 2.x): the runtime goes into a drop-in, and the file's `imports`
//!   gets its path unless an existing entry already covers it. 2.x merges imported plugin
//!   sections key by key, but does not migrate an imported file of another version, so the
//!   drop-in is version 3 too.
//! - **no `version`** means version 1. A file without plugin sections means the same in
//!   version 1 and 2, so it gets `version = 2`; one with plugin sections is refused.
//!
//! All edits go through `toml_edit`, so the user's comments, order and formatting stay as
//! they were; husk's tables are appended at the end. [`uninstall`] removes exactly what
//! [`Added`] says was added.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml_edit::{DocumentMut, Item, Key, Table, Value};

/// The CRI runtime handler (and RuntimeClass handler) name.
pub const RUNTIME_NAME: &str = "husk";
/// The shim's runtime type: containerd runs `containerd-shim-husk-v2` for it.
pub const RUNTIME_TYPE: &str = "io.containerd.husk.v2";
/// CRI's plugin in version 2 configurations.
const CRI_V2: &str = "io.containerd.grpc.v1.cri";
/// CRI's runtime plugin in version 3 configurations.
const CRI_V3: &str = "io.containerd.cri.v1.runtime";
/// The runtime name containerd 1.x's CRI uses when `default_runtime_name` is not set.
const DEFAULT_RUNTIME: &str = "runc";
/// The built-in `runtime_type` of `runc` in containerd 1.6 and 1.7.
const RUNC_TYPE: &str = "io.containerd.runc.v2";

const RUNTIME_COMMENT: &str =
    "# Added by `husk install` (docs/install.md); `husk uninstall` removes it.\n";
const RUNC_COMMENT: &str =
    "# Added by `husk install`: naming any runtime replaces containerd 1.x's built-in\n\
# runc entry, so runc is named here as it was built in. `husk uninstall` removes it.\n";

/// A configuration format, by its `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `version = 2`: containerd 1.6 and 1.7 (and 2.x, which migrates it).
    V2,
    /// `version = 3`: containerd 2.x.
    V3,
}

/// Errors editing a containerd configuration.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("not valid TOML: {0}")]
    Parse(#[from] toml_edit::TomlError),
    #[error(
        "no `version` key, so this is a version 1 configuration, which husk does not edit: \
         add `version = 2` and rename the plugin sections (`plugins.cri` becomes \
         `plugins.\"io.containerd.grpc.v1.cri\"`), or run `containerd config migrate` (2.x)"
    )]
    Version1,
    #[error("`version = {0}` is not a version husk knows (2: containerd 1.6/1.7, 3: 2.x)")]
    UnknownVersion(i64),
    #[error("`version` is not an integer")]
    BadVersion,
    #[error("`{0}` is not a table")]
    NotATable(String),
    #[error("`{0}` is an inline table: write it as [table] sections so that husk can add to it")]
    Inline(String),
    #[error(
        "`{path}` already exists with runtime_type {found:?} (not {RUNTIME_TYPE:?}); \
         remove or rename it first"
    )]
    Conflict { path: String, found: String },
    #[error("`imports` is not an array of strings")]
    BadImports,
}

/// What an install added to the main configuration file; [`uninstall`] takes out exactly this.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// The husk runtime's tables (version 2 files).
    #[serde(default)]
    pub runtime: bool,
    /// The `runc` runtime, named because containerd 1.x would drop its built-in one.
    #[serde(default)]
    pub runc: bool,
    /// `version = 2`, in a file that had no version and no plugin sections.
    #[serde(default)]
    pub version: bool,
    /// The entry appended to `imports` (version 3 files).
    #[serde(default)]
    pub import: Option<String>,
    /// Whether the `imports` key itself was created for that entry.
    #[serde(default)]
    pub imports_key: bool,
}

impl Added {
    /// Whether anything was added to the main file.
    pub fn any(&self) -> bool {
        self.runtime || self.runc || self.version || self.import.is_some()
    }
}

/// What the husk runtime entry says.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The runtime options' `ConfigPath`: husk's configuration file, as the host sees it.
    pub config_path: String,
}

/// Where a version 3 configuration's drop-in goes.
#[derive(Debug, Clone)]
pub struct DropIn {
    /// The drop-in's absolute path as the host sees it.
    pub host_path: PathBuf,
    /// The `imports` entry that names it (relative entries are resolved against the main
    /// file's directory).
    pub import: String,
}

/// The result of [`install`].
#[derive(Debug)]
pub struct Installed {
    pub format: Format,
    /// The main file's new text; `None` when it stays as it is.
    pub text: Option<String>,
    /// What the main file now holds of husk's.
    pub added: Added,
    /// The drop-in's text (version 3), `None` when no drop-in is needed.
    pub drop_in: Option<String>,
    /// Things the user should know (already configured by hand, CRI disabled, ...).
    pub notes: Vec<String>,
}

/// Plans the install into the main file `original` (`None`: the file does not exist; a
/// version 2 file is then made). `previous` is what an earlier install added (from its state
/// file), so that installing again replaces it instead of failing or adding it twice.
pub fn install(
    original: Option<&str>,
    previous: &Added,
    runtime: &Runtime,
    drop_in: &DropIn,
    config_dir: &Path,
) -> Result<Installed, EditError> {
    let mut doc = match original {
        Some(text) => {
            let mut doc: DocumentMut = text.parse()?;
            remove(&mut doc, previous)?;
            doc
        }
        None => {
            let mut doc = DocumentMut::new();
            doc.decor_mut().set_prefix(
                "# containerd configuration made by `husk install`: there was none, so containerd\n\
                 # used its built-in defaults. These keep them and add husk's runtime.\n",
            );
            doc.insert("version", toml_edit::value(2));
            doc
        }
    };
    let mut added = Added::default();
    let mut notes = Vec::new();
    let format = match version(&doc)? {
        Some(2) => Format::V2,
        Some(3) => Format::V3,
        Some(v) => return Err(EditError::UnknownVersion(v)),
        None if doc.contains_key("plugins") => return Err(EditError::Version1),
        None => {
            doc.insert("version", toml_edit::value(2));
            added.version = true;
            Format::V2
        }
    };
    let cri = match format {
        Format::V2 => CRI_V2,
        Format::V3 => CRI_V3,
    };
    if plugin_disabled(&doc, cri) {
        notes.push(format!(
            "containerd's `disabled_plugins` lists {cri:?}: Kubernetes cannot use the husk \
             runtime until CRI is enabled (`ctr run --runtime {RUNTIME_TYPE}` still works)"
        ));
    }
    let runtimes_path = ["plugins", cri, "containerd", "runtimes"];
    let mut drop_in_text = None;
    let existing = runtime_type_at(doc.as_table(), &runtimes_path)?;
    if let Some(found) = existing {
        // Configured by hand (ours were removed above).
        let path = display_path(&[&runtimes_path[..], &[RUNTIME_NAME]].concat());
        if found != RUNTIME_TYPE {
            return Err(EditError::Conflict { path, found });
        }
        notes.push(format!(
            "`{path}` was already configured (not by husk install): left as it is"
        ));
    } else if format == Format::V2 {
        add_v2_runtime(&mut doc, runtime, &mut added, &mut notes)?;
    } else {
        drop_in_text = Some(drop_in_v3(runtime));
        if !imports_cover(&doc, config_dir, &drop_in.host_path)? {
            added.imports_key = !doc.contains_key("imports");
            add_import(&mut doc, &drop_in.import)?;
            added.import = Some(drop_in.import.clone());
        }
    }
    let text = doc.to_string();
    let text = (original != Some(text.as_str())).then_some(text);
    Ok(Installed {
        format,
        text,
        added,
        drop_in: drop_in_text,
        notes,
    })
}

/// Takes out of `current` what an install added.
pub fn uninstall(current: &str, added: &Added) -> Result<String, EditError> {
    let mut doc: DocumentMut = current.parse()?;
    remove(&mut doc, added)?;
    Ok(doc.to_string())
}

/// The configuration's `version`, `None` if it has none.
fn version(doc: &DocumentMut) -> Result<Option<i64>, EditError> {
    match doc.get("version") {
        None => Ok(None),
        Some(item) => item.as_integer().map(Some).ok_or(EditError::BadVersion),
    }
}

fn plugin_disabled(doc: &DocumentMut, plugin: &str) -> bool {
    let short = plugin.rsplit('.').next().unwrap_or(plugin);
    doc.get("disabled_plugins")
        .and_then(Item::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|v| matches!(v.as_str(), Some(p) if p == plugin || p == short))
        })
}

/// Adds husk's runtime (and `runc` if 1.x would lose it) at the end of a version 2 file.
fn add_v2_runtime(
    doc: &mut DocumentMut,
    runtime: &Runtime,
    added: &mut Added,
    notes: &mut Vec<String>,
) -> Result<(), EditError> {
    let mut position = last_position(doc.as_table()) + 1;
    let default_name = doc
        .get("plugins")
        .and_then(|p| p.get(CRI_V2))
        .and_then(|c| c.get("containerd"))
        .and_then(|c| c.get("default_runtime_name"))
        .and_then(Item::as_str)
        .unwrap_or(DEFAULT_RUNTIME)
        .to_owned();
    let runtimes = table_at(
        doc.as_table_mut(),
        &["plugins", CRI_V2, "containerd", "runtimes"],
    )?;
    if !runtimes.contains_key(&default_name) {
        if default_name == DEFAULT_RUNTIME {
            let mut runc = Table::new();
            runc.decor_mut().set_prefix(format!("\n{RUNC_COMMENT}"));
            insert_indented(&mut runc, "runtime_type", toml_edit::value(RUNC_TYPE));
            runc.set_position(position);
            position += 1;
            runtimes.insert(DEFAULT_RUNTIME, Item::Table(runc));
            added.runc = true;
        } else {
            notes.push(format!(
                "default_runtime_name is {default_name:?} but no runtime of that name is \
                 configured: containerd 1.x will not load CRI (this was so before husk)"
            ));
        }
    }
    let mut husk = Table::new();
    husk.decor_mut().set_prefix(format!("\n{RUNTIME_COMMENT}"));
    fill_runtime(&mut husk, runtime, position);
    runtimes.insert(RUNTIME_NAME, Item::Table(husk));
    added.runtime = true;
    Ok(())
}

/// Fills a runtime table (and its `options` sub-table, at `position + 1`).
fn fill_runtime(table: &mut Table, runtime: &Runtime, position: usize) {
    insert_indented(table, "runtime_type", toml_edit::value(RUNTIME_TYPE));
    // A privileged Pod's containers run in the guest: the host's devices mean nothing there.
    insert_indented(
        table,
        "privileged_without_host_devices",
        toml_edit::value(true),
    );
    table.set_position(position);
    let mut options = Table::new();
    options.decor_mut().set_prefix("");
    insert_indented(
        &mut options,
        "ConfigPath",
        toml_edit::value(runtime.config_path.as_str()),
    );
    options.set_position(position + 1);
    table.insert("options", Item::Table(options));
}

/// Inserts `key = value` indented by two spaces, as containerd's own examples are.
fn insert_indented(table: &mut Table, key: &str, value: Item) {
    table.insert(key, value);
    if let Some(mut k) = table.key_mut(key) {
        k.leaf_decor_mut().set_prefix("  ");
    }
}

/// The version 3 drop-in that names husk's runtime.
pub fn drop_in_v3(runtime: &Runtime) -> String {
    let mut doc = DocumentMut::new();
    doc.decor_mut().set_prefix(
        "# husk's runtime for containerd 2.x, written by `husk install` and imported by the main\n\
         # configuration (docs/install.md). `husk uninstall` removes it.\n",
    );
    doc.insert("version", toml_edit::value(3));
    let runtimes = table_at(
        doc.as_table_mut(),
        &["plugins", CRI_V3, "containerd", "runtimes"],
    )
    .expect("a new document has no conflicting tables");
    let mut husk = Table::new();
    husk.decor_mut().set_prefix("\n");
    fill_runtime(&mut husk, runtime, 1);
    runtimes.insert(RUNTIME_NAME, Item::Table(husk));
    doc.to_string()
}

/// Appends `entry` to the top-level `imports` array, creating it if needed.
fn add_import(doc: &mut DocumentMut, entry: &str) -> Result<(), EditError> {
    match doc.get_mut("imports") {
        None => {
            let mut array = toml_edit::Array::new();
            array.push(entry);
            doc.insert("imports", toml_edit::value(array));
        }
        Some(item) => {
            let array = item.as_array_mut().ok_or(EditError::BadImports)?;
            if !array.iter().all(|v| v.is_str()) {
                return Err(EditError::BadImports);
            }
            array.push(entry);
        }
    }
    Ok(())
}

/// Whether an existing `imports` entry already loads `target` (exact paths, and `*`/`?`
/// patterns in the file name; anything fancier counts as not covering, which at worst names
/// the file twice: containerd loads each file once).
fn imports_cover(doc: &DocumentMut, config_dir: &Path, target: &Path) -> Result<bool, EditError> {
    let Some(item) = doc.get("imports") else {
        return Ok(false);
    };
    let array = item.as_array().ok_or(EditError::BadImports)?;
    for value in array {
        let pattern = value.as_str().ok_or(EditError::BadImports)?;
        if import_matches(pattern, config_dir, target) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn import_matches(pattern: &str, config_dir: &Path, target: &Path) -> bool {
    let resolved = normalize(&config_dir.join(pattern));
    let target = normalize(target);
    let is_glob = |s: &str| s.contains(['*', '?', '[']);
    let Some(pattern_str) = resolved.to_str() else {
        return false;
    };
    if !is_glob(pattern_str) {
        return resolved == target;
    }
    let (Some(dir), Some(name)) = (resolved.parent(), resolved.file_name()) else {
        return false;
    };
    let (Some(dir_str), Some(name)) = (dir.to_str(), name.to_str()) else {
        return false;
    };
    if is_glob(dir_str) || name.contains('[') || Some(dir) != target.parent() {
        return false;
    }
    let Some(file) = target.file_name().and_then(|f| f.to_str()) else {
        return false;
    };
    wildcard(name.as_bytes(), file.as_bytes())
}

/// `*` and `?` matching, as Go's `filepath.Match` does within one path element.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && wildcard(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && wildcard(rest, &name[1..]),
    }
}

/// Resolves `.` and `..` lexically, as containerd's `filepath.Clean` does.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Removes what `added` says an install added; tables that only held husk's go too.
fn remove(doc: &mut DocumentMut, added: &Added) -> Result<(), EditError> {
    if added.runtime || added.runc {
        let path = ["plugins", CRI_V2, "containerd", "runtimes"];
        if let Some(runtimes) = existing_table_mut(doc.as_table_mut(), &path)? {
            if added.runtime {
                runtimes.remove(RUNTIME_NAME);
            }
            if added.runc && is_plain_runc(runtimes.get(DEFAULT_RUNTIME)) {
                runtimes.remove(DEFAULT_RUNTIME);
            }
        }
        prune_implicit(doc.as_table_mut(), &path);
    }
    if let Some(entry) = &added.import {
        if let Some(array) = doc.get_mut("imports").and_then(Item::as_array_mut) {
            let last = array
                .iter()
                .enumerate()
                .filter(|(_, v)| v.as_str() == Some(entry))
                .last();
            if let Some((i, _)) = last {
                array.remove(i);
            }
            if added.imports_key && array.is_empty() {
                doc.remove("imports");
            }
        }
    }
    if added.version {
        doc.remove("version");
    }
    Ok(())
}

/// Whether `item` is still the `runc` entry husk added (only its `runtime_type`).
fn is_plain_runc(item: Option<&Item>) -> bool {
    item.and_then(Item::as_table).is_some_and(|t| {
        t.len() == 1 && t.get("runtime_type").and_then(Item::as_str) == Some(RUNC_TYPE)
    })
}

/// Removes the empty implicit tables along `path`, deepest first.
fn prune_implicit(root: &mut Table, path: &[&str]) {
    fn prune(table: &mut Table, path: &[&str]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let Some(Item::Table(child)) = table.get_mut(first) else {
            return;
        };
        prune(child, rest);
        if child.is_implicit() && child.is_empty() {
            table.remove(first);
        }
    }
    prune(root, path);
}

/// The `runtime_type` of the husk runtime under `runtimes_path`, if it is configured.
fn runtime_type_at(root: &Table, runtimes_path: &[&str]) -> Result<Option<String>, EditError> {
    let mut table = root;
    let mut walked = Vec::new();
    for key in runtimes_path.iter().chain([&RUNTIME_NAME]) {
        walked.push(*key);
        match table.get(key) {
            None => return Ok(None),
            Some(Item::Table(t)) => table = t,
            Some(Item::Value(Value::InlineTable(t))) => {
                if *key == RUNTIME_NAME {
                    let found = t.get("runtime_type").and_then(Value::as_str);
                    return Ok(Some(found.unwrap_or_default().to_owned()));
                }
                return Err(EditError::Inline(display_path(&walked)));
            }
            Some(_) => return Err(EditError::NotATable(display_path(&walked))),
        }
    }
    let found = table.get("runtime_type").and_then(Item::as_str);
    Ok(Some(found.unwrap_or_default().to_owned()))
}

/// The table at `path`, creating missing ones as implicit tables (they print no header).
fn table_at<'a>(root: &'a mut Table, path: &[&str]) -> Result<&'a mut Table, EditError> {
    let mut table = root;
    for (i, key) in path.iter().enumerate() {
        let here = || display_path(&path[..=i]);
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = match item {
            Item::Table(t) => t,
            Item::Value(Value::InlineTable(_)) => return Err(EditError::Inline(here())),
            _ => return Err(EditError::NotATable(here())),
        };
    }
    Ok(table)
}

/// The table at `path` if it exists.
fn existing_table_mut<'a>(
    root: &'a mut Table,
    path: &[&str],
) -> Result<Option<&'a mut Table>, EditError> {
    let mut table = root;
    for (i, key) in path.iter().enumerate() {
        table = match table.get_mut(key) {
            None => return Ok(None),
            Some(Item::Table(t)) => t,
            Some(Item::Value(Value::InlineTable(_))) => {
                return Err(EditError::Inline(display_path(&path[..=i])))
            }
            Some(_) => return Err(EditError::NotATable(display_path(&path[..=i]))),
        };
    }
    Ok(Some(table))
}

/// The highest table position in the document, so that new tables go after all others.
fn last_position(table: &Table) -> usize {
    let children = table.iter().flat_map(|(_, item)| match item {
        Item::Table(t) => vec![last_position(t)],
        Item::ArrayOfTables(a) => a.iter().map(last_position).collect(),
        _ => Vec::new(),
    });
    children.chain(table.position()).max().unwrap_or(0)
}

/// `plugins."io.containerd.grpc.v1.cri".containerd` for messages.
fn display_path(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| Key::new(*k).display_repr().into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests;
