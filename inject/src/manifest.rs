//! `airlock inject -f`: the injection of a multi-document YAML stream, as `kubectl apply`
//! reads it. Documents are cut at `---` lines, so that every document that is not
//! injected comes out byte for byte as it went in (comments, quoting, key order).
//! Injected documents are re-serialized: their key order is kept, their comments are not.

use serde_json::Value;

use crate::pod::{InjectOptions, Outcome};
use crate::workload::{Report, WorkloadError, inject_object, template_pointer};
use crate::yaml::{self, YamlError};

/// The injected stream and a report per pod template met.
#[derive(Debug)]
pub struct Injected {
    /// The whole stream again: documents without an injected template byte for byte,
    /// injected ones re-serialized.
    pub text: String,
    /// One per pod template of every workload in the stream, in stream order, whether
    /// injected or skipped.
    pub reports: Vec<Report>,
}

/// Why a manifest could not be injected: the document at fault, by the line it starts on
/// in the stream, and what is wrong in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Neither YAML reader reads the document; the error's line counts in the whole
    /// stream.
    #[error("document at line {document}: {source}")]
    Yaml {
        /// The stream's line the document starts on, from 1 (its `---` line, if any).
        document: usize,
        /// What the reader said, with the line counted in the whole stream.
        #[source]
        source: YamlError,
    },
    /// A workload of the document cannot be injected.
    #[error("document at line {document}: {source}")]
    Workload {
        /// The stream's line the document starts on, from 1 (its `---` line, if any).
        document: usize,
        /// The object and field at fault.
        #[source]
        source: WorkloadError,
    },
}

/// Injects every workload of `text`. An error names the document (by its first line) and
/// the field at fault; then nothing is output.
pub fn inject_manifest(text: &str, options: &InjectOptions) -> Result<Injected, ManifestError> {
    let mut out = String::with_capacity(text.len() * 2);
    let mut reports = Vec::new();
    for document in documents(text) {
        let (rewritten, document_reports) = inject_document(&document, options)?;
        reports.extend(document_reports);
        match rewritten {
            Some(yaml) => {
                if !document.separator.is_empty() {
                    out.push_str("---\n");
                }
                out.push_str(&yaml);
            }
            None => {
                out.push_str(document.separator);
                out.push_str(document.body);
            }
        }
    }
    Ok(Injected { text: out, reports })
}

/// One YAML document of the stream: its `---` line (empty for the first document when it
/// has none) and the text up to the next one.
struct Document<'a> {
    separator: &'a str,
    body: &'a str,
    /// 1-based line of the separator (or of the body, for the first document).
    first_line: usize,
}

/// A line that starts a new document: `---` alone or followed by a space or tab. Inside
/// block scalars and flow collections such a line cannot occur at column 0.
fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

fn documents(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut current = Document {
        separator: "",
        body: "",
        first_line: 1,
    };
    let mut body_start = 0;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line) {
            current.body = &text[body_start..offset];
            if !(current.separator.is_empty() && current.body.is_empty()) {
                documents.push(current);
            }
            current = Document {
                separator: line,
                body: "",
                first_line: index + 1,
            };
            body_start = offset + line.len();
        }
        offset += line.len();
    }
    current.body = &text[body_start..];
    documents.push(current);
    documents
}

/// The document rewritten when one of its pod templates was injected, and the reports.
fn inject_document(
    document: &Document<'_>,
    options: &InjectOptions,
) -> Result<(Option<String>, Vec<Report>), ManifestError> {
    // Content on the `---` line itself (`--- {kind: Pod}`) belongs to the document.
    let inline = document.separator.get(3..).unwrap_or("");
    let source = format!("{inline}{}", document.body);
    // Documents are sorted by kind with either reader, so that one only the other can
    // read (custom tags, say) passes through untouched unless it holds pods. YAML that
    // neither reads is an error.
    let kind = match serde_norway::from_str::<serde_norway::Value>(&source) {
        Ok(generic) => generic
            .get("kind")
            .and_then(serde_norway::Value::as_str)
            .map(str::to_owned),
        Err(_) => yaml::parse(&source)
            .map_err(|error| yaml_error(&error, document))?
            .and_then(|value| Some(value.get("kind")?.as_str()?.to_owned())),
    }
    .unwrap_or_default();
    if template_pointer(&kind).is_none() && !kind.ends_with("List") {
        return Ok((None, Vec::new()));
    }
    // Documents that may change are read the way kubectl reads them (`yaml`).
    let mut object = yaml::parse(&source)
        .map_err(|e| yaml_error(&e, document))?
        .unwrap_or(Value::Null);
    let reports =
        inject_object(&mut object, &kind, &options.namespace, options).map_err(|source| {
            ManifestError::Workload {
                document: document.first_line,
                source,
            }
        })?;
    if !reports
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Injected(_)))
    {
        return Ok((None, reports));
    }
    Ok((Some(yaml::to_yaml(&object)), reports))
}

/// The error with its line counted in the whole stream: the parsed text starts on the
/// document's first line (the rest of the separator line, maybe just its newline).
fn yaml_error(error: &YamlError, document: &Document<'_>) -> ManifestError {
    ManifestError::Yaml {
        document: document.first_line,
        source: YamlError {
            line: document.first_line + error.line - 1,
            ..error.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_separator_lines_only() {
        let text = "a: 1\n---\nb: |\n  ---\n  x\n--- # c\nc: 3\n---\n";
        let docs = documents(text);
        let parts: Vec<(&str, &str, usize)> = docs
            .iter()
            .map(|d| (d.separator, d.body, d.first_line))
            .collect();
        assert_eq!(
            parts,
            vec![
                ("", "a: 1\n", 1),
                ("---\n", "b: |\n  ---\n  x\n", 2),
                ("--- # c\n", "c: 3\n", 6),
                ("---\n", "", 8),
            ]
        );
        let joined: String = docs
            .iter()
            .map(|d| format!("{}{}", d.separator, d.body))
            .collect();
        assert_eq!(joined, text);
    }

    #[test]
    fn a_stream_starting_with_a_separator_has_no_empty_first_document() {
        let docs = documents("---\nkind: Service\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].separator, "---\n");
    }
}
