//! The hot-reload store against the directory layout Kubernetes uses for a mounted
//! ConfigMap: files are symlinks through `..data`, which is swapped atomically.

use std::os::unix::fs::symlink;
use std::path::Path;

use airlock_policy::store::{PolicyStore, Reloaded};

fn policy(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: pay}}\nspec:\n  action: ALLOW\n  rules: {rules}\n"
    )
}

/// Writes a new timestamped data directory and swaps `..data` to it the way the kubelet
/// does: a temporary symlink renamed over the old one.
fn publish(dir: &Path, version: &str, files: &[(&str, String)]) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    let temp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &temp).unwrap();
    std::fs::rename(&temp, dir.join("..data")).unwrap();
}

#[test]
fn configmap_swap_reloads_and_invalid_versions_keep_the_old_set() {
    let dir = tempfile::tempdir().unwrap();
    publish(
        dir.path(),
        "2026_11_28_v1",
        &[("policies.yaml", policy("first", "[{}]"))],
    );
    let store = PolicyStore::open(vec![dir.path().to_owned()]).unwrap();
    let mut changes = store.subscribe();
    assert_eq!(store.current().policies()[0].id.as_str(), "pay/first");
    assert_eq!(store.reload().unwrap(), Reloaded::Unchanged);
    assert!(!changes.has_changed().unwrap());

    // A valid new version is picked up through the swapped ..data link.
    publish(
        dir.path(),
        "2026_11_28_v2",
        &[("policies.yaml", policy("second", "[{}]"))],
    );
    assert_eq!(store.reload().unwrap(), Reloaded::Swapped);
    assert!(changes.has_changed().unwrap());
    assert_eq!(*changes.borrow_and_update(), 1);
    assert_eq!(store.current().policies()[0].id.as_str(), "pay/second");

    // An invalid version is refused, counted, and the live set stays.
    publish(
        dir.path(),
        "2026_11_28_v3",
        &[(
            "policies.yaml",
            policy("third", "[{to: [{operation: {ports: [0]}}]}]"),
        )],
    );
    let errors = store.reload().unwrap_err();
    assert!(
        errors[0].to_string().contains("outside 1-65535"),
        "{errors:?}"
    );
    assert_eq!(store.failed_reloads(), 1);
    assert!(!changes.has_changed().unwrap());
    assert_eq!(store.current().policies()[0].id.as_str(), "pay/second");

    // Fixed again: swapped.
    publish(
        dir.path(),
        "2026_11_28_v4",
        &[(
            "policies.yaml",
            policy("fourth", "[{expiresAt: \"2030-01-01T00:00:00Z\"}]"),
        )],
    );
    assert_eq!(store.reload().unwrap(), Reloaded::Swapped);
    assert_eq!(store.current().policies()[0].id.as_str(), "pay/fourth");
    assert_eq!(store.next_grant_change(1_800_000_000), Some(1_893_456_000));
}

#[test]
fn pushed_policies_join_the_files_and_a_clash_keeps_the_live_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("local.yaml"), policy("local", "[{}]")).unwrap();
    let store = PolicyStore::open(vec![dir.path().to_owned()]).unwrap();
    let (_, files_only) = store.versioned();
    let pushed = |name: &str| {
        airlock_policy::load::parse_text(
            Path::new("AuthorizationPolicy pay/x"),
            &policy(name, "[{}]"),
        )
        .unwrap()
        .policies
    };
    let ids = |store: &PolicyStore| -> Vec<String> {
        store
            .current()
            .policies()
            .iter()
            .map(|p| p.id.to_string())
            .collect()
    };
    store.set_pushed(pushed("remote"), "v1").unwrap();
    assert_eq!(ids(&store), ["pay/local", "pay/remote"]);
    let (_, with_v1) = store.versioned();
    assert_ne!(with_v1, files_only, "the version follows the pushed half");

    let clash = store.set_pushed(pushed("local"), "v2").unwrap_err();
    assert!(
        clash[0]
            .to_string()
            .contains("duplicate policy name pay/local"),
        "{clash:?}"
    );
    assert_eq!(
        ids(&store),
        ["pay/local", "pay/remote"],
        "refused: the live set stays"
    );
    assert_eq!(store.versioned().1, with_v1);

    // A file reload keeps the pushed half.
    std::fs::write(dir.path().join("local.yaml"), policy("local2", "[{}]")).unwrap();
    assert_eq!(store.reload().unwrap(), Reloaded::Swapped);
    assert_eq!(ids(&store), ["pay/local2", "pay/remote"]);
    store.set_pushed(Vec::new(), "v3").unwrap();
    assert_eq!(ids(&store), ["pay/local2"]);
}
