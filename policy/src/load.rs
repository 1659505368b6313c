//! Reading policy files: single files or directories of `*.yaml`/`*.yml`, each holding
//! one or more YAML documents (`AuthorizationPolicy` or `PolicyTest`). Every error names
//! file:line:column; all errors of all files are collected, not just the first.
//!
//! Directories are read like Kubernetes mounts ConfigMaps: names starting with `.` (such
//! as `..data` and the timestamped `..2026_…` directories) are skipped, and symlinks are
//! followed, so the atomic `..data` swap is seen as one consistent change.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::AuthorizationPolicy;
use crate::set::{Origin, Policy, PolicyId};
use crate::suite::PolicyTest;

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file the problem is in, as named by the paths given (or found in a directory).
    pub file: PathBuf,
    /// 1-based; `None` when the problem concerns the whole file.
    pub line: Option<usize>,
    /// 1-based; `None` when only the line (or neither) is known.
    pub column: Option<usize>,
    /// What is wrong, without the position.
    pub message: String,
}

impl LoadError {
    /// A YAML parse or schema error in `file`, at the position the parser reports. Every
    /// YAML file airlock reads (policies, the sidecar's configuration) words its errors
    /// this way: `file:line:column: message`.
    pub fn from_yaml(file: &Path, error: &serde_norway::Error) -> Self {
        let text = error.to_string();
        // serde_norway appends " at line L column C"; the position goes in front instead.
        let message = match text.rfind(" at line ") {
            Some(cut) if error.location().is_some() => text[..cut].to_owned(),
            _ => text,
        };
        Self {
            file: file.to_owned(),
            line: error.location().map(|l| l.line()),
            column: error.location().map(|l| l.column()),
            message,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for LoadError {}

/// Everything read from a set of paths.
#[derive(Debug, Default)]
pub struct Documents {
    /// Every `AuthorizationPolicy`, in file order; ids are unique once [`load`] succeeds.
    pub policies: Vec<Policy>,
    /// Every `PolicyTest` suite with where its document starts, in file order.
    pub tests: Vec<(Origin, PolicyTest)>,
}

/// The files that `paths` name, in a stable order.
pub fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<LoadError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        collect_files(path, &mut files, &mut errors);
    }
    // Overlapping arguments (`dir` and `dir/a.yaml`, or a symlinked directory) must not
    // read a file twice, or its policies would clash with themselves.
    let mut seen = std::collections::HashSet::new();
    files.retain(|file| seen.insert(std::fs::canonicalize(file).unwrap_or_else(|_| file.clone())));
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<LoadError>) {
    let whole_file = |message: String| LoadError {
        file: path.to_owned(),
        line: None,
        column: None,
        message,
    };
    // metadata() follows symlinks, as the ConfigMap layout needs.
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let entries = match std::fs::read_dir(path) {
                Ok(entries) => entries,
                Err(e) => return errors.push(whole_file(e.to_string())),
            };
            let mut children: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            children.sort();
            for child in children {
                let is_yaml = child.extension().is_some_and(|e| e == "yaml" || e == "yml");
                if std::fs::metadata(&child).is_ok_and(|m| m.is_dir()) || is_yaml {
                    collect_files(&child, files, errors);
                }
            }
        }
        Ok(_) => files.push(path.to_owned()),
        Err(e) => errors.push(whole_file(e.to_string())),
    }
}

#[derive(Deserialize)]
struct KindProbe {
    #[serde(default)]
    kind: Option<String>,
}

/// Reads and validates every document under `paths`. Policy names must be unique per
/// namespace across all files.
pub fn load(paths: &[PathBuf]) -> Result<Documents, Vec<LoadError>> {
    let files = policy_files(paths)?;
    let mut documents = Documents::default();
    let mut errors = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => parse_file(file, &text, &mut documents, &mut errors),
            Err(e) => errors.push(LoadError {
                file: file.clone(),
                line: None,
                column: None,
                message: e.to_string(),
            }),
        }
    }
    check_unique_names(&documents.policies, &mut errors);
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

/// Parses one file's text (exposed for tests and fuzzing).
pub fn parse_file(file: &Path, text: &str, documents: &mut Documents, errors: &mut Vec<LoadError>) {
    // A file rewritten in place is empty for a moment; loading that as "no policies"
    // would deny (or allow) everything until the write lands. Saying "no policies" takes
    // a comment, or deleting the file.
    if text.trim().is_empty() {
        errors.push(LoadError {
            file: file.to_owned(),
            line: None,
            column: None,
            message: "the file is empty, as a file being rewritten in place is for a moment; \
                      to mean \"no policies\", write a comment-only document (# no policies) \
                      or delete the file"
                .into(),
        });
        return;
    }
    let starts = document_start_lines(text);
    // Pass 1: the kind of each document (null documents, e.g. a trailing `---`, are skipped).
    let mut kinds = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        match Option::<KindProbe>::deserialize(document) {
            Ok(probe) => kinds.push(probe.map(|p| p.kind)),
            Err(e) => {
                errors.push(LoadError::from_yaml(file, &e));
                return;
            }
        }
    }
    // Pass 2: each document as its kind, so field errors keep their positions.
    for (index, (document, kind)) in serde_norway::Deserializer::from_str(text)
        .zip(kinds)
        .enumerate()
    {
        let start = starts.get(index).copied().unwrap_or(1);
        let Some(kind) = kind else { continue };
        match kind.as_deref() {
            Some("AuthorizationPolicy") => match AuthorizationPolicy::deserialize(document) {
                Ok(policy) => push_policy(file, text, start, policy, documents),
                Err(e) => errors.push(LoadError::from_yaml(file, &e)),
            },
            // `kubectl get authorizationpolicies -o yaml` prints a List of the objects.
            Some("List") => match KubernetesList::deserialize(document) {
                Ok(list) => {
                    for policy in list.items {
                        if policy.kind == "AuthorizationPolicy" {
                            push_policy(file, text, start, policy, documents);
                        } else {
                            errors.push(LoadError {
                                file: file.to_owned(),
                                line: Some(line_of(text, start, &format!("kind: {}", policy.kind))),
                                column: None,
                                message: format!(
                                    "a List item of kind {:?}; a List may hold AuthorizationPolicy objects only",
                                    policy.kind
                                ),
                            });
                        }
                    }
                }
                Err(e) => errors.push(LoadError::from_yaml(file, &e)),
            },
            Some("PolicyTest") => match PolicyTest::deserialize(document) {
                Ok(test) => documents.tests.push((
                    Origin {
                        file: file.to_owned(),
                        line: start,
                    },
                    test,
                )),
                Err(e) => errors.push(LoadError::from_yaml(file, &e)),
            },
            other => errors.push(LoadError {
                file: file.to_owned(),
                line: Some(line_of(text, start, "kind:")),
                column: None,
                message: match other {
                    Some(kind) => format!(
                        "unknown kind {kind:?}; expected AuthorizationPolicy, PolicyTest or a List of AuthorizationPolicy objects"
                    ),
                    None => "the document has no kind; expected AuthorizationPolicy or PolicyTest"
                        .into(),
                },
            }),
        }
    }
}

/// A Kubernetes List (`apiVersion: v1`, `kind: List`, `items`), as kubectl prints several
/// objects; its metadata is ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KubernetesList {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default, rename = "metadata")]
    _metadata: Option<serde::de::IgnoredAny>,
    items: Vec<AuthorizationPolicy>,
}

/// Adds `policy`, found in the document starting at line `start` of `file`.
fn push_policy(
    file: &Path,
    text: &str,
    start: usize,
    policy: AuthorizationPolicy,
    documents: &mut Documents,
) {
    let line = line_of(text, start, &format!("name: {}", policy.metadata.name.0));
    documents.policies.push(Policy {
        id: PolicyId::new(&policy.metadata.namespace.0, &policy.metadata.name.0),
        spec: policy.spec,
        origin: Origin {
            file: file.to_owned(),
            line,
        },
    });
}

/// 1-based first line of each YAML document, as the YAML parser counts them: an implicit
/// document when content comes before the first `---`, then one per `---`.
fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let separator = line == "---" || line.starts_with("--- ");
        let content = !line.trim().is_empty() && !line.trim_start().starts_with('#');
        if separator || (starts.is_empty() && content) {
            starts.push(index + 1);
        }
    }
    starts
}

/// The first line at or after `from` containing `needle` (or `from`).
fn line_of(text: &str, from: usize, needle: &str) -> usize {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| line.contains(needle))
        .map_or(from, |(index, _)| index + 1)
}

/// `errors` as one message, `; ` between them (a reload's log line, a refusal's text).
pub fn joined(errors: &[LoadError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Refuses two policies with one `namespace/name`, naming where each was written; what
/// [`load`] checks across its files, for callers that gather policies themselves.
pub fn unique_names(policies: &[Policy]) -> Result<(), Vec<LoadError>> {
    let mut errors = Vec::new();
    check_unique_names(policies, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The document an `AuthorizationPolicy` custom resource stands for (its `spec` under
/// its namespace and name), as YAML for [`parse_text`]. The controller and the
/// admission webhook both read objects this way, so that a refusal, the object's status
/// and its Event give the same message.
pub fn resource_document<S: serde::Serialize>(namespace: &str, name: &str, spec: &S) -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Document<'a, S> {
        api_version: &'a str,
        kind: &'a str,
        metadata: Metadata<'a>,
        spec: &'a S,
    }
    #[derive(serde::Serialize)]
    struct Metadata<'a> {
        name: &'a str,
        namespace: &'a str,
    }
    serde_norway::to_string(&Document {
        api_version: crate::model::API_VERSION,
        kind: "AuthorizationPolicy",
        metadata: Metadata { name, namespace },
        spec,
    })
    .expect("a document of plain values serializes")
}

/// Reads one document stream, `text`, as if it were file `file` (a policy pushed by the
/// control plane is read this way, named by where it came from).
pub fn parse_text(file: &Path, text: &str) -> Result<Documents, Vec<LoadError>> {
    let mut documents = Documents::default();
    let mut errors = Vec::new();
    parse_file(file, text, &mut documents, &mut errors);
    check_unique_names(&documents.policies, &mut errors);
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

fn check_unique_names(policies: &[Policy], errors: &mut Vec<LoadError>) {
    let mut first_seen: HashMap<&PolicyId, &Origin> = HashMap::new();
    for policy in policies {
        if let Some(first) = first_seen.get(&policy.id) {
            errors.push(LoadError {
                file: policy.origin.file.clone(),
                line: Some(policy.origin.line),
                column: None,
                message: format!(
                    "duplicate policy name {} (first defined at {first})",
                    policy.id
                ),
            });
        } else {
            first_seen.insert(&policy.id, &policy.origin);
        }
    }
}
