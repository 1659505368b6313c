//! YAML the way kubectl reads it, for the documents `airlock inject` rewrites.
//!
//! kubectl turns YAML into JSON with YAML 1.1 rules (go-yaml v2), not 1.2 ones. A plain
//! `0400` is the octal 256, plain `yes`/`on`/`off`/`y`/`n` are booleans, and `1_000` is
//! 1000, while the quoted forms stay strings. Merge keys (`<<`) are applied. A YAML 1.2
//! reader would turn a Secret volume's `defaultMode: 0400` into the string "0400", and
//! writing back an env value "on" unquoted would make it a boolean. Either way the API
//! would reject the object, or worse, accept another one. So documents are read from the
//! parser's events, keeping each scalar's style, and written back with every string that
//! either YAML version could misread in double quotes.
//!
//! Not supported, as in kubectl: base-60 numbers (`1:20` stays a string) and timestamps
//! (kept as the text written).

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where and why `text` could not be read; lines and columns count from 1 within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// The line of the fault, from 1.
    pub line: usize,
    /// The column of the fault, from 1.
    pub column: usize,
    /// What is wrong there, in the parser's words or ours.
    pub message: String,
}

impl std::error::Error for YamlError {}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {} column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Values a document may expand to through aliases: a few lines of nested aliases can
/// otherwise stand for billions of nodes.
const MAX_NODES: usize = 1_000_000;

/// The one document of `text` as JSON; `None` when it holds no node (only comments).
pub fn parse(text: &str) -> Result<Option<Value>, YamlError> {
    let mut reader = Reader {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
    };
    let mut document = None;
    loop {
        let (event, marker) = reader.next()?;
        match event {
            Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
            Event::StreamEnd => return Ok(document),
            event if document.is_none() => document = Some(reader.node(event, marker)?),
            _ => return Err(at(marker, "a second document where one was expected")),
        }
    }
}

struct Reader<'a> {
    parser: Parser<std::str::Chars<'a>>,
    /// Anchored values, and how many nodes each stands for.
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes built so far, aliases counted as what they expand to.
    nodes: usize,
}

impl Reader<'_> {
    fn next(&mut self) -> Result<(Event, Marker), YamlError> {
        self.parser.next_token().map_err(|e| {
            let marker = *e.marker();
            at(marker, e.info())
        })
    }

    fn count(&mut self, nodes: usize, marker: Marker) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(at(
                marker,
                &format!("the document expands to more than {MAX_NODES} values"),
            ));
        }
        Ok(())
    }

    fn node(&mut self, event: Event, marker: Marker) -> Result<Value, YamlError> {
        let before = self.nodes;
        self.count(1, marker)?;
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                (scalar(&text, style, tag.as_ref(), marker)?, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, marker) = self.next()?;
                    if event == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(event, marker)?);
                }
                (Value::Array(items), anchor)
            }
            Event::MappingStart(anchor, _) => (self.mapping()?, anchor),
            Event::Alias(id) => {
                let (value, nodes) = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| at(marker, "an alias of an unknown anchor"))?;
                self.count(nodes, marker)?;
                return Ok(value);
            }
            other => return Err(at(marker, &format!("unexpected {other:?}"))),
        };
        if anchor > 0 {
            let nodes = self.nodes - before;
            self.anchors.insert(anchor, (value.clone(), nodes));
        }
        Ok(value)
    }

    /// A mapping, with merge keys (`<<`) applied as go-yaml v2 does: entries in document
    /// order, each overriding what came before, and of a list of merged mappings the
    /// earlier ones win.
    fn mapping(&mut self) -> Result<Value, YamlError> {
        let mut map = Map::new();
        let mut own_keys = std::collections::HashSet::new();
        loop {
            let (event, marker) = self.next()?;
            if event == Event::MappingEnd {
                break;
            }
            let merge =
                matches!(&event, Event::Scalar(text, TScalarStyle::Plain, _, None) if text == "<<");
            let key = self.node(event, marker)?;
            let (value_event, value_marker) = self.next()?;
            let value = self.node(value_event, value_marker)?;
            if merge {
                let sources = match value {
                    Value::Object(source) => vec![source],
                    Value::Array(sources) if sources.iter().all(Value::is_object) => sources
                        .into_iter()
                        .rev()
                        .filter_map(|s| match s {
                            Value::Object(source) => Some(source),
                            _ => None,
                        })
                        .collect(),
                    _ => {
                        return Err(at(
                            marker,
                            "a merge key (<<) needs a mapping or a list of mappings",
                        ));
                    }
                };
                for (key, value) in sources.into_iter().flatten() {
                    map.insert(key, value);
                }
                continue;
            }
            let key =
                key_text(key).ok_or_else(|| at(marker, "a mapping or list cannot be a key"))?;
            if !own_keys.insert(key.clone()) {
                return Err(at(marker, &format!("the key {key:?} appears twice")));
            }
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// The scanner counts columns from 0; editors, and serde_norway's errors, from 1.
fn at(marker: Marker, message: &str) -> YamlError {
    YamlError {
        line: marker.line(),
        column: marker.col() + 1,
        message: message.to_owned(),
    }
}

/// JSON keys are strings; scalar keys become their text, as kubectl does. `None` for a
/// mapping or a list.
fn key_text(key: Value) -> Option<String> {
    match key {
        Value::String(text) => Some(text),
        Value::Null => Some("null".into()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => Some(number.to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

const TRUE_WORDS: [&str; 11] = [
    "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
];
const FALSE_WORDS: [&str; 11] = [
    "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
];
const NULL_WORDS: [&str; 5] = ["", "~", "null", "Null", "NULL"];

fn scalar(
    text: &str,
    style: TScalarStyle,
    tag: Option<&Tag>,
    marker: Marker,
) -> Result<Value, YamlError> {
    // The parser expands `!!x` to `tag:yaml.org,2002:x`; messages show the short form.
    let tag = tag.map(|t| {
        let full = format!("{}{}", t.handle, t.suffix);
        match full.strip_prefix("tag:yaml.org,2002:") {
            Some(core) => format!("!!{core}"),
            None => full,
        }
    });
    match tag.as_deref() {
        None if style == TScalarStyle::Plain => Ok(resolve_plain(text)),
        None | Some("!!str") => Ok(Value::String(text.to_owned())),
        Some(tag) => {
            let value = resolve_plain(text);
            let fits = match tag.trim_start_matches("!!") {
                "int" => value.as_i64().is_some() || value.as_u64().is_some(),
                "float" => value.is_number(),
                "bool" => value.is_boolean(),
                "null" => value.is_null(),
                _ => return Err(at(marker, &format!("the tag {tag} is not supported"))),
            };
            if fits {
                Ok(value)
            } else {
                Err(at(marker, &format!("{text:?} is not a {tag}")))
            }
        }
    }
}

/// A plain scalar's value under YAML 1.1 as go-yaml v2 resolves it.
fn resolve_plain(text: &str) -> Value {
    // Only these can start a number (`_1` is text, though `1_0` is ten).
    let numeric_start = text.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c));
    if NULL_WORDS.contains(&text) {
        return Value::Null;
    }
    if TRUE_WORDS.contains(&text) {
        return Value::Bool(true);
    }
    if FALSE_WORDS.contains(&text) {
        return Value::Bool(false);
    }
    numeric_start
        .then(|| integer(text).or_else(|| float(text)))
        .flatten()
        .unwrap_or_else(|| Value::String(text.to_owned()))
}

/// Decimal, `0x` hex, `0o` or leading-zero octal, `0b` binary; `_` separators allowed.
fn integer(text: &str) -> Option<Value> {
    let digits = text.replace('_', "");
    let (negative, unsigned) = match digits.as_bytes().first()? {
        b'-' => (true, &digits[1..]),
        b'+' => (false, &digits[1..]),
        _ => (false, digits.as_str()),
    };
    let prefix = unsigned.get(..2).map(str::to_ascii_lowercase);
    let (radix, body) = if prefix.as_deref() == Some("0x") {
        (16, &unsigned[2..])
    } else if prefix.as_deref() == Some("0o") {
        (8, &unsigned[2..])
    } else if prefix.as_deref() == Some("0b") {
        (2, &unsigned[2..])
    } else if unsigned.len() > 1 && unsigned.starts_with('0') {
        (8, &unsigned[1..])
    } else {
        (10, unsigned)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if negative {
        let value = i64::try_from(-i128::from(magnitude)).ok()?;
        Some(Value::Number(value.into()))
    } else {
        Some(Value::Number(magnitude.into()))
    }
}

/// Digits with a point or an exponent; `.inf` and `.nan` have no JSON form and stay text.
fn float(text: &str) -> Option<Value> {
    let digits = text.replace('_', "");
    let unsigned = digits.trim_start_matches(['-', '+']);
    let numeric = unsigned.starts_with(|c: char| c.is_ascii_digit())
        || (unsigned.starts_with('.') && unsigned[1..].starts_with(|c: char| c.is_ascii_digit()));
    if !numeric
        || !digits
            .chars()
            .all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
    {
        return None;
    }
    let value: f64 = digits.parse().ok()?;
    Number::from_f64(value).map(Value::Number)
}

/// `value` as block-style YAML that YAML 1.1 and 1.2 readers both read back as `value`.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_mapping(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_sequence(&mut out, items, 0),
        scalar => {
            write_scalar(&mut out, scalar, 0);
            out.push('\n');
        }
    }
    out
}

/// Writes the entries of `map`, each on its own line at `indent` (the first one at the
/// cursor, which the caller has placed at that column).
fn write_mapping(out: &mut String, map: &Map<String, Value>, indent: usize) {
    for (index, (key, value)) in map.iter().enumerate() {
        if index > 0 {
            out.push_str(&" ".repeat(indent));
        }
        if is_plain_safe(key) {
            out.push_str(key);
        } else {
            write_double_quoted(out, key);
        }
        out.push(':');
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                out.push_str(&" ".repeat(indent + 2));
                write_mapping(out, inner, indent + 2);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                out.push_str(&" ".repeat(indent));
                write_sequence(out, items, indent);
            }
            scalar => {
                out.push(' ');
                write_scalar(out, scalar, indent);
                out.push('\n');
            }
        }
    }
}

fn write_sequence(out: &mut String, items: &[Value], indent: usize) {
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str("- ");
        match item {
            Value::Object(inner) if !inner.is_empty() => write_mapping(out, inner, indent + 2),
            Value::Array(inner) if !inner.is_empty() => write_sequence(out, inner, indent + 2),
            scalar => {
                write_scalar(out, scalar, indent + 2);
                out.push('\n');
            }
        }
    }
}

/// A scalar (or an empty collection) at the cursor; `indent` is the column of the
/// enclosing entries, under which a block scalar's lines go.
fn write_scalar(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => out.push_str(&number_text(number)),
        Value::String(text) => write_string(out, text, indent),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// Floats keep a point and a signed exponent, which YAML 1.1 needs to read a float.
fn number_text(number: &Number) -> String {
    let text = number.to_string();
    if !number.is_f64() {
        return text;
    }
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa.to_owned(), Some(exponent.to_owned())),
        None => (text.clone(), None),
    };
    let mantissa = if mantissa.contains('.') {
        mantissa
    } else {
        format!("{mantissa}.0")
    };
    match exponent {
        Some(exponent) if exponent.starts_with(['-', '+']) => format!("{mantissa}e{exponent}"),
        Some(exponent) => format!("{mantissa}e+{exponent}"),
        None => mantissa,
    }
}

fn write_string(out: &mut String, text: &str, indent: usize) {
    if is_plain_safe(text) {
        out.push_str(text);
    } else if is_literal_safe(text) {
        write_literal(out, text, indent);
    } else {
        write_double_quoted(out, text);
    }
}

/// Plain only when no reader could take it for anything but this string: it starts with
/// a letter, holds no spaces or indicators, and is no boolean or null word.
fn is_plain_safe(text: &str) -> bool {
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    first.is_ascii_alphabetic()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-@%+".contains(c))
        && !TRUE_WORDS.contains(&text)
        && !FALSE_WORDS.contains(&text)
        && !NULL_WORDS.contains(&text)
}

/// Several lines of printable text whose first line does not start with a space (a
/// literal block would need an indentation indicator) and with no line of blanks only
/// (whose meaning depends on indentation).
fn is_literal_safe(text: &str) -> bool {
    text.contains('\n')
        && !text.starts_with([' ', '\t', '\n'])
        && text
            .chars()
            .all(|c| c == '\n' || c == '\t' || !needs_escape(c))
        && text
            .split('\n')
            .all(|line| line.is_empty() || !line.trim().is_empty())
}

fn write_literal(out: &mut String, text: &str, indent: usize) {
    let body = text.trim_end_matches('\n');
    let chomping = match text.len() - body.len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    out.push('|');
    out.push_str(chomping);
    let margin = " ".repeat(indent + 2);
    // The caller ends the last line; the lines before it end here.
    for line in text.strip_suffix('\n').unwrap_or(text).split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&margin);
            out.push_str(line);
        }
    }
}

/// Characters outside YAML's printable set, and the ones that a reader could take for a
/// line break or a byte-order mark.
fn needs_escape(c: char) -> bool {
    let printable = matches!(c, '\t' | '\n' | '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..);
    !printable || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn write_double_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(text: &str) -> Value {
        parse(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .unwrap()
    }

    #[test]
    fn plain_scalars_resolve_as_kubectl_reads_them() {
        let cases = [
            ("0400", json!(256)),
            ("'0400'", json!("0400")),
            ("0o17", json!(15)),
            ("0x1F", json!(31)),
            ("0X1F", json!(31)),
            ("0B11", json!(3)),
            ("0O17", json!(15)),
            ("_1", json!("_1")),
            ("-9223372036854775808", json!(i64::MIN)),
            ("18446744073709551616", json!(18446744073709551616.0)),
            ("0b101", json!(5)),
            ("1_000", json!(1000)),
            ("-12", json!(-12)),
            ("+12", json!(12)),
            ("12e3", json!(12000.0)),
            (".5", json!(0.5)),
            ("1.5", json!(1.5)),
            ("yes", json!(true)),
            ("\"yes\"", json!("yes")),
            ("on", json!(true)),
            ("Off", json!(false)),
            ("n", json!(false)),
            ("~", json!(null)),
            ("", json!(null)),
            ("'~'", json!("~")),
            ("1:20", json!("1:20")),
            ("2001-12-14", json!("2001-12-14")),
            (".inf", json!(".inf")),
            ("09", json!(9.0)),
            ("!!str 0400", json!("0400")),
            ("!!int '0x10'", json!(16)),
            ("web:1.2", json!("web:1.2")),
            ("|\n  a\n  b\n", json!("a\nb\n")),
        ];
        for (text, expected) in cases {
            let document = read(&format!("v: {text}\n"));
            assert_eq!(document["v"], expected, "{text}");
        }
    }

    #[test]
    fn anchors_merge_keys_and_key_rules() {
        let document = read(
            "base: &base {a: 1, b: 2}\nmore: &more {c: 3}\nmerged:\n  <<: [*base, *more]\n  b: 9\nalias: *base\n1: one\ntrue: yes\n",
        );
        assert_eq!(document["merged"], json!({"b": 9, "a": 1, "c": 3}));
        assert_eq!(document["alias"], json!({"a": 1, "b": 2}));
        assert_eq!(document["1"], json!("one"));
        assert_eq!(document["true"], json!(true));
        // go-yaml v2 (kubectl): a merge overrides the keys before it.
        let document = read("e: &e {name: A, value: 1}\nl:\n  name: B\n  value: own\n  <<: *e\n");
        assert_eq!(document["l"], json!({"name": "A", "value": 1}));
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
        let message = parse(laughs).unwrap_err().to_string();
        assert!(message.contains("expands to more than"), "{message}");
        for (text, error) in [
            (
                "a: 1\na: 2\n",
                "line 2 column 1: the key \"a\" appears twice",
            ),
            ("a: *nowhere\n", "unknown anchor"),
            ("a: !!int yes\n", "is not a !!int"),
            ("a: !custom x\n", "the tag !custom is not supported"),
            ("a: [1\n", "line"),
            ("<<: 1\n", "merge key"),
            ("? [a]\n: 1\n", "cannot be a key"),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(error), "{text:?}: {message}");
        }
        assert_eq!(parse("# only a comment\n").unwrap(), None);
    }

    #[test]
    fn written_yaml_reads_back_identically() {
        let strings = [
            "plain",
            "on",
            "yes",
            "Y",
            "null",
            "~",
            "",
            "0400",
            "1_000",
            "12e3",
            "1:20",
            "-dash",
            "- item",
            "key: value",
            "a #hash",
            "#hash",
            "@at",
            "%pct",
            "`tick`",
            "&anchor",
            "*alias",
            "!tag",
            "|pipe",
            ">fold",
            "'quote",
            "\"double",
            "trailing ",
            " leading",
            "tab\tinside",
            "ünïcödé",
            "line\u{2028}separator",
            "bell\u{7}",
            "non\u{fffe}character",
            "carriage\rreturn",
            "next\u{85}line",
            "two\nlines",
            "ends with newline\n",
            "two newlines\n\n",
            "\nstarts with newline",
            " indented\nblock",
            "blank\n\nline inside",
            "spaces at end \nnext",
            "https://airlock-ca.airlock-system.svc:15012",
            "airlock.dev/identity",
        ];
        let value = json!({
            "strings": strings.to_vec(),
            "numbers": [0, -1, 18446744073709551615u64, 1.5, 1e300, -2.5e-8, 12000.0],
            "flags": [true, false, null],
            "empty": {"map": {}, "list": [], "string": ""},
            "nested": [[1, [2]], {"a": [{"b": {"c": "d"}}]}, []],
            "keys": {"on": 1, "0400": 2, "with space": 3, "": 4},
        });
        let text = to_yaml(&value);
        assert_eq!(read(&text), value, "{text}");
        assert_eq!(to_yaml(&read(&text)), text, "writing is stable");
    }
}
