//! Three-way merge of session data as JSON: what a request changed (from the record it
//! read, `base`, to its own data, `mine`) applied to the record another request saved
//! meanwhile (`theirs`).
//!
//! - Objects merge per key, recursively: keys this request did not change keep their
//!   value; keys it changed, added or removed are changed, added or removed.
//! - Arrays merge as multisets: the elements this request removed are removed (once
//!   each, when still there), the ones it added are appended. Two requests adding a cart
//!   line each leave both lines.
//! - Anything else this request changed takes its value (the later save wins on that
//!   value only).
//!
//! A leaf: imports only `serde_json`.

use serde_json::{Map, Value};

/// `theirs` with the changes from `base` to `mine` applied.
pub(crate) fn merge3(base: &Value, mine: &Value, theirs: &Value) -> Value {
    if mine == base {
        return theirs.clone();
    }
    if theirs == base || theirs == mine {
        return mine.clone();
    }
    match (base, mine, theirs) {
        (Value::Object(b), Value::Object(m), Value::Object(t)) => Value::Object(objects(b, m, t)),
        (Value::Array(b), Value::Array(m), Value::Array(t)) => Value::Array(arrays(b, m, t)),
        _ => mine.clone(),
    }
}

fn objects(
    b: &Map<String, Value>,
    m: &Map<String, Value>,
    t: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = t.clone();
    for (k, mv) in m {
        match (b.get(k), t.get(k)) {
            (Some(bv), _) if bv == mv => {}
            (Some(bv), Some(tv)) => {
                out.insert(k.clone(), merge3(bv, mv, tv));
            }
            (None, Some(tv)) => {
                out.insert(k.clone(), merge3(&empty_like(mv), mv, tv));
            }
            (_, None) => {
                out.insert(k.clone(), mv.clone());
            }
        }
    }
    for k in b.keys() {
        if !m.contains_key(k) {
            out.remove(k);
        }
    }
    out
}

/// An empty value of `v`'s kind: the base of a key both sides added.
fn empty_like(v: &Value) -> Value {
    match v {
        Value::Object(_) => Value::Object(Map::new()),
        Value::Array(_) => Value::Array(Vec::new()),
        _ => Value::Null,
    }
}

/// `a` minus `b`, as multisets, in `a`'s order.
fn minus(a: &[Value], b: &[Value]) -> Vec<Value> {
    let mut out = a.to_vec();
    for x in b {
        if let Some(i) = out.iter().position(|y| y == x) {
            out.remove(i);
        }
    }
    out
}

fn arrays(b: &[Value], m: &[Value], t: &[Value]) -> Vec<Value> {
    let removed = minus(b, m);
    let added = minus(m, b);
    let mut out = minus(t, &removed);
    out.extend(added);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn disjoint_changes_both_survive() {
        let base = json!({"prefs": {"a": 1}, "cart": [{"p": 1}], "name": "x"});
        let mine = json!({"prefs": {"a": 1, "b": 2}, "cart": [{"p": 1}, {"p": 2}], "name": "x"});
        let theirs = json!({"prefs": {"a": 1, "c": 3}, "cart": [{"p": 1}, {"p": 3}], "name": "y"});
        assert_eq!(
            merge3(&base, &mine, &theirs),
            json!({"prefs": {"a": 1, "b": 2, "c": 3}, "cart": [{"p": 1}, {"p": 3}, {"p": 2}], "name": "y"})
        );
    }

    #[test]
    fn removals_and_conflicts() {
        let base = json!({"cart": [1, 2, 3], "n": 1, "gone": true});
        let mine = json!({"cart": [1, 3], "n": 2});
        let theirs = json!({"cart": [1, 2, 3, 4], "n": 5, "gone": true, "new": 0});
        assert_eq!(
            merge3(&base, &mine, &theirs),
            json!({"cart": [1, 3, 4], "n": 2, "new": 0})
        );
        // Unchanged here: theirs as is.
        assert_eq!(merge3(&base, &base, &theirs), theirs);
        // Both added the same key: merged from empty.
        assert_eq!(
            merge3(&json!({}), &json!({"p": {"a": 1}}), &json!({"p": {"b": 2}})),
            json!({"p": {"a": 1, "b": 2}})
        );
    }
}
