//! The value patterns policies are written with: exact, `prefix*`, `*suffix`, `*`.
//! Matching is literal (no regex, no case folding unless the field says so).

use std::fmt;

/// One pattern; built only through [`StringMatch::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// No `*`: the value equals the text.
    Exact(String),
    /// `text*`: the value starts with the text (held without the `*`).
    Prefix(String),
    /// `*text`: the value ends with the text (held without the `*`).
    Suffix(String),
    /// `*` alone: any value, the empty one included.
    Any,
}

impl StringMatch {
    /// `*` alone is "any"; a leading or trailing `*` makes a suffix or prefix pattern; a
    /// `*` anywhere else is refused (it would look like a glob that it is not).
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(Self::Any);
        }
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing; remove it or use \"*\"".into());
        }
        let inner = |s: &str| {
            if s.contains('*') {
                Err(format!(
                    "{pattern:?}: '*' is allowed only alone, as the first or as the last character"
                ))
            } else {
                Ok(s.to_owned())
            }
        };
        if let Some(prefix) = pattern.strip_suffix('*') {
            Ok(Self::Prefix(inner(prefix)?))
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Ok(Self::Suffix(inner(suffix)?))
        } else {
            Ok(Self::Exact(inner(pattern)?))
        }
    }

    /// Whether `value` matches, comparing bytes exactly (callers normalize first).
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Any => true,
        }
    }

    /// The literal text inside the pattern (empty for `*`).
    pub fn literal(&self) -> &str {
        match self {
            Self::Exact(s) | Self::Prefix(s) | Self::Suffix(s) => s,
            Self::Any => "",
        }
    }

    /// Applies `f` to the literal part, keeping the kind of pattern.
    pub fn map_literal(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Exact(s) => Self::Exact(f(s)),
            Self::Prefix(s) => Self::Prefix(f(s)),
            Self::Suffix(s) => Self::Suffix(f(s)),
            Self::Any => Self::Any,
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(s) => write!(f, "{s}"),
            Self::Prefix(s) => write!(f, "{s}*"),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Any => write!(f, "*"),
        }
    }
}

/// `positives` (any of, when non-empty) and `negatives` (none of) over one value.
/// An empty list places no constraint.
pub fn any_and_none<T>(positives: &[T], negatives: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (positives.is_empty() || positives.iter().any(&matches)) && !negatives.iter().any(matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_table() {
        let cases = [
            // (pattern, value, matches)
            ("/v1/charges", "/v1/charges", true),
            ("/v1/charges", "/v1/charges/", false),
            ("/v1/charges", "/V1/charges", false),
            ("/v1/refunds/*", "/v1/refunds/42", true),
            ("/v1/refunds/*", "/v1/refunds", false),
            ("*.internal", "db.internal", true),
            ("*.internal", "internal", false),
            ("*", "", true),
            ("*", "anything", true),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                StringMatch::parse(pattern).unwrap().matches(value),
                want,
                "{pattern} vs {value}"
            );
        }
    }

    #[test]
    fn refuses_inner_stars_and_empty() {
        assert!(StringMatch::parse("/a/*/b").is_err());
        assert!(StringMatch::parse("**").is_err());
        assert!(StringMatch::parse("").is_err());
        assert_eq!(StringMatch::parse("/a*").unwrap().to_string(), "/a*");
    }

    #[test]
    fn positive_and_negative_lists() {
        fn eq(v: &'static str) -> impl Fn(&&str) -> bool {
            move |p| *p == v
        }
        assert!(any_and_none::<&str>(&[], &[], eq("x")), "no constraint");
        assert!(any_and_none(&["x", "y"], &[], eq("y")));
        assert!(!any_and_none(&["x"], &[], eq("z")));
        assert!(!any_and_none(&[], &["z"], eq("z")));
        assert!(any_and_none(&[], &["z"], eq("x")));
    }
}
