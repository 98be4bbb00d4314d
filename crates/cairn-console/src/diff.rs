//! The difference between two JSON documents (two versions of an aggregate's state, two
//! versions of a schema), path by path.

use std::collections::BTreeMap;

use serde_json::Value;

/// Most leaves a document is flattened into; past it the comparison stops and says so (a
/// last row whose path is [`CUT_PATH`]).
pub const LEAVES_MAX: usize = 5_000;
/// The path of the row saying the comparison was cut at [`LEAVES_MAX`] leaves.
pub const CUT_PATH: &str = "(not compared)";

/// One difference: the path, and the value before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

fn flatten(value: &Value, path: &mut String, out: &mut BTreeMap<String, String>) {
    if out.len() >= LEAVES_MAX {
        return;
    }
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                flatten(v, path, out);
                path.truncate(len);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                flatten(v, path, out);
                path.truncate(len);
            }
        }
        leaf => {
            let key = if path.is_empty() { "/".to_owned() } else { path.clone() };
            out.insert(key, leaf.to_string());
        }
    }
}

/// The leaves (JSON Pointer paths) that differ between `before` and `after`.
pub fn changes(before: &Value, after: &Value) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(before, &mut String::new(), &mut a);
    flatten(after, &mut String::new(), &mut b);
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    let cut = a.len() >= LEAVES_MAX || b.len() >= LEAVES_MAX;
    let mut out: Vec<Change> = paths
        .into_iter()
        // A path past the cut may be missing from one side only because it was cut.
        .filter(|p| !cut || (a.contains_key(*p) && b.contains_key(*p)))
        .filter(|p| a.get(*p) != b.get(*p))
        .map(|p| Change { path: p.clone(), before: a.get(p).cloned(), after: b.get(p).cloned() })
        .collect();
    if cut {
        let note = Some(format!("only the first {LEAVES_MAX} values were compared"));
        out.push(Change { path: CUT_PATH.to_owned(), before: note.clone(), after: note });
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn changed_added_and_removed_leaves() {
        let before = json!({"status": "placed", "items": [{"sku": "a", "qty": 1}], "gone": true});
        let after =
            json!({"status": "paid", "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]});
        let c = changes(&before, &after);
        let paths: Vec<&str> = c.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/gone", "/items/0/qty", "/items/1/qty", "/items/1/sku", "/status"]);
        assert_eq!(c[0].after, None);
        assert_eq!(c[4].before.as_deref(), Some("\"placed\""));
    }

    #[test]
    fn a_cut_comparison_says_so_and_is_never_called_equal() {
        let big = |last: u64| {
            let mut items: Vec<u64> = vec![0; LEAVES_MAX + 1];
            items[LEAVES_MAX] = last;
            json!({"items": items, "b": 1})
        };
        let c = changes(&big(1), &big(2));
        assert_eq!(c.last().unwrap().path, CUT_PATH);
        assert!(c.iter().all(|c| c.path != "/b"), "a leaf past the cut is not 'removed'");
    }

    #[test]
    fn keys_with_slashes_do_not_collide() {
        let c = changes(&json!({"a/b": 1, "a": {"b": 1}}), &json!({"a/b": 1, "a": {"b": 2}}));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].path, "/a/b");
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// A document never differs from itself, and two documents with no differing
        /// leaf have the same leaves.
        #[test]
        fn no_changes_exactly_when_the_leaves_agree(a in value(), b in value()) {
            prop_assert!(changes(&a, &a).is_empty());
            let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
            flatten(&a, &mut String::new(), &mut fa);
            flatten(&b, &mut String::new(), &mut fb);
            prop_assert_eq!(changes(&a, &b).is_empty(), fa == fb);
        }
    }
}
