//! RFC 6902 JSON Patch from a before/after pair, for the admission webhook. Objects are
//! compared member by member; anything else that differs (arrays included) is replaced
//! whole, which keeps the patch short for the injector's edits (a few arrays and one
//! annotation map) and trivially correct.

use serde_json::{Value, json};

/// The operations that turn `before` into `after`.
pub fn json_patch(before: &Value, after: &Value) -> Vec<Value> {
    let mut operations = Vec::new();
    diff(before, after, &mut String::new(), &mut operations);
    operations
}

fn diff(before: &Value, after: &Value, path: &mut String, operations: &mut Vec<Value>) {
    if before == after {
        return;
    }
    let (Value::Object(old), Value::Object(new)) = (before, after) else {
        operations.push(json!({"op": "replace", "path": path.as_str(), "value": after}));
        return;
    };
    for key in old.keys().filter(|key| !new.contains_key(*key)) {
        operations.push(json!({"op": "remove", "path": member(path, key)}));
    }
    for (key, value) in new {
        match old.get(key) {
            Some(previous) => {
                let length = path.len();
                path.push_str(&member("", key));
                diff(previous, value, path, operations);
                path.truncate(length);
            }
            None => {
                operations.push(json!({"op": "add", "path": member(path, key), "value": value}))
            }
        }
    }
}

/// `path` extended by one member name, escaped as RFC 6901 says (`~` → `~0`, `/` → `~1`).
fn member(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies `patch` the way the API server does, for the operations `json_patch` emits.
    fn apply(target: &mut Value, patch: &[Value]) {
        for operation in patch {
            let path = operation["path"].as_str().unwrap();
            let (parent, key) = path.rsplit_once('/').unwrap();
            let key = key.replace("~1", "/").replace("~0", "~");
            let slot = target.pointer_mut(parent).unwrap().as_object_mut().unwrap();
            match operation["op"].as_str().unwrap() {
                "remove" => {
                    slot.remove(&key).unwrap();
                }
                "add" => {
                    assert!(slot.insert(key, operation["value"].clone()).is_none());
                }
                "replace" => {
                    assert!(slot.insert(key, operation["value"].clone()).is_some());
                }
                other => panic!("unexpected op {other}"),
            }
        }
    }

    #[test]
    fn patches_turn_before_into_after() {
        let cases = [
            (json!({"a": 1}), json!({"a": 1})),
            (json!({"a": 1}), json!({"a": 2})),
            (
                json!({"a": {"b": [1]}}),
                json!({"a": {"b": [0, 1]}, "c": true}),
            ),
            (
                json!({"meta": {"x/y~z": "1"}}),
                json!({"meta": {"x/y~z": "2", "n": null}}),
            ),
            (
                json!({"gone": 1, "kept": {"deep": 1}}),
                json!({"kept": {"deep": 2}}),
            ),
        ];
        for (before, after) in cases {
            let patch = json_patch(&before, &after);
            let mut patched = before.clone();
            apply(&mut patched, &patch);
            assert_eq!(patched, after, "patch {patch:?}");
        }
    }

    #[test]
    fn member_names_are_escaped() {
        let patch = json_patch(
            &json!({"annotations": {}}),
            &json!({"annotations": {"airlock.dev/identity": "x", "a~b": "y"}}),
        );
        let paths: Vec<&str> = patch
            .iter()
            .map(|op| op["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            ["/annotations/airlock.dev~1identity", "/annotations/a~0b"]
        );
    }
}
