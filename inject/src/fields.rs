//! Small readers shared by the pod mutation and its annotations: an item's `name`, and
//! a list as text.

use serde_json::Value;

/// The `name` of a container, volume or port.
pub(crate) fn name_of(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// Items as one comma-separated text, for messages and arguments.
pub(crate) fn list_text<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
