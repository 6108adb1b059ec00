//! JSON read without building a tree. A field's value can list tens of thousands of assets:
//! each stays the text the API wrote (`RawValue`, a few hundred bytes), where a parsed `Value`
//! would take several times that, and only the members a caller names are parsed. Receives
//! answer bodies and field values; emits members, lists and the few scalars the client reads.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// A field's value as a list: each asset exactly as the API wrote it.
pub type RawList = Vec<Box<RawValue>>;

/// The members of a JSON object, borrowed from its text; `None` for anything but an object.
pub fn members(raw: &RawValue) -> Option<BTreeMap<String, &RawValue>> {
    if !raw.get().starts_with('{') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// A string or a number as text (ids come as either); `None` for anything else.
pub fn text(raw: &RawValue) -> Option<String> {
    // Never parse a list or an object only to find it is not a scalar.
    if raw.get().starts_with(['{', '[']) {
        return None;
    }
    match serde_json::from_str(raw.get()).ok()? {
        Value::String(text) => Some(text),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// A value read as a list: an array's elements, nothing for `null`, anything else as the one
/// element (as `into_list` reads a parsed value).
pub fn items(raw: &RawValue) -> RawList {
    match raw.get() {
        "null" => Vec::new(),
        text if text.starts_with('[') => serde_json::from_str::<Vec<&RawValue>>(text)
            .map(|items| items.into_iter().map(ToOwned::to_owned).collect())
            .unwrap_or_default(),
        _ => vec![raw.to_owned()],
    }
}

/// An object read into `T`, in one pass that skips the members `T` does not name; `None` for
/// anything but an object (serde would read an array into a struct by position).
pub fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    if !raw.get().starts_with('{') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// The `data` member of an object, as an answer and a relation carry it.
#[derive(Deserialize, Default)]
pub struct Data<'a> {
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// A relation as the API includes it, `{"data": [...]}`, or the list bare.
pub fn relation(raw: &RawValue) -> &RawValue {
    object::<Data>(raw)
        .and_then(|relation| relation.data)
        .unwrap_or(raw)
}

/// A parsed value as text, to sit in a list of raw values.
pub fn of(value: &Value) -> Box<RawValue> {
    // Writing a `Value` cannot fail: its keys are strings and its numbers finite.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// A list as one JSON array; `None` only if the text of an item were not JSON, which a
/// `RawValue` always is.
pub fn array(items: &[Box<RawValue>]) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(items).ok()
}

/// The text as a parsed value (`Null` when it is not JSON, which a `RawValue` always is).
pub fn value(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// The id and the stored file name of an asset in a field's value, from one pass over its text.
pub fn asset_keys(raw: &RawValue) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Keys<'a> {
        #[serde(borrow, default)]
        id: Option<&'a RawValue>,
        #[serde(borrow, default)]
        filename: Option<&'a RawValue>,
    }
    match object::<Keys>(raw) {
        Some(keys) => (
            keys.id.and_then(text),
            keys.filename.and_then(|name| match value(name) {
                Value::String(name) => Some(name),
                _ => None,
            }),
        ),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    #[test]
    fn a_list_is_read_item_by_item_without_changing_their_text() {
        let list = items(&raw(r#"[{"id": "a1", "filename":"x.pdf"}, {"id":2}]"#));
        let texts: Vec<&str> = list.iter().map(|item| item.get()).collect();
        assert_eq!(
            texts,
            [r#"{"id": "a1", "filename":"x.pdf"}"#, r#"{"id":2}"#]
        );
        assert!(items(&raw("null")).is_empty());
        assert_eq!(items(&raw(r#"{"id":"solo"}"#)).len(), 1);
    }

    #[test]
    fn asset_keys_read_string_and_numeric_ids_and_escaped_names() {
        assert_eq!(
            asset_keys(&raw(
                r#"{"id":"a1","filename":"caf\u00e9 \"x\".pdf","url":"u"}"#
            )),
            (Some("a1".into()), Some("café \"x\".pdf".into()))
        );
        assert_eq!(asset_keys(&raw(r#"{"id":7}"#)), (Some("7".into()), None));
        assert_eq!(
            asset_keys(&raw(r#"{"id":null,"filename":3}"#)),
            (None, None)
        );
        assert_eq!(asset_keys(&raw(r#"["a1","x.pdf"]"#)), (None, None));
    }

    #[test]
    fn members_and_relations_are_read_from_the_text() {
        let task = raw(r#"{"id":12,"form_fields":{"data":[{"id":"f"}]},"title":"T"}"#);
        let members = members(&task).unwrap();
        assert_eq!(text(members["id"]).as_deref(), Some("12"));
        assert_eq!(text(members["form_fields"]), None);
        assert_eq!(relation(members["form_fields"]).get(), r#"[{"id":"f"}]"#);
        assert_eq!(relation(&raw("[1]")).get(), "[1]");
        assert!(super::members(&raw("[1]")).is_none());
    }
}
