//! A busybox OCI image for containerd, written as an [OCI image layout] in a tar
//! archive, the format `ctr image import` reads:
//!
//! ```text
//! oci-layout                  {"imageLayoutVersion":"1.0.0"}
//! index.json                  an image index with one manifest (linux/<arch>)
//! blobs/sha256/<manifest>     config + one layer
//! blobs/sha256/<config>       architecture, os, Env, Cmd, rootfs.diff_ids
//! blobs/sha256/<layer>        an uncompressed tar: /bin/busybox, applet links, /etc
//! ```
//!
//! The layer is not compressed (`application/vnd.oci.image.layer.v1.tar`), so
//! its digest is also its diff id. Every timestamp is fixed, so the same busybox
//! gives the same digests.
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::tar::TarWriter;
use crate::oci::APPLETS;

/// The name the tests give the busybox image.
pub const DEFAULT_IMAGE: &str = "husk.test/busybox:latest";
/// The name the tests give the pause image, CRI's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "husk.test/pause:latest";
/// The pause image's command: wait for ever, exit 0 at once on SIGTERM or
/// SIGINT. `wait` (not a foreground `sleep`) lets the trap run as soon as the
/// signal arrives; the orphaned `sleep` dies with the sandbox's PID namespace.
pub const PAUSE_CMD: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 2147483647 & wait; done",
];
/// Applets the image links besides [`APPLETS`], for the CRI tests (servers and
/// clients for pod networking, file juggling for volumes).
pub const EXTRA_APPLETS: &[&str] = &[
    "httpd", "wget", "nc", "ip", "ifconfig", "mv", "ln", "cp", "chmod", "sed", "printf", "test",
    "[", "timeout", "awk", "cut", "tr", "mount", "find", "date", "mkfifo", "rmdir", "basename",
    "dirname", "xargs", "sort", "uniq", "md5sum", "free", "expr", "yes", "df", "du", "nproc",
    "pidof", "usleep",
];
/// Media type of an OCI image index.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image manifest.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer.
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The modification time of every file in the archives: 2024-01-01T00:00:00Z.
const MTIME: u64 = 1_704_067_200;
/// [`MTIME`] as the config's `created`.
const CREATED: &str = "2024-01-01T00:00:00Z";
/// The image's `PATH`.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What can go wrong building or writing an image.
#[derive(Debug, Error)]
pub enum ImageError {
    /// An input file (the busybox binary) could not be read.
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A tar entry name or link target is empty, longer than 100 bytes or holds a NUL.
    #[error("tar entry name {0:?} is empty, too long or holds a NUL")]
    TarName(String),
    /// The image reference is not `name:tag` in the characters references allow.
    #[error("image reference {0:?} is not lower-case name:tag")]
    Reference(String),
    /// Writing the archive failed.
    #[error("writing the image")]
    Io(#[from] io::Error),
}

/// A content-addressed blob of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
    /// `sha256:<64 hex digits>` of `bytes`.
    pub digest: String,
}

impl Blob {
    /// A blob of `bytes`, with its digest computed.
    pub fn new(media_type: &'static str, bytes: Vec<u8>) -> Self {
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        Self {
            media_type,
            bytes,
            digest,
        }
    }

    /// The hex part of the digest: the blob's file name under `blobs/sha256/`.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    /// The OCI descriptor (`mediaType`, `digest`, `size`) pointing at this blob.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }
}

/// The lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Go architecture name of this machine (`amd64`, `arm64`), as OCI platforms use it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A single-layer OCI image for this machine's platform, ready to write.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The reference, e.g. [`DEFAULT_IMAGE`].
    pub name: String,
    pub layer: Blob,
    pub config: Blob,
    pub manifest: Blob,
    /// `index.json` (not a blob: the layout's entry point).
    pub index: Vec<u8>,
}

impl OciImage {
    /// An image named `name` (`repository:tag`) whose only layer is the
    /// uncompressed tar `layer` and whose default command is `cmd`.
    ///
    /// The archive does not name the image: import it with `ctr image import
    /// --index-name NAME`, which makes one image `NAME` pointing at the index.
    /// The index's manifest entry carries no annotations, because
    /// - with `io.containerd.image.name: NAME` as well, containerd 1.6 makes the
    ///   image `NAME` point at the index, then repoints it at the manifest, and the
    ///   index blob is garbage-collected before the unpack ("content digest ...:
    ///   not found");
    /// - with `org.opencontainers.image.ref.name: TAG`, ctr (1.6 to 2.1) adds a
    ///   second image `import-<date>:TAG`.
    pub fn new(name: &str, layer: Vec<u8>, cmd: &[&str]) -> Result<Self, ImageError> {
        reference_tag(name)?;
        let layer = Blob::new(MEDIA_LAYER_TAR, layer);
        let config = json!({
            "created": CREATED,
            "architecture": oci_arch(),
            "os": "linux",
            "config": {"Env": [PATH_ENV], "Cmd": cmd, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            "history": [{"created": CREATED, "created_by": "husk-image"}],
        });
        let config = Blob::new(MEDIA_CONFIG, to_json(&config));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        });
        let manifest = Blob::new(MEDIA_MANIFEST, to_json(&manifest));
        let mut entry = manifest.descriptor();
        entry["platform"] = json!({"architecture": oci_arch(), "os": "linux"});
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [entry],
        });
        Ok(Self {
            name: name.to_string(),
            layer,
            config,
            manifest,
            index: to_json(&index),
        })
    }

    /// The busybox image: the static busybox at `busybox` as `/bin/busybox`, its
    /// applets as links, `/etc/passwd` and `/etc/group`; the command is `sh`.
    pub fn busybox(name: &str, busybox: &Path) -> Result<Self, ImageError> {
        let binary = std::fs::read(busybox).map_err(|source| ImageError::Read {
            path: busybox.to_path_buf(),
            source,
        })?;
        Self::new(name, busybox_layer(&binary)?, &["sh"])
    }

    /// [`OciImage::busybox`] with more files: `(path in the image, mode, contents)`,
    /// each under a directory the busybox layer has (e.g. `usr/bin/...`).
    pub fn busybox_with(
        name: &str,
        busybox: &Path,
        files: &[(&str, u32, Vec<u8>)],
    ) -> Result<Self, ImageError> {
        let binary = std::fs::read(busybox).map_err(|source| ImageError::Read {
            path: busybox.to_path_buf(),
            source,
        })?;
        Self::new(name, busybox_layer_with(&binary, files)?, &["sh"])
    }

    /// The pause image for CRI's sandboxes: the busybox layer (the same blob as
    /// [`OciImage::busybox`]'s) running [`PAUSE_CMD`].
    pub fn pause(name: &str, busybox: &Path) -> Result<Self, ImageError> {
        let binary = std::fs::read(busybox).map_err(|source| ImageError::Read {
            path: busybox.to_path_buf(),
            source,
        })?;
        Self::new(name, busybox_layer(&binary)?, PAUSE_CMD)
    }

    /// Writes the image layout as a tar archive to `out`.
    pub fn write_layout<W: Write>(&self, out: W) -> Result<W, ImageError> {
        let mut tar = TarWriter::new(out, MTIME);
        tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        tar.file("index.json", 0o644, &self.index)?;
        tar.dir("blobs", 0o755)?;
        tar.dir("blobs/sha256", 0o755)?;
        for blob in [&self.manifest, &self.config, &self.layer] {
            tar.file(&format!("blobs/sha256/{}", blob.hex()), 0o644, &blob.bytes)?;
        }
        tar.finish()
    }

    /// Writes the image layout tar archive to the file `path` (replacing it).
    pub fn write_layout_file(&self, path: &Path) -> Result<(), ImageError> {
        let file = std::fs::File::create(path)?;
        let mut out = self.write_layout(io::BufWriter::new(file))?;
        out.flush()?;
        Ok(())
    }
}

/// The uncompressed layer of the busybox image, with `binary` as `/bin/busybox`.
pub fn busybox_layer(binary: &[u8]) -> Result<Vec<u8>, ImageError> {
    busybox_layer_with(binary, &[])
}

/// [`busybox_layer`] with `files` added (see [`OciImage::busybox_with`]).
fn busybox_layer_with(
    binary: &[u8],
    files: &[(&str, u32, Vec<u8>)],
) -> Result<Vec<u8>, ImageError> {
    let mut tar = TarWriter::new(Vec::new(), MTIME);
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("var", 0o755),
    ] {
        tar.dir(dir, mode)?;
    }
    tar.file("bin/busybox", 0o755, binary)?;
    let extra = EXTRA_APPLETS.iter().filter(|a| !APPLETS.contains(a));
    for applet in APPLETS.iter().chain(extra) {
        tar.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    tar.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    tar.file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n")?;
    if files
        .iter()
        .any(|(path, _, _)| path.starts_with("usr/bin/"))
    {
        tar.dir("usr/bin", 0o755)?;
    }
    for (path, mode, contents) in files {
        tar.file(path, *mode, contents)?;
    }
    tar.finish()
}

/// The tag of `reference` (`name:tag`), after checking its characters.
fn reference_tag(reference: &str) -> Result<&str, ImageError> {
    let bad = || ImageError::Reference(reference.to_string());
    let (repo, tag) = reference.rsplit_once(':').ok_or_else(bad)?;
    let repo_ok = !repo.is_empty()
        && !repo.starts_with('/')
        && !repo.ends_with('/')
        && repo
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/'));
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if repo_ok && tag_ok {
        Ok(tag)
    } else {
        Err(bad())
    }
}

fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a serde_json::Value always serializes")
}

#[cfg(test)]
mod tests {
    use super::super::tar::tests::{read_tar, TarEntry};
    use super::*;
    use std::collections::BTreeMap;

    const FAKE_BUSYBOX: &[u8] = b"\x7fELF not really busybox";

    fn image() -> OciImage {
        OciImage::new(DEFAULT_IMAGE, busybox_layer(FAKE_BUSYBOX).unwrap(), &["sh"]).unwrap()
    }

    /// The layout archive's files by name.
    fn layout(img: &OciImage) -> BTreeMap<String, TarEntry> {
        let bytes = img.write_layout(Vec::new()).unwrap();
        read_tar(&bytes)
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// The blob a descriptor points at, after checking its size.
    fn follow<'a>(files: &'a BTreeMap<String, TarEntry>, desc: &Value) -> &'a [u8] {
        let digest = desc["digest"].as_str().unwrap();
        let hex = digest.strip_prefix("sha256:").unwrap();
        let blob = &files[&format!("blobs/sha256/{hex}")].data;
        assert_eq!(
            desc["size"].as_u64().unwrap(),
            blob.len() as u64,
            "{digest}"
        );
        blob
    }

    #[test]
    fn every_blob_is_named_by_its_sha256() {
        let files = layout(&image());
        let blobs: Vec<_> = files
            .values()
            .filter(|e| e.name.starts_with("blobs/sha256/") && e.kind == b'0')
            .collect();
        assert_eq!(blobs.len(), 3, "manifest, config, layer");
        for b in blobs {
            assert_eq!(b.name, format!("blobs/sha256/{}", sha256_hex(&b.data)));
        }
        assert_eq!(
            parse(&files["oci-layout"].data),
            json!({"imageLayoutVersion": "1.0.0"})
        );
        assert_eq!(files["blobs/"].kind, b'5');
        assert_eq!(files["blobs/sha256/"].kind, b'5');
    }

    #[test]
    fn index_manifest_config_and_layer_link_up() {
        let img = image();
        let files = layout(&img);
        let index = parse(&files["index.json"].data);
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], MEDIA_INDEX);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1);
        let entry = &manifests[0];
        assert_eq!(entry["mediaType"], MEDIA_MANIFEST);
        assert_eq!(entry["digest"], img.manifest.digest.as_str());
        assert_eq!(
            entry["platform"],
            json!({"architecture": oci_arch(), "os": "linux"})
        );
        assert!(entry.get("annotations").is_none(), "{entry}");

        let manifest = parse(follow(&files, entry));
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], MEDIA_CONFIG);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], MEDIA_LAYER_TAR);

        let config = parse(follow(&files, &manifest["config"]));
        assert_eq!(config["architecture"], oci_arch());
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Cmd"], json!(["sh"]));
        assert!(config["config"]["Env"][0]
            .as_str()
            .unwrap()
            .starts_with("PATH="));
        assert_eq!(config["rootfs"]["type"], "layers");
        // Uncompressed: the diff id is the layer's own digest.
        assert_eq!(config["rootfs"]["diff_ids"], json!([layers[0]["digest"]]));
        let layer = follow(&files, &layers[0]);
        assert_eq!(layer, img.layer.bytes.as_slice());
    }

    #[test]
    fn the_layer_is_a_busybox_root() {
        let img = image();
        let entries: BTreeMap<String, TarEntry> = read_tar(&img.layer.bytes)
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        let bb = &entries["bin/busybox"];
        assert_eq!(
            (bb.kind, bb.mode, bb.data.as_slice()),
            (b'0', 0o755, FAKE_BUSYBOX)
        );
        for applet in ["sh", "echo", "true", "cat", "sleep"] {
            let link = &entries[&format!("bin/{applet}")];
            assert_eq!(
                (link.kind, link.link.as_str()),
                (b'2', "busybox"),
                "{applet}"
            );
        }
        assert_eq!((entries["tmp/"].kind, entries["tmp/"].mode), (b'5', 0o1777));
        for dir in ["proc/", "sys/", "dev/", "etc/"] {
            assert_eq!(entries[dir].kind, b'5', "{dir}");
        }
        let passwd = String::from_utf8(entries["etc/passwd"].data.clone()).unwrap();
        assert!(passwd.starts_with("root:x:0:0:"));
    }

    #[test]
    fn the_pause_image_shares_the_layer_and_waits_for_a_signal() {
        let dir = std::env::temp_dir().join(format!("husk-pause-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bb = dir.join("busybox");
        std::fs::write(&bb, FAKE_BUSYBOX).unwrap();
        let pause = OciImage::pause(PAUSE_IMAGE, &bb).unwrap();
        let busybox = OciImage::busybox(DEFAULT_IMAGE, &bb).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(pause.layer.digest, busybox.layer.digest);
        assert_ne!(pause.manifest.digest, busybox.manifest.digest);
        let config = parse(&pause.config.bytes);
        assert_eq!(config["config"]["Cmd"], json!(PAUSE_CMD));
        let names: Vec<String> = read_tar(&pause.layer.bytes)
            .into_iter()
            .map(|e| e.name)
            .collect();
        for applet in ["bin/httpd", "bin/wget", "bin/sleep", "bin/["] {
            assert_eq!(names.iter().filter(|n| *n == applet).count(), 1, "{applet}");
        }
    }

    #[test]
    fn the_same_busybox_gives_the_same_digests() {
        let (a, b) = (image(), image());
        assert_eq!(a.manifest.digest, b.manifest.digest);
        assert_eq!(
            a.write_layout(Vec::new()).unwrap(),
            b.write_layout(Vec::new()).unwrap()
        );
        let other = OciImage::new(DEFAULT_IMAGE, busybox_layer(b"other").unwrap(), &["sh"]);
        assert_ne!(other.unwrap().manifest.digest, a.manifest.digest);
    }

    #[test]
    fn references_need_a_lower_case_name_and_a_tag() {
        for good in ["husk.test/busybox:latest", "busybox:1.36.1", "a/b-c_d:v1"] {
            assert!(reference_tag(good).is_ok(), "{good}");
        }
        assert_eq!(reference_tag("x/y:t1").unwrap(), "t1");
        for bad in [
            "busybox",
            "busybox:",
            ":latest",
            "Busybox:latest",
            "/busybox:latest",
            "busybox:-x",
            "bu sy:latest",
        ] {
            assert!(
                matches!(
                    OciImage::new(bad, Vec::new(), &[]),
                    Err(ImageError::Reference(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_busybox_is_a_read_error() {
        let err = OciImage::busybox(DEFAULT_IMAGE, Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(matches!(err, ImageError::Read { .. }), "{err}");
        assert_eq!(err.to_string(), "reading /nonexistent/busybox");
    }

    #[test]
    fn the_file_written_equals_the_bytes() {
        let img = image();
        let path = std::env::temp_dir().join(format!("husk-image-test-{}.tar", std::process::id()));
        img.write_layout_file(&path).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(on_disk, img.write_layout(Vec::new()).unwrap());
    }
}
