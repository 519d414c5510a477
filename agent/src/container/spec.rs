//! Checks and adjusts the OCI documents the host sends before libcontainer
//! sees them.
//!
//! The host has already rewritten paths for the guest (the rootfs and bind
//! sources live under the virtio-fs share). The agent then makes the parts
//! that only it can know right: the cgroup (each container gets
//! `/husk/<id>`), no hooks (they name host binaries), and the terminal flag
//! matching the request.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxResources, Process, Spec};

use super::cgroup;

/// The largest OCI document accepted (spec, process, resources).
pub const MAX_DOCUMENT: usize = 1 << 20;

/// Errors in what the host sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("invalid id {0:?}: 1 to 128 of [A-Za-z0-9_.-], not starting with '.'")]
    Id(String),
    #[error("{what} is larger than {MAX_DOCUMENT} bytes")]
    TooLarge { what: &'static str },
    #[error("{what} is not valid JSON for it: {message}")]
    Parse { what: &'static str, message: String },
    #[error("the spec has no {0}")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// Checks a container or exec id: it becomes a path component and a cgroup
/// name.
pub fn check_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= husk_proto::MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::Id(id.to_owned()))
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, SpecError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(SpecError::TooLarge { what });
    }
    serde_json::from_slice(bytes).map_err(|e| SpecError::Parse {
        what,
        message: e.to_string(),
    })
}

fn check_process(process: &Process) -> Result<(), SpecError> {
    let args = process.args().as_deref().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(SpecError::Invalid("process.args is empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(SpecError::Invalid("process.cwd must be absolute".into()));
    }
    Ok(())
}

/// Refuses io limits (`linux.resources.blockIO`). The guest has no block device: the rootfs
/// and volumes come through virtio-fs and scratch space is tmpfs, so containers do no block
/// io. The limits name host devices (`major:minor`) that do not exist in the guest, or a
/// weight among devices there are none of, and libcgroups' write of `io.max` or `io.weight`
/// would fail deep inside creation with ENODEV or ENOENT and no reason. An empty `blockIO`
/// (or a weight of 0) asks nothing and passes.
fn check_block_io(resources: Option<&LinuxResources>) -> Result<(), SpecError> {
    let Some(io) = resources.and_then(|r| r.block_io().as_ref()) else {
        return Ok(());
    };
    let some = |v: &Option<Vec<_>>| v.as_ref().is_some_and(|v: &Vec<_>| !v.is_empty());
    let mut set = Vec::new();
    if io.weight().is_some_and(|w| w > 0) {
        set.push("weight");
    }
    if io.leaf_weight().is_some_and(|w| w > 0) {
        set.push("leafWeight");
    }
    if io.weight_device().as_ref().is_some_and(|d| !d.is_empty()) {
        set.push("weightDevice");
    }
    for (name, devices) in [
        ("throttleReadBpsDevice", io.throttle_read_bps_device()),
        ("throttleWriteBpsDevice", io.throttle_write_bps_device()),
        ("throttleReadIOPSDevice", io.throttle_read_iops_device()),
        ("throttleWriteIOPSDevice", io.throttle_write_iops_device()),
    ] {
        if some(devices) {
            set.push(name);
        }
    }
    if set.is_empty() {
        return Ok(());
    }
    Err(SpecError::Invalid(format!(
        "linux.resources.blockIO ({}) is not supported: the guest has no block device to \
         apply io limits to (its files come through virtio-fs)",
        set.join(", ")
    )))
}

/// Parses a container's spec and adjusts it for the guest.
pub fn prepare_spec(bytes: &[u8], container_id: &str, tty: bool) -> Result<Spec, SpecError> {
    let mut spec: Spec = parse("the OCI spec", bytes)?;
    let root = spec.root().as_ref().ok_or(SpecError::Missing("root"))?;
    if !root.path().is_absolute() {
        return Err(SpecError::Invalid(format!(
            "root.path {} must be an absolute guest path",
            root.path().display()
        )));
    }
    let process = spec
        .process_mut()
        .as_mut()
        .ok_or(SpecError::Missing("process"))?;
    check_process(process)?;
    process.set_terminal(Some(tty));
    spec.set_hooks(None);
    let mut linux = spec.linux().clone().unwrap_or_default();
    check_block_io(linux.resources().as_ref())?;
    linux.set_cgroups_path(Some(PathBuf::from(cgroup::spec_path(container_id))));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Parses the OCI process of an exec. Returns it and whether it has a tty.
pub fn prepare_process(bytes: &[u8]) -> Result<(Process, bool), SpecError> {
    let process: Process = parse("the OCI process", bytes)?;
    check_process(&process)?;
    let tty = process.terminal().unwrap_or(false);
    Ok((process, tty))
}

/// Parses OCI `linux.resources` for UpdateContainer.
pub fn parse_resources(bytes: &[u8]) -> Result<LinuxResources, SpecError> {
    let resources = parse("the OCI resources", bytes)?;
    check_block_io(Some(&resources))?;
    Ok(resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "/run/husk/shared/c1/rootfs", "readonly": true},
        "process": {"args": ["sh"], "cwd": "/", "terminal": false, "user": {"uid": 0, "gid": 0}},
        "hooks": {"prestart": [{"path": "/usr/bin/host-only"}]},
        "linux": {"cgroupsPath": "/kubepods/besteffort/podX/c1", "namespaces": [{"type": "pid"}]}
    }"#;

    #[test]
    fn ids_are_path_and_cgroup_safe() {
        for good in ["c1", "a-b_c.d", &"x".repeat(128)] {
            check_id(good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(129),
            "a\0",
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_spec_gets_our_cgroup_no_hooks_and_the_requested_terminal() {
        let spec = prepare_spec(SPEC.as_bytes(), "c1", true).unwrap();
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(std::path::Path::new("/husk/c1"))
        );
        assert!(spec.hooks().is_none());
        assert_eq!(spec.process().as_ref().unwrap().terminal(), Some(true));
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .as_ref()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let e = prepare_spec(b"{", "c1", false).unwrap_err();
        assert!(matches!(e, SpecError::Parse { .. }), "{e}");
        let relative = SPEC.replace("/run/husk/shared/c1/rootfs", "rootfs");
        let e = prepare_spec(relative.as_bytes(), "c1", false).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let no_args = SPEC.replace(r#"["sh"]"#, "[]");
        let e = prepare_spec(no_args.as_bytes(), "c1", false).unwrap_err();
        assert!(e.to_string().contains("args"), "{e}");
        let big = vec![b' '; MAX_DOCUMENT + 1];
        assert!(matches!(
            prepare_spec(&big, "c1", false),
            Err(SpecError::TooLarge { .. })
        ));
    }

    #[test]
    fn exec_processes_report_their_terminal() {
        let (p, tty) = prepare_process(
            br#"{"args":["ls"],"cwd":"/","terminal":true,"user":{"uid":0,"gid":0}}"#,
        )
        .unwrap();
        assert!(tty);
        assert_eq!(p.args().as_ref().unwrap()[0], "ls");
        assert!(prepare_process(br#"{"args":["ls"],"cwd":"rel"}"#).is_err());
    }

    #[test]
    fn io_limits_are_refused_with_the_reason_and_empty_block_io_passes() {
        for io in [
            r#"{"weight": 500}"#,
            r#"{"weightDevice": [{"major": 8, "minor": 0, "weight": 100}]}"#,
            r#"{"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]}"#,
            r#"{"throttleWriteIOPSDevice": [{"major": 253, "minor": 0, "rate": 10}]}"#,
        ] {
            let resources = format!(r#"{{"blockIO": {io}}}"#);
            let e = parse_resources(resources.as_bytes()).unwrap_err();
            assert!(matches!(e, SpecError::Invalid(_)), "{io}: {e}");
            assert!(e.to_string().contains("no block device"), "{e}");
            let spec = SPEC.replace(
                r#""cgroupsPath""#,
                &format!(r#""resources": {resources}, "cgroupsPath""#),
            );
            let e = prepare_spec(spec.as_bytes(), "c1", false).unwrap_err();
            assert!(e.to_string().contains("blockIO"), "{io}: {e}");
        }
        for harmless in [
            r#"{"blockIO": {}}"#,
            r#"{"blockIO": {"weight": 0, "throttleReadBpsDevice": []}}"#,
        ] {
            parse_resources(harmless.as_bytes()).unwrap();
        }
    }

    #[test]
    fn resources_parse() {
        let r = parse_resources(br#"{"memory":{"limit":33554432},"pids":{"limit":10}}"#).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(33554432));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 10);
    }
}
