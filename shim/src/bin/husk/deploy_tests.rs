//! deploy/*.yaml parse, and agree with each other and with the installer: the handler is the
//! runtime name `husk install` writes, the DaemonSet runs where the RuntimeClass schedules,
//! and it mounts every host directory the installer writes into at `/host`.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use crate::install;

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, key| {
        v.get(key).unwrap_or_else(|| panic!("no {key} in {path:?}"))
    })
}

/// A Kubernetes memory quantity in bytes (the binary and decimal suffixes used here).
fn memory_bytes(q: &str) -> u64 {
    let units = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("M", 1_000_000),
    ];
    for (suffix, scale) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a number") * scale;
        }
    }
    q.parse().expect("a plain byte count")
}

fn millicpu(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(n) => n.parse().expect("a number"),
        None => q.parse::<u64>().expect("a number") * 1000,
    }
}

#[test]
fn runtimeclass_names_the_installed_handler_and_covers_the_measured_overhead() {
    let rc = load("runtimeclass.yaml");
    assert_eq!(str_at(&rc, &["apiVersion"]), "node.k8s.io/v1");
    assert_eq!(str_at(&rc, &["kind"]), "RuntimeClass");
    assert_eq!(str_at(&rc, &["metadata", "name"]), "husk");
    assert_eq!(str_at(&rc, &["handler"]), install::RUNTIME_NAME);
    // docs/benchmarks.md: husk-vmm 61.5 MiB + container 1.9 MiB + shim 5.6 MiB (PSS).
    let measured_kib = 62992 + 1950 + 5734;
    let memory = memory_bytes(str_at(&rc, &["overhead", "podFixed", "memory"]));
    assert!(
        memory >= measured_kib * 1024,
        "{memory} bytes is below the measured overhead"
    );
    assert!(millicpu(str_at(&rc, &["overhead", "podFixed", "cpu"])) > 0);
    let selector = at(&rc, &["scheduling", "nodeSelector"])
        .as_mapping()
        .unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert!(
            k.is_string() && v.is_string(),
            "label values must be strings: {k:?}: {v:?}"
        );
    }
}

#[test]
fn daemonset_runs_where_husk_pods_go_and_mounts_what_install_writes() {
    let rc = load("runtimeclass.yaml");
    let ds = load("daemonset.yaml");
    assert_eq!(str_at(&ds, &["apiVersion"]), "apps/v1");
    assert_eq!(str_at(&ds, &["kind"]), "DaemonSet");
    let pod = at(&ds, &["spec", "template", "spec"]);
    assert_eq!(
        at(pod, &["nodeSelector"]),
        at(&rc, &["scheduling", "nodeSelector"]),
        "the installer must run on exactly the nodes husk Pods are scheduled to"
    );
    let labels = at(&ds, &["spec", "template", "metadata", "labels"]);
    for (k, v) in at(&ds, &["spec", "selector", "matchLabels"])
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            labels.get(k),
            Some(v),
            "selector {k:?} does not match the pod"
        );
    }
    assert_eq!(pod.get("hostPID").and_then(Value::as_bool), Some(true));

    let containers = at(pod, &["containers"]).as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        at(c, &["securityContext", "privileged"]).as_bool(),
        Some(true)
    );
    let script = at(c, &["command"]).as_sequence().unwrap().last().unwrap();
    let script = script.as_str().unwrap();
    assert!(script.contains("husk install --prefix /host"), "{script}");
    assert!(script.contains("husk uninstall --prefix /host"), "{script}");
    assert!(script.contains("nsenter --target 1"), "{script}");

    // Every volume is a host directory mounted at /host + its path.
    let volumes = at(pod, &["volumes"]).as_sequence().unwrap();
    let mut host_dirs = Vec::new();
    for m in at(c, &["volumeMounts"]).as_sequence().unwrap() {
        let name = str_at(m, &["name"]);
        let volume = volumes
            .iter()
            .find(|v| str_at(v, &["name"]) == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let host = str_at(volume, &["hostPath", "path"]);
        assert_eq!(str_at(m, &["mountPath"]), format!("/host{host}"));
        host_dirs.push(PathBuf::from(host));
    }
    for written in install::node_paths_written() {
        assert!(
            host_dirs
                .iter()
                .any(|d| written.starts_with(d) && written != *d),
            "{} is written by husk install but not mounted from the host",
            written.display()
        );
    }
}

#[test]
fn memory_quantities_parse() {
    assert_eq!(memory_bytes("80Mi"), 80 << 20);
    assert_eq!(memory_bytes("1Gi"), 1 << 30);
    assert_eq!(millicpu("250m"), 250);
    assert_eq!(millicpu("2"), 2000);
}
