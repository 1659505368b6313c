//! The directory source (`--source dir:PATH`), for meshes without Kubernetes and for
//! tests: `PATH/registry.yaml` in the sidecar's registry format, and every other YAML
//! file under `PATH` holding AuthorizationPolicy documents, as `airlock policy check`
//! reads them. Re-read whenever a file's content changes.
//!
//! Each file is one object: a file that turns invalid is reported (with the loader's
//! file:line:column message) and its last valid content keeps applying, so one bad
//! edit takes nothing away from the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use airlock_api::proto::Service as WireService;
use airlock_config::Services;
use airlock_identity::TrustDomain;
use airlock_policy::load::LoadError;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::view::{MeshView, ViewPolicy};

/// The registry file's name, at the top of the directory.
pub const REGISTRY_FILE: &str = "registry.yaml";

/// The directory and the last valid content of each of its files.
pub struct DirSource {
    root: PathBuf,
    trust_domain: TrustDomain,
    /// The digest of every file's name and content at the last look.
    seen: Option<[u8; 32]>,
    registry: Option<Vec<WireService>>,
    /// Per policy file: its text and policies when it was last valid.
    policy_files: BTreeMap<PathBuf, (String, Vec<ViewPolicy>)>,
}

/// What one look at the directory found.
pub struct Look {
    /// The view to serve; `None` when the directory itself could not be listed (then
    /// nothing is known to have changed, and the last view stays served).
    pub view: Option<MeshView>,
    /// Why files were (still) not taken, one message each; empty when all are valid.
    pub problems: Vec<String>,
}

impl DirSource {
    /// A source for `root`; nothing is read until [`DirSource::look`].
    pub fn new(root: PathBuf, trust_domain: TrustDomain) -> Self {
        Self {
            root,
            trust_domain,
            seen: None,
            registry: None,
            policy_files: BTreeMap::new(),
        }
    }

    /// Reads the directory; `None` when no file changed since the last look. An
    /// unreadable directory is a problem like an invalid file: the last view stays.
    pub fn look(&mut self) -> Option<Look> {
        let mut problems = Vec::new();
        // A directory that cannot be listed changes nothing: every file keeps its last
        // valid content, as an unreadable file does.
        let listed = airlock_policy::load::policy_files(std::slice::from_ref(&self.root));
        let files = match &listed {
            Ok(files) => files.clone(),
            Err(errors) => {
                problems.push(airlock_policy::load::joined(errors));
                Vec::new()
            }
        };
        let mut texts = BTreeMap::new();
        let listed_ok = listed.is_ok();
        let mut unreadable: BTreeSet<PathBuf> = match listed {
            Ok(_) => BTreeSet::new(),
            Err(_) => (self.policy_files.keys().cloned())
                .chain([self.root.join(REGISTRY_FILE)])
                .collect(),
        };
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    texts.insert(file, text);
                }
                Err(e) => {
                    problems.push(format!("{}: {e}", file.display()));
                    unreadable.insert(file);
                }
            }
        }
        let digest = digest(&texts, &problems);
        if self.seen == Some(digest) {
            return None;
        }
        self.seen = Some(digest);

        let registry_path = self.root.join(REGISTRY_FILE);
        match texts.remove(&registry_path) {
            Some(text) => match read_registry(&registry_path, &text, &self.trust_domain) {
                Ok(services) => self.registry = Some(services),
                Err(message) => problems.push(message),
            },
            None if unreadable.contains(&registry_path) => {}
            None => self.registry = None,
        }
        self.policy_files
            .retain(|file, _| texts.contains_key(file) || unreadable.contains(file));
        for (file, text) in texts {
            if self
                .policy_files
                .get(&file)
                .is_some_and(|(held, _)| *held == text)
            {
                continue;
            }
            match read_policies(&file, &text) {
                Ok(policies) => {
                    self.policy_files.insert(file, (text, policies));
                }
                Err(message) => problems.push(message),
            }
        }
        let policies = self.unique_policies(&mut problems);
        let services = self.registry.clone().unwrap_or_default();
        Some(Look {
            view: listed_ok.then(|| MeshView::new(services, policies)),
            problems,
        })
    }

    /// Every file's policies, in file order; a policy whose name an earlier file already
    /// holds is left out and reported.
    fn unique_policies(&self, problems: &mut Vec<String>) -> Vec<ViewPolicy> {
        let mut seen = BTreeSet::new();
        let mut policies = Vec::new();
        for (file, (_, held)) in &self.policy_files {
            for policy in held {
                if seen.insert(policy.key().to_owned()) {
                    policies.push(policy.clone());
                } else {
                    problems.push(format!(
                        "{}: duplicate policy name {}; the first file that names it wins",
                        file.display(),
                        policy.key()
                    ));
                }
            }
        }
        policies
    }
}

fn digest(texts: &BTreeMap<PathBuf, String>, problems: &[String]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for (file, text) in texts {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    for problem in problems {
        hasher.update(problem.as_bytes());
    }
    hasher.finalize().into()
}

/// The registry file's services, each checked as a sidecar checks its registry (an
/// empty endpoint list is allowed: a service whose pods are all gone).
fn read_registry(
    file: &Path,
    text: &str,
    trust_domain: &TrustDomain,
) -> Result<Vec<WireService>, String> {
    let services: Services =
        serde_norway::from_str(text).map_err(|e| LoadError::from_yaml(file, &e).to_string())?;
    services
        .iter()
        .map(|(name, service)| {
            service
                .validate(name, trust_domain)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            Ok(airlock_api::service_to_wire(name, service))
        })
        .collect()
}

/// A policy file's AuthorizationPolicy documents, each as the one document it travels
/// as; the items of a `kind: List` (as `kubectl get -o yaml` writes) count as documents.
/// PolicyTest suites and comment-only documents are skipped.
fn read_policies(file: &Path, text: &str) -> Result<Vec<ViewPolicy>, String> {
    airlock_policy::load::parse_text(file, text)
        .map_err(|errors| airlock_policy::load::joined(&errors))?;
    let source = file.display().to_string();
    let mut policies = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = serde_norway::Value::deserialize(document)
            .map_err(|e| LoadError::from_yaml(file, &e).to_string())?;
        let kind = |value: &serde_norway::Value| {
            value
                .get("kind")
                .and_then(serde_norway::Value::as_str)
                .map(str::to_owned)
        };
        let items = match (kind(&value).as_deref(), value.get("items")) {
            (Some("List"), Some(serde_norway::Value::Sequence(items))) => items.clone(),
            _ => vec![value],
        };
        for item in items {
            if kind(&item).as_deref() != Some("AuthorizationPolicy") {
                continue;
            }
            let document = serde_norway::to_string(&item).expect("a YAML value always serializes");
            policies.push(ViewPolicy::from_document(&source, document)?);
        }
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRY: &str = "api:\n  identity: spiffe://td/ns/shop/sa/api\n  endpoints: [10.0.0.1:15008]\n  addresses: [10.96.0.1]\n";

    fn policy(name: &str, action: &str) -> String {
        format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  action: {action}\n  rules: [{{}}]\n"
        )
    }

    fn source() -> (tempfile::TempDir, DirSource) {
        let dir = tempfile::tempdir().unwrap();
        let source = DirSource::new(dir.path().to_owned(), TrustDomain::parse("td").unwrap());
        (dir, source)
    }

    #[test]
    fn the_registry_and_every_policy_file_make_the_view() {
        let (dir, mut source) = source();
        std::fs::write(dir.path().join(REGISTRY_FILE), REGISTRY).unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let suite = "apiVersion: airlock.dev/v1alpha1\nkind: PolicyTest\nmetadata: {name: t}\nspec: {cases: []}\n";
        std::fs::write(
            dir.path().join("policies/a.yaml"),
            format!(
                "{}---\n{}---\n# nothing\n",
                policy("one", "ALLOW"),
                policy("two", "DENY")
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("policies/suite.yaml"), suite).unwrap();
        // A `kubectl get -o yaml` export: a List of objects.
        let listed = policy("three", "ALLOW").replace('\n', "\n    ");
        std::fs::write(
            dir.path().join("policies/export.yaml"),
            format!("apiVersion: v1\nkind: List\nitems:\n  - {listed}\n"),
        )
        .unwrap();
        let look = source.look().expect("first look");
        assert_eq!(look.problems, Vec::<String>::new());
        assert_eq!(
            look.view
                .as_ref()
                .unwrap()
                .services
                .keys()
                .collect::<Vec<_>>(),
            ["api"]
        );
        assert_eq!(
            look.view.as_ref().unwrap().services["api"].addresses,
            ["10.96.0.1"]
        );
        assert_eq!(
            look.view
                .as_ref()
                .unwrap()
                .policies
                .keys()
                .collect::<Vec<_>>(),
            ["shop/one", "shop/three", "shop/two"]
        );
        let two = &look.view.as_ref().unwrap().policies["shop/two"].wire;
        assert!(two.source.ends_with("policies/a.yaml"), "{}", two.source);
        assert!(two.document.contains("DENY") && !two.document.contains("one"));
        assert!(source.look().is_none(), "nothing changed");
    }

    #[test]
    fn an_invalid_file_is_reported_and_its_last_valid_content_stays() {
        let (dir, mut source) = source();
        let file = dir.path().join("p.yaml");
        std::fs::write(dir.path().join(REGISTRY_FILE), REGISTRY).unwrap();
        std::fs::write(&file, policy("one", "ALLOW")).unwrap();
        let first = source.look().unwrap();
        assert!(first.problems.is_empty());

        std::fs::write(&file, policy("one", "PERMIT")).unwrap();
        std::fs::write(
            dir.path().join(REGISTRY_FILE),
            "api:\n  identity: spiffe://elsewhere/ns/shop/sa/api\n  endpoints: []\n",
        )
        .unwrap();
        let bad = source.look().unwrap();
        assert_eq!(bad.problems.len(), 2, "{:?}", bad.problems);
        assert!(
            bad.problems
                .iter()
                .any(|p| p.contains("registry.api.identity")),
            "{:?}",
            bad.problems
        );
        assert!(
            bad.problems.iter().any(|p| p.contains("p.yaml:5:")),
            "{:?}",
            bad.problems
        );
        assert_eq!(
            bad.view.unwrap().version,
            first.view.as_ref().unwrap().version,
            "the last valid view stays"
        );

        std::fs::write(&file, policy("one", "DENY")).unwrap();
        std::fs::write(dir.path().join(REGISTRY_FILE), REGISTRY).unwrap();
        let fixed = source.look().unwrap();
        assert!(fixed.problems.is_empty());
        assert_ne!(
            fixed.view.unwrap().version,
            first.view.as_ref().unwrap().version,
            "the control: a valid edit applies"
        );

        std::fs::remove_file(&file).unwrap();
        let removed = source.look().unwrap();
        assert!(
            removed.view.unwrap().policies.is_empty(),
            "a deleted file takes its policies along"
        );
    }

    #[test]
    fn a_name_twice_keeps_the_first_file() {
        let (dir, mut source) = source();
        std::fs::write(dir.path().join("a.yaml"), policy("same", "ALLOW")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), policy("same", "DENY")).unwrap();
        let look = source.look().unwrap();
        assert_eq!(look.problems.len(), 1);
        assert!(look.problems[0].contains("b.yaml") && look.problems[0].contains("shop/same"));
        assert!(
            look.view.as_ref().unwrap().policies["shop/same"]
                .wire
                .document
                .contains("ALLOW")
        );
    }
}
