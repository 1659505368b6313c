//! Reading: the parser's events to JSON, each plain scalar resolved by YAML 1.1 rules.

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

pub(super) const TRUE_WORDS: [&str; 11] = [
    "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
];
pub(super) const FALSE_WORDS: [&str; 11] = [
    "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
];
pub(super) const NULL_WORDS: [&str; 5] = ["", "~", "null", "Null", "NULL"];

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
