//! Rewriting a container's OCI spec (the bundle's `config.json`) for the guest.
//!
//! The spec containerd writes names host paths. Inside the VM the container's
//! rootfs and every host bind mount come through the sandbox's virtio-fs
//! share, so the shim plans, for each bind mount, a host bind mount into
//! `shared/<container>/mounts/<n>` and points the guest spec at the share. It
//! also removes what has no meaning in the guest: namespace paths (they name
//! host processes), the network namespace (containers share the VM's network),
//! host device nodes, AppArmor and SELinux labels. The JSON is edited as a
//! tree, so fields this code does not know survive unchanged.
//!
//! Two kinds of bind mount stay in the guest instead: CRI's `/dev/shm` becomes
//! the Pod's guest tmpfs [`GUEST_POD_SHM`], and kubelet's emptyDir volumes
//! (and subPaths of them) become Pod-level guest tmpfs volumes ([`volumes`]),
//! which the shim mounts in the guest on first use.

use serde_json::Value;

pub mod volumes;

pub use volumes::{EmptyDir, HostFs, HostPaths, SubPath};

/// Where the agent mounts the share in the guest.
pub const GUEST_SHARE: &str = "/run/husk/shared";

/// The sandbox's `/dev/shm` in the guest: a guest tmpfs that every container of
/// the VM binds (CRI gives a Pod's containers one shared `/dev/shm`, bound from
/// a host tmpfs that a guest could only reach, slowly, over virtio-fs).
pub const GUEST_POD_SHM: &str = "/run/husk/shm";

/// The size of [`GUEST_POD_SHM`]: CRI's default for a Pod's `/dev/shm`.
pub const GUEST_POD_SHM_SIZE: &str = "size=64m";

/// Errors in the bundle's spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("config.json is not valid JSON: {0}")]
    Json(String),
    #[error("config.json: {0}")]
    Invalid(String),
}

/// A host path the shim must bind-mount into the share for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// The host source.
    pub source: String,
    /// Relative to the sandbox's `shared/` directory.
    pub share_path: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// The guest's spec and what makes it work: host binds into the share, and
/// the Pod-level guest volumes its mounts name.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub spec: Value,
    pub binds: Vec<HostBind>,
    /// The emptyDirs the container mounts (whole or by subPath), each once.
    pub empty_dirs: Vec<EmptyDir>,
    /// The subPaths of emptyDirs the container mounts.
    pub subpaths: Vec<SubPath>,
}

impl GuestSpec {
    fn use_empty_dir(&mut self, e: EmptyDir) {
        if !self.empty_dirs.iter().any(|d| d.name == e.name) {
            self.empty_dirs.push(e);
        }
    }
}

fn is_bind(mount: &Value) -> bool {
    let typ = mount.get("type").and_then(Value::as_str).unwrap_or("");
    let bind_opt = mount
        .get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|v| v == "bind" || v == "rbind"));
    typ == "bind" || bind_opt
}

fn readonly(mount: &Value) -> bool {
    mount
        .get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|v| v == "ro"))
}

/// The container's rootfs in the share, relative to `shared/`.
pub fn rootfs_share_path(container_id: &str) -> String {
    format!("{container_id}/rootfs")
}

/// The namespaces a Pod's containers share with its sandbox (pause) container
/// in the guest. The PID namespace is shared only when the spec asks for it
/// (a path: `shareProcessNamespace`); the network namespace is the guest's own.
const POD_NAMESPACES: &[&str] = &["ipc", "uts"];

/// Rewrites the spec in `json` for the container `container_id`. A Pod's app
/// container passes its sandbox container's guest pid as `pod_pid`: it then
/// joins that container's IPC and UTS namespaces (and PID namespace, if its
/// spec joins one) instead of the host's paths.
pub fn for_guest(
    json: &[u8],
    container_id: &str,
    pod_pid: Option<u32>,
) -> Result<GuestSpec, SpecError> {
    for_guest_on(json, container_id, pod_pid, &HostFs)
}

/// [`for_guest`], asking `host` where a kubelet subPath bind points.
pub fn for_guest_on(
    json: &[u8],
    container_id: &str,
    pod_pid: Option<u32>,
    host: &dyn HostPaths,
) -> Result<GuestSpec, SpecError> {
    let mut spec: Value =
        serde_json::from_slice(json).map_err(|e| SpecError::Json(e.to_string()))?;
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| SpecError::Invalid("not an object".into()))?;
    let root = obj
        .entry("root")
        .or_insert_with(|| Value::Object(Default::default()));
    root["path"] = Value::String(format!("{GUEST_SHARE}/{}", rootfs_share_path(container_id)));

    let mut guest = GuestSpec {
        spec: Value::Null,
        binds: Vec::new(),
        empty_dirs: Vec::new(),
        subpaths: Vec::new(),
    };
    if let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) {
        for (n, mount) in mounts.iter_mut().enumerate() {
            if !is_bind(mount) {
                continue;
            }
            if mount.get("destination").and_then(Value::as_str) == Some("/dev/shm") {
                mount["source"] = Value::String(GUEST_POD_SHM.into());
                continue;
            }
            let source = mount
                .get("source")
                .and_then(Value::as_str)
                .ok_or_else(|| SpecError::Invalid(format!("mount {n} has no source")))?
                .to_owned();
            if !source.starts_with('/') {
                return Err(SpecError::Invalid(format!(
                    "bind mount source {source:?} is not absolute"
                )));
            }
            if let Some(guest_source) = pod_volume(&mut guest, &source, host) {
                mount["source"] = Value::String(guest_source);
                continue;
            }
            let share_path = format!("{container_id}/mounts/{n}");
            mount["source"] = Value::String(format!("{GUEST_SHARE}/{share_path}"));
            guest.binds.push(HostBind {
                source,
                share_path,
                readonly: readonly(mount),
            });
        }
    }

    if let Some(process) = obj.get_mut("process").and_then(Value::as_object_mut) {
        process.remove("apparmorProfile");
        process.remove("selinuxLabel");
    }
    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("mountLabel");
        linux.remove("devices");
        if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            ns.retain(|n| n.get("type").and_then(Value::as_str) != Some("network"));
            for n in ns.iter_mut() {
                let Some(o) = n.as_object_mut() else { continue };
                let kind = o
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let had_path = o.remove("path").is_some();
                let joins_pod =
                    POD_NAMESPACES.contains(&kind.as_str()) || (kind == "pid" && had_path);
                if let (Some(pid), true) = (pod_pid, joins_pod) {
                    o.insert(
                        "path".into(),
                        Value::String(format!("/proc/{pid}/ns/{kind}")),
                    );
                }
            }
        }
        if let Some(resources) = linux.get_mut("resources").and_then(Value::as_object_mut) {
            // Host device rules name host majors and minors.
            resources.remove("devices");
        }
    }
    guest.spec = spec;
    Ok(guest)
}

/// The guest source of a bind of `source` if the guest provides it: an
/// emptyDir, or a subPath of one (the other subPaths are host binds like any).
fn pod_volume(guest: &mut GuestSpec, source: &str, host: &dyn HostPaths) -> Option<String> {
    if let Some(e) = volumes::empty_dir_of(source) {
        let dir = volumes::guest_volume_dir(&e.name);
        guest.use_empty_dir(e);
        return Some(dir);
    }
    let bind = volumes::subpath_bind_of(source)?;
    let path = host.path_inside(&bind.empty_dir.host_dir, source)?;
    guest.subpaths.push(SubPath {
        volume: bind.empty_dir.name.clone(),
        path,
        guest_dir: bind.guest_dir.clone(),
    });
    guest.use_empty_dir(bind.empty_dir);
    Some(bind.guest_dir)
}

/// The sandbox id a container belongs to: the CRI annotation, else its own
/// id (a plain `ctr run` container is a sandbox of its own).
pub fn sandbox_id(json: &[u8], container_id: &str) -> String {
    let spec: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
    let annotations = &spec["annotations"];
    let kind = annotations["io.kubernetes.cri.container-type"].as_str();
    match (kind, annotations["io.kubernetes.cri.sandbox-id"].as_str()) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.to_owned(),
        _ => container_id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["sh"], "cwd": "/", "apparmorProfile": "cri-containerd.apparmor.d",
                        "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/c/hosts",
                 "options": ["rbind", "rprivate", "ro"]},
                {"destination": "/data", "source": "/srv/data", "options": ["rbind", "rw"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"},
                               {"type": "ipc", "path": "/proc/42/ns/ipc"}],
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
                "resources": {"devices": [{"allow": false, "access": "rwm"}], "memory": {"limit": 1}},
                "cgroupsPath": "/default/c1"
            },
            "x-unknown": {"kept": true}
        })
    }

    #[test]
    fn rootfs_and_binds_point_into_the_share() {
        let g = for_guest(sample().to_string().as_bytes(), "c1", None).unwrap();
        assert_eq!(g.spec["root"]["path"], "/run/husk/shared/c1/rootfs");
        assert_eq!(g.spec["root"]["readonly"], true);
        assert_eq!(g.spec["mounts"][0]["source"], "proc");
        assert_eq!(
            g.spec["mounts"][1]["source"],
            "/run/husk/shared/c1/mounts/1"
        );
        assert_eq!(
            g.spec["mounts"][2]["source"],
            "/run/husk/shared/c1/mounts/2"
        );
        assert_eq!(
            g.binds,
            vec![
                HostBind {
                    source: "/var/lib/c/hosts".into(),
                    share_path: "c1/mounts/1".into(),
                    readonly: true
                },
                HostBind {
                    source: "/srv/data".into(),
                    share_path: "c1/mounts/2".into(),
                    readonly: false
                },
            ]
        );
    }

    #[test]
    fn host_only_parts_are_removed_and_the_rest_kept() {
        let g = for_guest(sample().to_string().as_bytes(), "c1", None).unwrap();
        let ns = g.spec["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(ns.len(), 2, "network dropped: {ns:?}");
        assert!(ns.iter().all(|n| n.get("path").is_none()));
        assert!(g.spec["linux"].get("devices").is_none());
        assert!(g.spec["linux"]["resources"].get("devices").is_none());
        assert_eq!(g.spec["linux"]["resources"]["memory"]["limit"], 1);
        assert!(g.spec["process"].get("apparmorProfile").is_none());
        assert_eq!(g.spec["x-unknown"]["kept"], true);
    }

    #[test]
    fn dev_shm_is_the_guests_pod_tmpfs() {
        let cri = json!({"mounts": [{"destination": "/dev/shm", "type": "bind",
            "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/p/shm",
            "options": ["rbind", "ro"]}]});
        let g = for_guest(cri.to_string().as_bytes(), "c1", None).unwrap();
        assert_eq!(g.spec["mounts"][0]["source"], GUEST_POD_SHM);
        assert!(g.binds.is_empty(), "{:?}", g.binds);
        // A plain container's /dev/shm (its own tmpfs) is left alone.
        let own =
            json!({"mounts": [{"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}]});
        let g = for_guest(own.to_string().as_bytes(), "c1", None).unwrap();
        assert_eq!(g.spec["mounts"][0]["source"], "shm");
    }

    const KUBELET_POD: &str = "/var/lib/kubelet/pods/6a1f";

    /// The host as the tests see it: a subPath bind of `cache` points at
    /// `logs/app` inside it; no other volume is an emptyDir.
    struct FakeHost;

    impl HostPaths for FakeHost {
        fn path_inside(&self, volume: &str, source: &str) -> Option<String> {
            let cache = format!("{KUBELET_POD}/volumes/kubernetes.io~empty-dir/cache");
            (volume == cache && source.contains("/volume-subpaths/cache/"))
                .then(|| "logs/app".to_owned())
        }
    }

    fn bind(source: &str, destination: &str, ro: bool) -> Value {
        let mode = if ro { "ro" } else { "rw" };
        json!({"destination": destination, "type": "bind", "source": source,
               "options": ["rbind", "rprivate", mode]})
    }

    #[test]
    fn an_empty_dir_is_the_pods_guest_volume_and_not_shared_from_the_host() {
        let cache = format!("{KUBELET_POD}/volumes/kubernetes.io~empty-dir/cache");
        let spec = json!({"mounts": [
            bind(&cache, "/cache", false),
            bind(&cache, "/cache-ro", true),
            bind(&format!("{KUBELET_POD}/volumes/kubernetes.io~configmap/cfg"), "/cfg", true),
        ]});
        let g = for_guest_on(spec.to_string().as_bytes(), "c1", None, &FakeHost).unwrap();
        let m = &g.spec["mounts"];
        assert_eq!(m[0]["source"], "/run/husk/emptydir/cache");
        assert_eq!(m[1]["source"], "/run/husk/emptydir/cache");
        // Read-only stays read-only: the container's bind keeps its options.
        assert_eq!(m[1]["options"], json!(["rbind", "rprivate", "ro"]));
        assert_eq!(m[0]["options"], json!(["rbind", "rprivate", "rw"]));
        // One volume, however many mounts name it; the configMap is a host bind.
        assert_eq!(
            g.empty_dirs,
            vec![EmptyDir {
                name: "cache".into(),
                host_dir: cache.clone()
            }]
        );
        assert!(g.subpaths.is_empty());
        assert_eq!(g.binds.len(), 1);
        assert_eq!(m[2]["source"], "/run/husk/shared/c1/mounts/2");
        assert!(g.binds[0].source.ends_with("kubernetes.io~configmap/cfg"));
    }

    #[test]
    fn a_subpath_of_an_empty_dir_is_a_guest_bind_inside_the_volume() {
        let spec = json!({"mounts": [
            bind(&format!("{KUBELET_POD}/volume-subpaths/cache/app/0"), "/logs", false),
            bind(&format!("{KUBELET_POD}/volume-subpaths/cfg/app/1"), "/etc/app.conf", true),
        ]});
        let g = for_guest_on(spec.to_string().as_bytes(), "c1", None, &FakeHost).unwrap();
        let m = &g.spec["mounts"];
        assert_eq!(m[0]["source"], "/run/husk/subpaths/cache/app/0");
        assert_eq!(
            g.subpaths,
            vec![SubPath {
                volume: "cache".into(),
                path: "logs/app".into(),
                guest_dir: "/run/husk/subpaths/cache/app/0".into(),
            }]
        );
        // The subPath's volume is made too (a container may mount only a subPath).
        assert_eq!(g.empty_dirs.len(), 1);
        assert_eq!(g.empty_dirs[0].name, "cache");
        // A subPath of another kind of volume is a host bind like any.
        assert_eq!(m[1]["source"], "/run/husk/shared/c1/mounts/1");
        assert_eq!(g.binds.len(), 1);
        assert!(g.binds[0].readonly);
    }

    #[test]
    fn paths_that_only_look_like_an_empty_dir_are_host_binds() {
        let spec = json!({"mounts": [
            bind("/srv/volumes/kubernetes.io~empty-dir/x", "/a", false),
            bind(&format!("{KUBELET_POD}/volumes/kubernetes.io~empty-dir/cache/sub"), "/b", false),
        ]});
        let g = for_guest_on(spec.to_string().as_bytes(), "c1", None, &FakeHost).unwrap();
        assert_eq!(g.binds.len(), 2);
        assert!(g.empty_dirs.is_empty());
    }

    #[test]
    fn a_pods_container_joins_the_sandbox_containers_namespaces() {
        let app = json!({"linux": {"namespaces": [
            {"type": "pid", "path": "/proc/42/ns/pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"},
            {"type": "uts", "path": "/proc/42/ns/uts"}, {"type": "mount"},
            {"type": "network", "path": "/proc/42/ns/net"}]}});
        let g = for_guest(app.to_string().as_bytes(), "c1", Some(7)).unwrap();
        assert_eq!(
            g.spec["linux"]["namespaces"],
            json!([{"type": "pid", "path": "/proc/7/ns/pid"}, {"type": "ipc", "path": "/proc/7/ns/ipc"},
                   {"type": "uts", "path": "/proc/7/ns/uts"}, {"type": "mount"}])
        );
        // Without shareProcessNamespace the container has a PID namespace of its own.
        let own_pid = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}]}});
        let g = for_guest(own_pid.to_string().as_bytes(), "c1", Some(7)).unwrap();
        assert_eq!(
            g.spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc", "path": "/proc/7/ns/ipc"}])
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(
            for_guest(b"{", "c1", None),
            Err(SpecError::Json(_))
        ));
        let relative = json!({"mounts": [{"destination": "/x", "type": "bind", "source": "rel"}]});
        let e = for_guest(relative.to_string().as_bytes(), "c1", None).unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
    }

    #[test]
    fn sandbox_grouping_follows_the_cri_annotations() {
        let c = json!({"annotations": {"io.kubernetes.cri.container-type": "container",
                                        "io.kubernetes.cri.sandbox-id": "pod1"}});
        assert_eq!(sandbox_id(c.to_string().as_bytes(), "c1"), "pod1");
        let s = json!({"annotations": {"io.kubernetes.cri.container-type": "sandbox",
                                        "io.kubernetes.cri.sandbox-id": "pod1"}});
        assert_eq!(sandbox_id(s.to_string().as_bytes(), "pod1"), "pod1");
        assert_eq!(sandbox_id(b"{}", "c9"), "c9");
        assert_eq!(sandbox_id(b"garbage", "c9"), "c9");
    }
}
