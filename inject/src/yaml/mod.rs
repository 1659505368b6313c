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

mod read;
mod write;

pub use read::{YamlError, parse};
pub use write::to_yaml;

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

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
