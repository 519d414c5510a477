//! The passthrough file system behind the device: its configuration (cache policy, xattrs,
//! timeouts) and the server that speaks FUSE over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::guard::GuardedFs;
use super::{FsCounters, FsError};

/// The file system the device serves.
pub(super) type SharedFs = Arc<GuardedFs<PassthroughFs<()>>>;
/// The FUSE server over it.
pub(super) type FsServer = Server<SharedFs>;

/// How long the guest may trust a name or attributes it got before asking again. Short, since
/// the host side (the shim, kubelet's volume updates) changes the share too.
const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// The passthrough configuration husk uses for `root` (an absolute, symlink-free path).
fn passthrough_config(root: &Path) -> Result<Config, FsError> {
    let root_dir = root
        .to_str()
        .ok_or_else(|| FsError::Share {
            path: root.to_path_buf(),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?
        .to_string();
    Ok(Config {
        entry_timeout: CACHE_TIMEOUT,
        attr_timeout: CACHE_TIMEOUT,
        // Close-to-open consistency: the guest caches file data while a file is open and
        // revalidates on open. `never` would make every read a round trip and rule out
        // shared writable mmap on a 6.1 guest; `always` would hide host-side changes.
        cache_policy: CachePolicy::Auto,
        // Writeback caching needs exclusive access to the directory and read access to every
        // file; the host writes to shared/ too.
        writeback: false,
        root_dir,
        xattr: true,
        do_import: true,
        no_open: false,
        no_opendir: false,
        // The server clears setuid/setgid on write and truncate: the guest kernel then skips
        // its getxattr(security.capability) round trip before every write.
        killpriv_v2: true,
        // File handles (open_by_handle_at) would need CAP_DAC_READ_SEARCH; husk keeps O_PATH
        // descriptors and bounds them instead.
        inode_file_handles: false,
        no_readdir: false,
        seal_size: false,
        enable_mntid: true,
        dax_file_size: None,
        dir_entry_timeout: None,
        dir_attr_timeout: None,
        use_host_ino: false,
        allow_direct_io: true,
    })
}

/// Opens `share` and builds the server for it: the passthrough file system with its root
/// imported (so a share that cannot be opened fails here, not at the guest's mount), wrapped in
/// the guard.
pub(super) fn build(
    share: &Path,
    max_fds: u32,
    counters: Arc<FsCounters>,
) -> Result<(FsServer, SharedFs, PathBuf), FsError> {
    let share_err = |source| FsError::Share {
        path: share.to_path_buf(),
        source,
    };
    // The passthrough opens its root with O_NOFOLLOW: resolve the configured path first.
    let root = std::fs::canonicalize(share).map_err(share_err)?;
    if !root.is_dir() {
        return Err(share_err(std::io::ErrorKind::NotADirectory.into()));
    }
    let fs = PassthroughFs::<()>::new(passthrough_config(&root)?).map_err(share_err)?;
    fs.import().map_err(share_err)?;
    let guarded = Arc::new(GuardedFs::new(fs, max_fds, counters));
    Ok((Server::new(Arc::clone(&guarded)), guarded, root))
}
