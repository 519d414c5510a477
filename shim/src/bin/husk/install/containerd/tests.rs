use super::*;

const CONFIG_DIR: &str = "/etc/containerd";

fn runtime() -> Runtime {
    Runtime {
        config_path: "/etc/husk/config.toml".into(),
    }
}

fn drop_in() -> DropIn {
    DropIn {
        host_path: "/etc/containerd/conf.d/husk.toml".into(),
        import: "conf.d/husk.toml".into(),
    }
}

fn install_into(original: Option<&str>, previous: &Added) -> Result<Installed, EditError> {
    install(
        original,
        previous,
        &runtime(),
        &drop_in(),
        Path::new(CONFIG_DIR),
    )
}

/// Installs, checks the result parses, uninstalls, and checks the original came back.
fn round_trip(original: &str) -> Installed {
    let done = install_into(Some(original), &Added::default()).unwrap();
    let text = done.text.as_deref().unwrap_or(original);
    text.parse::<DocumentMut>()
        .unwrap_or_else(|e| panic!("install made invalid TOML: {e}\n{text}"));
    assert_eq!(uninstall(text, &done.added).unwrap(), original);
    done
}

fn get<'a>(doc: &'a DocumentMut, path: &[&str]) -> Option<&'a Item> {
    let mut item = doc.as_item();
    for key in path {
        item = item.get(key)?;
    }
    Some(item)
}

fn husk_v2(doc: &DocumentMut) -> Option<&Item> {
    get(doc, &["plugins", CRI_V2, "containerd", "runtimes", "husk"])
}

/// A containerd 1.6-style file with comments, odd spacing and other CRI settings.
const V2_USER: &str = r#"# My node's containerd.
version = 2
root = "/var/lib/containerd"   # keep

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.example/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true

# trailing comment
"#;

#[test]
fn v2_gets_the_runtime_appended_and_keeps_everything_else() {
    let done = round_trip(V2_USER);
    assert_eq!(done.format, Format::V2);
    assert!(done.drop_in.is_none());
    assert_eq!(
        done.added,
        Added {
            runtime: true,
            ..Added::default()
        }
    );
    let text = done.text.unwrap();
    // The user's text is all there, in order, before husk's part.
    let head = text.find(RUNTIME_COMMENT).expect("husk's comment");
    assert_eq!(
        &text[..head].trim_end(),
        &V2_USER
            .trim_end_matches("\n# trailing comment\n")
            .trim_end()
    );
    let doc: DocumentMut = text.parse().unwrap();
    let husk = husk_v2(&doc).unwrap();
    assert_eq!(husk["runtime_type"].as_str(), Some(RUNTIME_TYPE));
    assert_eq!(
        husk["privileged_without_host_devices"].as_bool(),
        Some(true)
    );
    assert_eq!(
        husk["options"]["ConfigPath"].as_str(),
        Some("/etc/husk/config.toml")
    );
    let runc = get(&doc, &["plugins", CRI_V2, "containerd", "runtimes", "runc"]).unwrap();
    assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
}

#[test]
fn installing_again_changes_nothing() {
    let first = install_into(Some(V2_USER), &Added::default()).unwrap();
    let text = first.text.unwrap();
    let second = install_into(Some(&text), &first.added).unwrap();
    assert_eq!(second.text, None, "a second install rewrote the file");
    assert_eq!(second.added, first.added);
}

#[test]
fn v2_without_runtimes_names_runc_as_1x_has_it_built_in() {
    let original =
        "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"p\"\n";
    let done = round_trip(original);
    assert!(done.added.runc && done.added.runtime);
    let doc: DocumentMut = done.text.unwrap().parse().unwrap();
    let runc = get(&doc, &["plugins", CRI_V2, "containerd", "runtimes", "runc"]).unwrap();
    assert_eq!(runc["runtime_type"].as_str(), Some(RUNC_TYPE));
    assert_eq!(runc.as_table().unwrap().len(), 1);
}

#[test]
fn another_default_runtime_is_not_second_guessed() {
    let original = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"crun\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun]\n  runtime_type = \"io.containerd.runc.v2\"\n";
    let done = round_trip(original);
    assert!(!done.added.runc);
    let doc: DocumentMut = done.text.unwrap().parse().unwrap();
    assert!(get(&doc, &["plugins", CRI_V2, "containerd", "runtimes", "runc"]).is_none());
}

#[test]
fn a_missing_file_becomes_a_minimal_version_2_file() {
    let done = install_into(None, &Added::default()).unwrap();
    assert_eq!(done.format, Format::V2);
    let text = done.text.unwrap();
    let doc: DocumentMut = text.parse().unwrap();
    assert_eq!(doc["version"].as_integer(), Some(2));
    assert!(husk_v2(&doc).is_some());
    assert!(done.added.runc, "1.x needs runc named: {text}");
    assert!(
        text.starts_with("# containerd configuration made by `husk install`"),
        "{text}"
    );
}

#[test]
fn versionless_files_get_version_2_only_without_plugin_sections() {
    let done = round_trip("root = \"/var/lib/containerd\"\n[grpc]\n  address = \"/run/c.sock\"\n");
    assert!(done.added.version);
    let doc: DocumentMut = done.text.unwrap().parse().unwrap();
    assert_eq!(doc["version"].as_integer(), Some(2));

    let v1 = "[plugins.cri]\n  sandbox_image = \"p\"\n";
    let e = install_into(Some(v1), &Added::default()).unwrap_err();
    assert!(matches!(e, EditError::Version1), "{e}");
    assert!(e.to_string().contains("version 1"), "{e}");
}

#[test]
fn unknown_and_malformed_versions_are_refused() {
    let e = install_into(Some("version = 4\n"), &Added::default()).unwrap_err();
    assert!(matches!(e, EditError::UnknownVersion(4)), "{e}");
    let e = install_into(Some("version = \"2\"\n"), &Added::default()).unwrap_err();
    assert!(matches!(e, EditError::BadVersion), "{e}");
    let e = install_into(Some("version = 2\n[grpc\n"), &Added::default()).unwrap_err();
    assert!(matches!(e, EditError::Parse(_)), "{e}");
}

#[test]
fn v3_gets_a_drop_in_and_an_import() {
    let original = "# containerd 2\nversion = 3\nroot = \"/var/lib/containerd\"\n\n[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"p:1\"\n";
    let done = round_trip(original);
    assert_eq!(done.format, Format::V3);
    assert_eq!(done.added.import.as_deref(), Some("conf.d/husk.toml"));
    assert!(done.added.imports_key && !done.added.runtime);
    let doc: DocumentMut = done.text.unwrap().parse().unwrap();
    let imports: Vec<_> = doc["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(imports, ["conf.d/husk.toml"]);

    let drop_in: DocumentMut = done.drop_in.unwrap().parse().unwrap();
    assert_eq!(drop_in["version"].as_integer(), Some(3));
    let husk = get(
        &drop_in,
        &["plugins", CRI_V3, "containerd", "runtimes", "husk"],
    )
    .unwrap();
    assert_eq!(husk["runtime_type"].as_str(), Some(RUNTIME_TYPE));
    assert_eq!(
        husk["options"]["ConfigPath"].as_str(),
        Some("/etc/husk/config.toml")
    );
    // Nothing but husk's runtime: 2.x merges it key by key into the main file's settings.
    let plugins = drop_in["plugins"].as_table().unwrap();
    assert_eq!(plugins.len(), 1);
}

#[test]
fn v3_existing_imports_get_one_more_entry_or_none_if_covered() {
    let original = "version = 3\nimports = [\n  \"/etc/containerd/other.toml\", # mine\n]\n";
    let done = round_trip(original);
    assert!(!done.added.imports_key);
    let text = done.text.unwrap();
    assert!(text.contains("# mine"), "{text}");
    assert!(text.contains("\"conf.d/husk.toml\""), "{text}");

    for covering in [
        "/etc/containerd/conf.d/*.toml",
        "conf.d/*.toml",
        "./conf.d/husk.toml",
        "/etc/containerd/conf.d/h?sk.toml",
        "../containerd/conf.d/*",
    ] {
        let original = format!("version = 3\nimports = [\"{covering}\"]\n");
        let done = install_into(Some(&original), &Added::default()).unwrap();
        assert_eq!(done.text, None, "{covering} covers the drop-in");
        assert!(done.drop_in.is_some());
        assert_eq!(done.added, Added::default());
    }
    for other in [
        "/etc/containerd/*/husk.toml",
        "/etc/containerd/conf.d/*.conf",
        "conf.d/[h]usk.toml",
    ] {
        let original = format!("version = 3\nimports = [\"{other}\"]\n");
        let done = install_into(Some(&original), &Added::default()).unwrap();
        assert!(
            done.added.import.is_some(),
            "{other} is not taken as covering"
        );
    }
}

#[test]
fn a_runtime_configured_by_hand_is_left_alone_or_refused() {
    let by_hand = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]\n  runtime_type = \"io.containerd.husk.v2\"\n";
    let done = install_into(Some(by_hand), &Added::default()).unwrap();
    assert_eq!(done.text, None);
    assert!(!done.added.any());
    assert!(
        done.notes[0].contains("already configured"),
        "{:?}",
        done.notes
    );

    let other = by_hand.replace("io.containerd.husk.v2", "io.containerd.kata.v2");
    let e = install_into(Some(&other), &Added::default()).unwrap_err();
    assert!(matches!(e, EditError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("io.containerd.kata.v2"), "{e}");

    let v3 = "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.husk]\n  runtime_type = \"io.containerd.husk.v2\"\n";
    let done = install_into(Some(v3), &Added::default()).unwrap();
    assert!(done.drop_in.is_none() && done.text.is_none());
}

#[test]
fn inline_and_dotted_tables() {
    let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } }\n";
    let e = install_into(Some(inline), &Added::default()).unwrap_err();
    assert!(matches!(e, EditError::Inline(_)), "{e}");
    assert!(e.to_string().contains("containerd.runtimes"), "{e}");

    // Dotted keys define tables that may get sub-tables: valid TOML, and it round-trips.
    let dotted = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes.runc.runtime_type = \"io.containerd.runc.v2\"\n";
    let done = round_trip(dotted);
    assert!(!done.added.runc);
    let doc: DocumentMut = done.text.unwrap().parse().unwrap();
    assert!(husk_v2(&doc).is_some());
}

#[test]
fn disabled_cri_is_pointed_out() {
    let original = "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n";
    let done = round_trip(original);
    assert!(
        done.notes.iter().any(|n| n.contains("disabled_plugins")),
        "{:?}",
        done.notes
    );
}

#[test]
fn uninstall_keeps_later_edits_and_a_runc_the_user_changed() {
    let original = "version = 2\n";
    let done = install_into(Some(original), &Added::default()).unwrap();
    assert!(done.added.runc);
    // The user tunes runc and adds a setting after the install.
    let edited = done
        .text
        .unwrap()
        .replace(
            "runtime_type = \"io.containerd.runc.v2\"\n",
            "runtime_type = \"io.containerd.runc.v2\"\nSystemdCgroup = true\n",
        )
        .replacen("version = 2\n", "version = 2\noom_score = -999\n", 1);
    let after = uninstall(&edited, &done.added).unwrap();
    let doc: DocumentMut = after.parse().unwrap();
    assert!(husk_v2(&doc).is_none(), "{after}");
    assert_eq!(doc["oom_score"].as_integer(), Some(-999));
    let runc = get(&doc, &["plugins", CRI_V2, "containerd", "runtimes", "runc"]);
    assert!(runc.is_some(), "the user's changed runc went: {after}");
}

#[test]
fn wildcard_matches_like_filepath_match_within_a_name() {
    assert!(wildcard(b"*.toml", b"husk.toml"));
    assert!(wildcard(b"*", b"husk.toml"));
    assert!(wildcard(b"h?sk*", b"husk.toml"));
    assert!(!wildcard(b"*.conf", b"husk.toml"));
    assert!(!wildcard(b"?", b""));
    assert_eq!(normalize(Path::new("/a/./b/../c")), Path::new("/a/c"));
}
