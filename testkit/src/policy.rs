//! Policy documents for tests: the `AuthorizationPolicy` envelope written once, so a test
//! states only its rules.

/// Whether a policy decides or only reports what it would have decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `mode: enforce` (the default, left out of the document).
    Enforce,
    /// `mode: dry-run`.
    DryRun,
}

/// An `AuthorizationPolicy` with the id `namespace/name`, selecting the workload
/// `target`, with `action` (`ALLOW` or `DENY`) and `rules`: the YAML items of its rules
/// list, each starting with `  - ` (two spaces, as the list's own indentation).
pub fn policy(id: &str, target: &str, action: &str, mode: Mode, rules: &str) -> String {
    let (namespace, name) = id.split_once('/').expect("a policy id is namespace/name");
    let mode = match mode {
        Mode::Enforce => "",
        Mode::DryRun => "  mode: dry-run\n",
    };
    format!(
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  \
         selector: {{identities: [{target}]}}\n  action: {action}\n{mode}  rules:\n{rules}"
    )
}

/// Several documents in one YAML stream.
pub fn documents(documents: &[String]) -> String {
    documents.join("---\n")
}
