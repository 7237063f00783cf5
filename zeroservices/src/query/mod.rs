//! A MongoDB-subset filter language, with sorting, paging and text search.
//!
//! Implemented once here and used by the in-memory and embedded stores; the MongoDB store passes
//! the raw filter through natively, so the semantics follow MongoDB's where practical:
//!
//! * top-level keys are dotted field paths, or `$and` / `$or` / `$nor` (non-empty arrays of
//!   filters), or `$text: {"$search": "..."}`;
//! * a field value whose keys all start with `$` is an operator object (`$eq $ne $gt $gte $lt
//!   $lte $in $nin $exists $not $size $all $elemMatch`); any other value is a literal compared for
//!   equality;
//! * dotted paths traverse arrays (`items.name` looks at the `name` of every element of `items`),
//!   and numeric segments index them (`items.0.name`);
//! * equality against an array field matches the whole array or any of its elements;
//! * `$ne` / `$nin` are the negations of `$eq` / `$in`, and `{"f": null}` matches a missing `f`;
//! * `$gt $gte $lt $lte` only compare values of the same type bracket (numbers with numbers,
//!   strings with strings, ...);
//! * numbers compare numerically whatever their representation (`2 == 2.0`).
//!
//! The parts: [`compare`](fn@compare) (MongoDB's order of values), [`Filter`] (parsing and
//! matching), [`text_matches`] (`$text`), and here [`Query`] (filter, sort, skip, limit).

mod compare;
mod filter;
mod text;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

pub use self::compare::compare;
use self::compare::compare_numbers;
pub(crate) use self::compare::{type_name, values_equal};
pub use self::filter::Filter;
use self::filter::candidates;
pub(crate) use self::filter::{Condition, is_operator_object};
use self::text::TextSearch;
pub use self::text::text_matches;
use crate::error::{Error, Result};

/// The value at a dotted `path` of `doc`, if any.
///
/// Object keys are looked up by name; a numeric segment indexes an array (`items.0.name`). Unlike
/// filters, this does not fan out over arrays: it names at most one value.
pub(crate) fn get_path<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |cur, seg| match cur {
        Value::Object(map) => map.get(seg),
        Value::Array(items) => array_index(seg).and_then(|i| items.get(i)),
        _ => None,
    })
}

/// The index named by an all-digit path segment.
pub(crate) fn array_index(seg: &str) -> Option<usize> {
    if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seg.parse().ok()
}

/// The direction of a sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// One key of a sort: a dotted field path and a direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SortKey {
    /// Dotted path of the field to sort on.
    pub field: String,
    /// The direction.
    pub order: Order,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A list request: raw filter (kept raw so MongoDB can receive it natively), sort, skip, limit
/// and text search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// The MongoDB-style filter document; `{}` matches everything.
    #[serde(default = "empty_object")]
    pub filter: Value,
    /// Sort keys, most significant first.
    #[serde(default)]
    pub sort: Vec<SortKey>,
    /// At most this many results (`0`, as in MongoDB, means no limit).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Skip this many results first.
    #[serde(default)]
    pub skip: Option<u64>,
    /// A `$text`-like search (see [`text_matches`]).
    #[serde(default)]
    pub text: Option<String>,
}

impl Default for Query {
    fn default() -> Self {
        Self::all()
    }
}

impl Query {
    /// A query with this filter and nothing else.
    pub fn new(filter: Value) -> Self {
        Self {
            filter,
            sort: Vec::new(),
            limit: None,
            skip: None,
            text: None,
        }
    }

    /// A query for every document.
    pub fn all() -> Self {
        Self::new(empty_object())
    }

    /// Appends a sort key.
    pub fn sort(mut self, field: impl Into<String>, order: Order) -> Self {
        self.sort.push(SortKey {
            field: field.into(),
            order,
        });
        self
    }

    /// Returns at most `n` documents.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skips the first `n` documents.
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = Some(n);
        self
    }

    /// Adds a text search.
    pub fn text(mut self, s: impl Into<String>) -> Self {
        self.text = Some(s.into());
        self
    }

    /// Parses a sort specification: either `"value,-status"` (a leading `-` sorts descending,
    /// a leading `+` ascending) or a JSON object `{"value": 1, "status": -1}` (also `"asc"` /
    /// `"desc"`), keys kept in their written order. An empty spec means no sort.
    pub fn parse_sort(spec: &str) -> Result<Vec<SortKey>> {
        let spec = spec.trim();
        if spec.starts_with('{') {
            let OrderedObject(pairs) = serde_json::from_str(spec)
                .map_err(|e| Error::bad_request(format!("invalid sort object: {e}")))?;
            return pairs
                .into_iter()
                .map(|(field, dir)| {
                    let order = match &dir {
                        Value::Number(n) if compare_numbers(n, &Number::from(1)).is_eq() => {
                            Order::Asc
                        }
                        Value::Number(n) if compare_numbers(n, &Number::from(-1)).is_eq() => {
                            Order::Desc
                        }
                        Value::String(s) if s.eq_ignore_ascii_case("asc") => Order::Asc,
                        Value::String(s) if s.eq_ignore_ascii_case("desc") => Order::Desc,
                        _ => {
                            return Err(Error::bad_request(format!(
                                "sort direction of `{field}` must be 1 or -1, got {dir}"
                            )));
                        }
                    };
                    check_sort_field(&field)?;
                    Ok(SortKey { field, order })
                })
                .collect();
        }
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|part| {
                let (field, order) = if let Some(f) = part.strip_prefix('-') {
                    (f, Order::Desc)
                } else if let Some(f) = part.strip_prefix('+') {
                    (f, Order::Asc)
                } else {
                    (part, Order::Asc)
                };
                let field = field.trim();
                check_sort_field(field)?;
                Ok(SortKey {
                    field: field.to_owned(),
                    order,
                })
            })
            .collect()
    }

    /// Parses [`Query::filter`].
    pub fn filter(&self) -> Result<Filter> {
        Filter::parse(&self.filter)
    }

    /// Runs the query over `(resource_id, document)` pairs: keeps the documents matching the
    /// filter and the text search, sorts them stably by the sort keys (a missing field sorts as
    /// null; an array sorts by its smallest element ascending, its largest descending; ties are
    /// broken by id ascending), then skips and limits.
    pub fn apply<I: IntoIterator<Item = (String, Value)>>(
        &self,
        docs: I,
    ) -> Result<Vec<(String, Value)>> {
        let filter = self.filter()?;
        let text = self.text.as_deref().map(TextSearch::parse);
        for key in &self.sort {
            check_sort_field(&key.field)?;
        }
        let mut kept: Vec<(Vec<Value>, String, Value)> = docs
            .into_iter()
            .filter(|(_, doc)| filter.matches(doc) && text.as_ref().is_none_or(|t| t.matches(doc)))
            .map(|(id, doc)| {
                let keys = self.sort.iter().map(|k| sort_value(&doc, k)).collect();
                (keys, id, doc)
            })
            .collect();
        kept.sort_by(|(ka, ia, _), (kb, ib, _)| {
            ka.iter()
                .zip(kb)
                .zip(&self.sort)
                .map(|((a, b), key)| match key.order {
                    Order::Asc => compare(a, b),
                    Order::Desc => compare(b, a),
                })
                .find(|o| o.is_ne())
                .unwrap_or_else(|| ia.cmp(ib))
        });
        let skip = self
            .skip
            .map_or(0, |s| usize::try_from(s).unwrap_or(usize::MAX));
        let limit = match self.limit {
            None | Some(0) => usize::MAX,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        Ok(kept
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(|(_, id, doc)| (id, doc))
            .collect())
    }
}

/// The comma form of a `sort` the HTTP API takes (`value,-status`: fields of letters, digits
/// and `_`, dotted, each with an optional `+` or `-`), or none; the JSON object form is also
/// read ([`Query::parse_sort`]).
pub const SORT_PATTERN: &str =
    "^([+-]?[A-Za-z0-9_]+(\\.[A-Za-z0-9_]+)*(,[+-]?[A-Za-z0-9_]+(\\.[A-Za-z0-9_]+)*)*)?$";

/// Whether a `sort` in the comma form matches [`SORT_PATTERN`].
pub fn sort_matches_pattern(spec: &str) -> bool {
    let field = |f: &str| {
        f.split('.').all(|seg| {
            !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    };
    spec.is_empty()
        || spec.split(',').all(|part| {
            field(
                part.strip_prefix('-')
                    .or_else(|| part.strip_prefix('+'))
                    .unwrap_or(part),
            )
        })
}

fn check_sort_field(field: &str) -> Result<()> {
    if field.is_empty() || field.split('.').any(str::is_empty) || field.starts_with('$') {
        return Err(Error::bad_request(format!("invalid sort field `{field}`")));
    }
    Ok(())
}

/// The value a document sorts by for `key`, as MongoDB picks it: the smallest (ascending) or
/// largest (descending) of the values the path names, arrays contributing their elements; null
/// when there are none.
fn sort_value(doc: &Value, key: &SortKey) -> Value {
    let segs: Vec<&str> = key.field.split('.').collect();
    let cands = candidates(doc, &segs);
    let values = cands.iter().flat_map(|c| match c {
        None => vec![&Value::Null],
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![*v],
    });
    let best = match key.order {
        Order::Asc => values.min_by(|a, b| compare(a, b)),
        Order::Desc => values.max_by(|a, b| compare(a, b)),
    };
    best.cloned().unwrap_or(Value::Null)
}

/// A JSON object's entries in their written order, whatever `serde_json`'s map ordering.
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedObject, A::Error> {
                let mut pairs = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    pairs.push(entry);
                }
                Ok(OrderedObject(pairs))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;
    use serde_json::json;

    fn m(filter: Value, doc: Value) -> bool {
        Filter::parse(&filter)
            .unwrap_or_else(|e| panic!("filter {filter} should parse: {e}"))
            .matches(&doc)
    }

    fn bad(filter: Value) -> String {
        match Filter::parse(&filter) {
            Err(Error::BadRequest { message }) => message,
            other => panic!("expected bad_request for {filter}, got {other:?}"),
        }
    }

    // ---- get_path ----

    #[test]
    fn get_path_follows_objects_and_indexes() {
        let doc = json!({"a": {"b": [10, {"c": "x"}]}, "n": 1});
        assert_eq!(get_path(&doc, "n"), Some(&json!(1)));
        assert_eq!(get_path(&doc, "a.b.0"), Some(&json!(10)));
        assert_eq!(get_path(&doc, "a.b.1.c"), Some(&json!("x")));
        assert_eq!(get_path(&doc, "a.b.2"), None);
        assert_eq!(get_path(&doc, "a.b.x"), None);
        assert_eq!(get_path(&doc, "n.x"), None);
        assert_eq!(get_path(&doc, "missing"), None);
    }

    #[test]
    fn get_path_numeric_key_on_object_is_a_key() {
        let doc = json!({"a": {"0": "zero"}});
        assert_eq!(get_path(&doc, "a.0"), Some(&json!("zero")));
    }

    // ---- compare ----

    #[test]
    fn compare_orders_type_brackets_like_bson() {
        let order = [
            json!(null),
            json!(5),
            json!("a"),
            json!({"a": 1}),
            json!([1]),
            json!(false),
        ];
        for (i, a) in order.iter().enumerate() {
            for (j, b) in order.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn compare_numbers_across_representations() {
        assert_eq!(compare(&json!(2), &json!(2.0)), Ordering::Equal);
        assert_eq!(compare(&json!(-1), &json!(u64::MAX)), Ordering::Less);
        assert_eq!(
            compare(&json!(u64::MAX), &json!(i64::MAX)),
            Ordering::Greater
        );
        assert_eq!(compare(&json!(2), &json!(2.5)), Ordering::Less);
        assert_eq!(compare(&json!(3), &json!(2.5)), Ordering::Greater);
        assert_eq!(compare(&json!(-3), &json!(-2.5)), Ordering::Less);
        assert_eq!(compare(&json!(1.5), &json!(1)), Ordering::Greater);
        assert_eq!(compare(&json!(1e300), &json!(u64::MAX)), Ordering::Greater);
        assert_eq!(compare(&json!(-1e300), &json!(i64::MIN)), Ordering::Less);
        // 2^53 + 1 is not representable as f64: exact comparison still tells them apart.
        assert_eq!(
            compare(
                &json!(9_007_199_254_740_993_i64),
                &json!(9_007_199_254_740_992.0)
            ),
            Ordering::Greater
        );
    }

    #[test]
    fn compare_strings_bools_arrays_objects() {
        assert_eq!(compare(&json!("a"), &json!("b")), Ordering::Less);
        assert_eq!(compare(&json!("B"), &json!("a")), Ordering::Less);
        assert_eq!(compare(&json!(false), &json!(true)), Ordering::Less);
        assert_eq!(compare(&json!([1, 2]), &json!([1, 3])), Ordering::Less);
        assert_eq!(compare(&json!([1, 2]), &json!([1, 2, 0])), Ordering::Less);
        assert_eq!(compare(&json!([1, 2.0]), &json!([1, 2])), Ordering::Equal);
        assert_eq!(compare(&json!({"a": 1}), &json!({"a": 2})), Ordering::Less);
        assert_eq!(
            compare(&json!({"a": 1}), &json!({"a": 1, "b": 0})),
            Ordering::Less
        );
        assert_eq!(
            compare(&json!({"a": 1}), &json!({"a": "x"})),
            Ordering::Less
        );
        assert_eq!(compare(&json!(null), &json!(null)), Ordering::Equal);
    }

    // ---- parse errors ----

    #[test]
    fn null_and_empty_match_everything() {
        assert!(m(json!(null), json!({"a": 1})));
        assert!(m(json!({}), json!({"a": 1})));
        assert!(Filter::match_all().matches(&json!({})));
        assert_eq!(Filter::parse(&json!({})).ok(), Some(Filter::match_all()));
    }

    #[test]
    fn non_object_filter_is_rejected() {
        assert!(bad(json!([1])).contains("object"));
        assert!(bad(json!("x")).contains("object"));
        assert!(bad(json!(3)).contains("object"));
    }

    #[test]
    fn unknown_operators_are_named() {
        assert!(bad(json!({"a": {"$foo": 1}})).contains("$foo"));
        assert!(bad(json!({"$where": "1"})).contains("$where"));
        assert!(bad(json!({"a": {"$not": {"$bar": 1}}})).contains("$bar"));
        assert!(bad(json!({"a": {"$regex": "x"}})).contains("$regex"));
    }

    #[test]
    fn mixing_operators_and_fields_is_rejected() {
        let msg = bad(json!({"a": {"$gt": 1, "b": 2}}));
        assert!(msg.contains("mixes"), "{msg}");
    }

    #[test]
    fn logical_operators_need_non_empty_arrays_of_objects() {
        assert!(bad(json!({"$and": []})).contains("$and"));
        assert!(bad(json!({"$or": {"a": 1}})).contains("$or"));
        assert!(bad(json!({"$nor": [1]})).contains("$nor"));
        assert!(bad(json!({"$or": [{"a": {"$zz": 1}}]})).contains("$zz"));
    }

    #[test]
    fn set_operators_need_arrays() {
        assert!(bad(json!({"a": {"$in": 1}})).contains("$in"));
        assert!(bad(json!({"a": {"$nin": "x"}})).contains("$nin"));
        assert!(bad(json!({"a": {"$all": {}}})).contains("$all"));
        assert!(bad(json!({"a": {"$in": [{"$gt": 1}]}})).contains("$in"));
    }

    #[test]
    fn malformed_operands_are_rejected() {
        assert!(bad(json!({"a": {"$size": -1}})).contains("$size"));
        assert!(bad(json!({"a": {"$size": "2"}})).contains("$size"));
        assert!(bad(json!({"a": {"$exists": "yes"}})).contains("$exists"));
        assert!(bad(json!({"a": {"$not": 5}})).contains("$not"));
        assert!(bad(json!({"a": {"$elemMatch": 5}})).contains("$elemMatch"));
        assert!(bad(json!({"$text": "x"})).contains("$text"));
        assert!(bad(json!({"$text": {"$search": 1}})).contains("$search"));
        assert!(bad(json!({"$text": {}})).contains("$search"));
    }

    // ---- equality ----

    #[test]
    fn literal_equality() {
        assert!(m(json!({"a": 1}), json!({"a": 1})));
        assert!(!m(json!({"a": 1}), json!({"a": 2})));
        assert!(!m(json!({"a": 1}), json!({"a": "1"})));
        assert!(!m(json!({"a": 1}), json!({})));
        assert!(m(json!({"a": 1, "b": "x"}), json!({"a": 1, "b": "x"})));
        assert!(!m(json!({"a": 1, "b": "x"}), json!({"a": 1, "b": "y"})));
    }

    #[test]
    fn numbers_are_equal_across_representations() {
        assert!(m(json!({"a": 2}), json!({"a": 2.0})));
        assert!(m(json!({"a": 2.0}), json!({"a": 2})));
        assert!(m(json!({"a": {"$in": [2.0]}}), json!({"a": 2})));
        assert!(m(json!({"a": {"b": 1}}), json!({"a": {"b": 1.0}})));
    }

    #[test]
    fn object_literal_equality_is_exact() {
        assert!(m(
            json!({"a": {"x": 1, "y": 2}}),
            json!({"a": {"y": 2, "x": 1}})
        ));
        assert!(!m(json!({"a": {"x": 1}}), json!({"a": {"x": 1, "y": 2}})));
        assert!(m(json!({"a": {}}), json!({"a": {}})));
        assert!(!m(json!({"a": {}}), json!({"a": {"x": 1}})));
    }

    #[test]
    fn equality_against_array_field() {
        let doc = json!({"tags": ["red", "blue"]});
        assert!(m(json!({"tags": "red"}), doc.clone()));
        assert!(m(json!({"tags": ["red", "blue"]}), doc.clone()));
        assert!(!m(json!({"tags": ["blue", "red"]}), doc.clone()));
        assert!(!m(json!({"tags": "green"}), doc.clone()));
        assert!(m(json!({"tags": {"$eq": "blue"}}), doc));
    }

    #[test]
    fn nested_array_elements_match_whole_only() {
        let doc = json!({"a": [[1, 2], 3]});
        assert!(m(json!({"a": [1, 2]}), doc.clone()));
        assert!(m(json!({"a": 3}), doc.clone()));
        assert!(!m(json!({"a": 1}), doc));
    }

    #[test]
    fn null_matches_missing_and_null() {
        assert!(m(json!({"a": null}), json!({})));
        assert!(m(json!({"a": null}), json!({"a": null})));
        assert!(!m(json!({"a": null}), json!({"a": 0})));
        assert!(m(json!({"a.b": null}), json!({"a": 5})));
        assert!(m(json!({"a": {"$eq": null}}), json!({"b": 1})));
        assert!(m(json!({"a": null}), json!({"a": [1, null]})));
    }

    #[test]
    fn ne_and_nin_match_missing() {
        assert!(m(json!({"a": {"$ne": 1}}), json!({})));
        assert!(m(json!({"a": {"$ne": 1}}), json!({"a": 2})));
        assert!(!m(json!({"a": {"$ne": 1}}), json!({"a": 1.0})));
        assert!(!m(json!({"a": {"$ne": 1}}), json!({"a": [0, 1]})));
        assert!(m(json!({"a": {"$nin": [1, 2]}}), json!({})));
        assert!(m(json!({"a": {"$nin": [1, 2]}}), json!({"a": 3})));
        assert!(!m(json!({"a": {"$nin": [1, 2]}}), json!({"a": 2})));
        assert!(!m(json!({"a": {"$ne": null}}), json!({})));
        assert!(m(json!({"a": {"$ne": null}}), json!({"a": 0})));
    }

    #[test]
    fn in_matches_any_value_and_array_elements() {
        assert!(m(json!({"a": {"$in": [1, 2]}}), json!({"a": 2})));
        assert!(!m(json!({"a": {"$in": [1, 2]}}), json!({"a": 3})));
        assert!(m(
            json!({"a": {"$in": ["x", "y"]}}),
            json!({"a": ["z", "y"]})
        ));
        assert!(m(json!({"a": {"$in": [null]}}), json!({})));
        assert!(!m(json!({"a": {"$in": []}}), json!({"a": 1})));
        assert!(m(json!({"a": {"$nin": []}}), json!({"a": 1})));
    }

    // ---- comparisons ----

    #[test]
    fn comparisons_on_numbers() {
        let doc = json!({"v": 5});
        assert!(m(json!({"v": {"$gt": 4}}), doc.clone()));
        assert!(!m(json!({"v": {"$gt": 5}}), doc.clone()));
        assert!(m(json!({"v": {"$gte": 5.0}}), doc.clone()));
        assert!(m(json!({"v": {"$lt": 5.5}}), doc.clone()));
        assert!(!m(json!({"v": {"$lt": 5}}), doc.clone()));
        assert!(m(json!({"v": {"$lte": 5}}), doc.clone()));
        assert!(m(json!({"v": {"$gt": 1, "$lt": 10}}), doc.clone()));
        assert!(!m(json!({"v": {"$gt": 1, "$lt": 3}}), doc));
    }

    #[test]
    fn comparisons_never_cross_type_brackets() {
        assert!(!m(json!({"v": {"$gt": 1}}), json!({"v": "zzz"})));
        assert!(!m(json!({"v": {"$lt": "a"}}), json!({"v": 1})));
        assert!(!m(json!({"v": {"$gt": 1}}), json!({"v": true})));
        assert!(!m(json!({"v": {"$gte": 1}}), json!({"v": null})));
        assert!(!m(json!({"v": {"$lt": 100}}), json!({})));
        assert!(m(json!({"v": {"$gt": "apple"}}), json!({"v": "banana"})));
    }

    #[test]
    fn comparisons_on_array_fields_match_any_element() {
        let doc = json!({"v": [1, 8, "x"]});
        assert!(m(json!({"v": {"$gt": 5}}), doc.clone()));
        assert!(m(json!({"v": {"$lt": 2}}), doc.clone()));
        assert!(!m(json!({"v": {"$gt": 10}}), doc.clone()));
        // Different elements may satisfy different bounds, as in MongoDB.
        assert!(m(json!({"v": {"$gt": 5, "$lt": 2}}), doc.clone()));
        assert!(m(json!({"v": {"$gte": "x"}}), doc));
    }

    #[test]
    fn gte_null_matches_missing_and_null() {
        assert!(m(json!({"v": {"$gte": null}}), json!({})));
        assert!(m(json!({"v": {"$lte": null}}), json!({"v": null})));
        assert!(!m(json!({"v": {"$gt": null}}), json!({})));
    }

    // ---- exists, size, all, not, elemMatch ----

    #[test]
    fn exists() {
        assert!(m(json!({"a": {"$exists": true}}), json!({"a": null})));
        assert!(!m(json!({"a": {"$exists": true}}), json!({})));
        assert!(m(json!({"a": {"$exists": false}}), json!({})));
        assert!(!m(json!({"a": {"$exists": false}}), json!({"a": 0})));
        assert!(m(
            json!({"a.b": {"$exists": true}}),
            json!({"a": [{"c": 1}, {"b": 2}]})
        ));
        assert!(m(
            json!({"a.b": {"$exists": false}}),
            json!({"a": [{"c": 1}]})
        ));
        assert!(m(json!({"a": {"$exists": 1}}), json!({"a": 1})));
    }

    #[test]
    fn size() {
        assert!(m(json!({"a": {"$size": 2}}), json!({"a": [1, 2]})));
        assert!(!m(json!({"a": {"$size": 1}}), json!({"a": [1, 2]})));
        assert!(m(json!({"a": {"$size": 0}}), json!({"a": []})));
        assert!(!m(json!({"a": {"$size": 0}}), json!({})));
        assert!(!m(json!({"a": {"$size": 1}}), json!({"a": "x"})));
        assert!(m(json!({"a": {"$size": 2.0}}), json!({"a": [1, 2]})));
    }

    #[test]
    fn all() {
        let doc = json!({"tags": ["a", "b", "c"]});
        assert!(m(json!({"tags": {"$all": ["a", "c"]}}), doc.clone()));
        assert!(!m(json!({"tags": {"$all": ["a", "z"]}}), doc.clone()));
        assert!(!m(json!({"tags": {"$all": []}}), doc));
        assert!(m(json!({"t": {"$all": ["x"]}}), json!({"t": "x"})));
    }

    #[test]
    fn not_negates_and_matches_missing() {
        assert!(m(json!({"v": {"$not": {"$gt": 5}}}), json!({"v": 3})));
        assert!(!m(json!({"v": {"$not": {"$gt": 5}}}), json!({"v": 6})));
        assert!(m(json!({"v": {"$not": {"$gt": 5}}}), json!({})));
        assert!(m(json!({"v": {"$not": {"$gt": 5}}}), json!({"v": "str"})));
    }

    #[test]
    fn elem_match() {
        let doc = json!({"items": [{"n": "a", "q": 1}, {"n": "b", "q": 5}], "s": [1, 9]});
        assert!(m(
            json!({"items": {"$elemMatch": {"n": "b", "q": {"$gt": 2}}}}),
            doc.clone()
        ));
        assert!(!m(
            json!({"items": {"$elemMatch": {"n": "a", "q": {"$gt": 2}}}}),
            doc.clone()
        ));
        assert!(!m(
            json!({"s": {"$elemMatch": {"$gt": 2, "$lt": 5}}}),
            doc.clone()
        ));
        assert!(m(
            json!({"s": {"$elemMatch": {"$gt": 2, "$lt": 10}}}),
            doc.clone()
        ));
        assert!(!m(
            json!({"n": {"$elemMatch": {"$gt": 0}}}),
            json!({"n": 5})
        ));
        assert!(m(
            json!({"items": {"$elemMatch": {"$or": [{"n": "z"}, {"q": 1}]}}}),
            doc
        ));
    }

    // ---- paths ----

    #[test]
    fn dotted_paths_into_objects() {
        let doc = json!({"a": {"b": {"c": 3}}});
        assert!(m(json!({"a.b.c": 3}), doc.clone()));
        assert!(m(json!({"a.b": {"c": 3}}), doc.clone()));
        assert!(!m(json!({"a.b.c": 4}), doc.clone()));
        assert!(m(json!({"a.x.c": null}), doc));
    }

    #[test]
    fn dotted_paths_traverse_arrays() {
        let doc = json!({"items": [{"name": "bolt", "qty": 3}, {"name": "nut", "qty": 10}]});
        assert!(m(json!({"items.name": "nut"}), doc.clone()));
        assert!(m(json!({"items.name": "bolt"}), doc.clone()));
        assert!(!m(json!({"items.name": "screw"}), doc.clone()));
        assert!(m(json!({"items.qty": {"$gt": 5}}), doc.clone()));
        assert!(!m(json!({"items.qty": {"$gt": 50}}), doc.clone()));
        assert!(m(
            json!({"items.name": {"$in": ["screw", "nut"]}}),
            doc.clone()
        ));
        assert!(!m(json!({"items.name": {"$ne": "nut"}}), doc.clone()));
        assert!(m(json!({"items.name": {"$ne": "screw"}}), doc));
    }

    #[test]
    fn numeric_segments_index_arrays() {
        let doc = json!({"items": [{"name": "bolt"}, {"name": "nut"}], "v": [5, 6]});
        assert!(m(json!({"items.1.name": "nut"}), doc.clone()));
        assert!(!m(json!({"items.0.name": "nut"}), doc.clone()));
        assert!(m(json!({"v.0": 5}), doc.clone()));
        assert!(m(json!({"v.1": {"$gt": 5}}), doc.clone()));
        assert!(m(json!({"v.7": null}), doc.clone()));
        assert!(m(json!({"v.7": {"$exists": false}}), doc));
    }

    #[test]
    fn deep_traversal_through_arrays_of_arrays_of_objects() {
        let doc = json!({"a": [{"b": [{"c": 1}, {"c": 2}]}, {"b": [{"c": 3}]}]});
        assert!(m(json!({"a.b.c": 3}), doc.clone()));
        assert!(m(json!({"a.b.c": 2}), doc.clone()));
        assert!(!m(json!({"a.b.c": 4}), doc.clone()));
        // Arrays directly nested in arrays are not traversed implicitly.
        assert!(!m(json!({"a.c": 1}), json!({"a": [[{"c": 1}]]})));
    }

    #[test]
    fn null_through_arrays_with_missing_fields() {
        assert!(m(json!({"a.b": null}), json!({"a": [{"b": 1}, {"c": 2}]})));
        assert!(!m(json!({"a.b": null}), json!({"a": [{"b": 1}]})));
        assert!(m(json!({"a.b": null}), json!({"a": []})));
    }

    // ---- logical ----

    #[test]
    fn and_or_nor() {
        let doc = json!({"a": 1, "b": 2});
        assert!(m(json!({"$and": [{"a": 1}, {"b": 2}]}), doc.clone()));
        assert!(!m(json!({"$and": [{"a": 1}, {"b": 3}]}), doc.clone()));
        assert!(m(json!({"$or": [{"a": 9}, {"b": 2}]}), doc.clone()));
        assert!(!m(json!({"$or": [{"a": 9}, {"b": 9}]}), doc.clone()));
        assert!(m(json!({"$nor": [{"a": 9}, {"b": 9}]}), doc.clone()));
        assert!(!m(json!({"$nor": [{"a": 1}]}), doc.clone()));
        assert!(m(json!({"a": 1, "$or": [{"b": 2}, {"c": 3}]}), doc.clone()));
        assert!(!m(json!({"a": 2, "$or": [{"b": 2}]}), doc.clone()));
        assert!(m(
            json!({"$or": [{"$and": [{"a": 1}, {"b": 2}]}, {"z": 1}]}),
            doc
        ));
    }

    #[test]
    fn comment_is_ignored() {
        assert!(m(json!({"$comment": "hi", "a": 1}), json!({"a": 1})));
    }

    // ---- text ----

    #[test]
    fn text_any_whole_word_case_insensitive() {
        let doc = json!({"title": "The Quick brown fox", "tags": ["lazy-dog"]});
        assert!(text_matches(&doc, "quick"));
        assert!(text_matches(&doc, "QUICK"));
        assert!(text_matches(&doc, "cat fox"));
        assert!(text_matches(&doc, "dog"));
        assert!(!text_matches(&doc, "qui"));
        assert!(!text_matches(&doc, "cat"));
    }

    #[test]
    fn text_searches_nested_strings_only() {
        let doc = json!({"a": {"b": [{"c": "Deep value"}]}, "key": 12});
        assert!(text_matches(&doc, "deep"));
        assert!(!text_matches(&doc, "key"));
        assert!(!text_matches(&doc, "12"));
    }

    #[test]
    fn text_phrases() {
        let doc = json!({"t": "The quick brown fox"});
        assert!(text_matches(&doc, "\"quick brown\""));
        assert!(text_matches(&doc, "\"QUICK BROWN\""));
        assert!(!text_matches(&doc, "\"brown quick\""));
        // With a phrase, words do not widen the match.
        assert!(!text_matches(&doc, "fox \"brown quick\""));
        assert!(text_matches(&doc, "zebra \"quick brown\""));
        // Every phrase is required.
        assert!(!text_matches(&doc, "\"quick\" \"zebra\""));
    }

    #[test]
    fn text_exclusions() {
        let doc = json!({"t": "coffee shop"});
        assert!(!text_matches(&doc, "coffee -shop"));
        assert!(text_matches(&doc, "coffee -tea"));
        assert!(!text_matches(&doc, "coffee -\"coffee shop\""));
        assert!(!text_matches(&doc, "-tea"));
        assert!(!text_matches(&doc, ""));
        assert!(!text_matches(&doc, "   "));
    }

    #[test]
    fn text_punctuation_splits_words() {
        let doc = json!({"t": "hello, world!"});
        assert!(text_matches(&doc, "world"));
        assert!(text_matches(&doc, "well-known,world"));
        assert!(!text_matches(&doc, "hell"));
    }

    #[test]
    fn text_in_filter() {
        let doc = json!({"t": "red apple"});
        assert!(m(json!({"$text": {"$search": "apple"}}), doc.clone()));
        assert!(!m(json!({"$text": {"$search": "pear"}}), doc.clone()));
        assert!(m(
            json!({"$text": {"$search": "APPLE", "$caseSensitive": false}}),
            doc.clone()
        ));
        assert!(bad(json!({"$text": {"$search": "x", "$bogus": 1}})).contains("$bogus"));
    }

    // ---- Query ----

    fn docs() -> Vec<(String, Value)> {
        vec![
            ("c".into(), json!({"v": 2, "s": "on", "t": "alpha beta"})),
            ("a".into(), json!({"v": 3, "s": "off", "t": "beta"})),
            ("b".into(), json!({"v": 1, "s": "on", "t": "gamma"})),
            ("d".into(), json!({"s": "on"})),
            ("e".into(), json!({"v": 2, "s": "off"})),
        ]
    }

    fn ids(r: Vec<(String, Value)>) -> Vec<String> {
        r.into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn query_without_sort_orders_by_id() {
        let r = Query::all().apply(docs()).unwrap();
        assert_eq!(ids(r), ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn query_filters_and_sorts() {
        let q = Query::new(json!({"s": "on"})).sort("v", Order::Desc);
        assert_eq!(ids(q.apply(docs()).unwrap()), ["c", "b", "d"]);
        let q = Query::new(json!({"s": "on"})).sort("v", Order::Asc);
        // Missing sorts as null: first ascending.
        assert_eq!(ids(q.apply(docs()).unwrap()), ["d", "b", "c"]);
    }

    #[test]
    fn query_sort_ties_break_by_id() {
        let q = Query::all().sort("v", Order::Asc);
        assert_eq!(ids(q.apply(docs()).unwrap()), ["d", "b", "c", "e", "a"]);
        let q = Query::all().sort("v", Order::Desc);
        assert_eq!(ids(q.apply(docs()).unwrap()), ["a", "c", "e", "b", "d"]);
    }

    #[test]
    fn query_multiple_sort_keys() {
        let q = Query::all().sort("s", Order::Asc).sort("v", Order::Desc);
        assert_eq!(ids(q.apply(docs()).unwrap()), ["a", "e", "c", "b", "d"]);
    }

    #[test]
    fn query_skip_and_limit() {
        let q = Query::all().sort("v", Order::Asc).skip(1).limit(2);
        assert_eq!(ids(q.apply(docs()).unwrap()), ["b", "c"]);
        let q = Query::all().skip(10);
        assert!(q.apply(docs()).unwrap().is_empty());
        let q = Query::all().limit(0);
        assert_eq!(q.apply(docs()).unwrap().len(), 5);
        let q = Query::all().skip(u64::MAX).limit(u64::MAX);
        assert!(q.apply(docs()).unwrap().is_empty());
    }

    #[test]
    fn query_text() {
        let q = Query::all().text("beta");
        assert_eq!(ids(q.apply(docs()).unwrap()), ["a", "c"]);
        let q = Query::new(json!({"s": "on"})).text("beta gamma");
        assert_eq!(ids(q.apply(docs()).unwrap()), ["b", "c"]);
    }

    #[test]
    fn query_bad_filter_is_an_error() {
        let q = Query::new(json!({"v": {"$nope": 1}}));
        assert!(matches!(q.apply(docs()), Err(Error::BadRequest { .. })));
        assert!(q.filter().is_err());
        let q = Query::all().sort("", Order::Asc);
        assert!(matches!(q.apply(docs()), Err(Error::BadRequest { .. })));
    }

    #[test]
    fn query_sorts_arrays_by_min_or_max() {
        let docs = vec![
            ("x".to_string(), json!({"v": [1, 10]})),
            ("y".to_string(), json!({"v": 5})),
        ];
        let asc = Query::all()
            .sort("v", Order::Asc)
            .apply(docs.clone())
            .unwrap();
        assert_eq!(ids(asc), ["x", "y"]);
        let desc = Query::all().sort("v", Order::Desc).apply(docs).unwrap();
        assert_eq!(ids(desc), ["x", "y"]);
    }

    #[test]
    fn query_sorts_by_dotted_path_and_mixed_types() {
        let docs = vec![
            ("1".to_string(), json!({"a": {"b": "str"}})),
            ("2".to_string(), json!({"a": {"b": 7}})),
            ("3".to_string(), json!({"a": {"b": null}})),
            ("4".to_string(), json!({"a": {"b": true}})),
        ];
        let r = Query::all().sort("a.b", Order::Asc).apply(docs).unwrap();
        assert_eq!(ids(r), ["3", "2", "1", "4"]);
    }

    #[test]
    fn query_serde_defaults_and_roundtrip() {
        let q: Query = serde_json::from_value(json!({})).unwrap();
        assert_eq!(q, Query::default());
        assert_eq!(q.filter, json!({}));
        let q = Query::new(json!({"a": 1}))
            .sort("v", Order::Desc)
            .limit(3)
            .skip(1)
            .text("x");
        let v = serde_json::to_value(&q).unwrap();
        assert_eq!(v["sort"], json!([{"field": "v", "order": "desc"}]));
        let back: Query = serde_json::from_value(v).unwrap();
        assert_eq!(back, q);
    }

    #[test]
    fn parse_sort_comma_list() {
        let keys = Query::parse_sort("value,-status, +name").unwrap();
        assert_eq!(
            keys,
            vec![
                SortKey {
                    field: "value".into(),
                    order: Order::Asc
                },
                SortKey {
                    field: "status".into(),
                    order: Order::Desc
                },
                SortKey {
                    field: "name".into(),
                    order: Order::Asc
                },
            ]
        );
        assert!(Query::parse_sort("").unwrap().is_empty());
        assert!(Query::parse_sort("-").is_err());
        assert!(Query::parse_sort("a..b").is_err());
    }

    #[test]
    fn parse_sort_json_keeps_written_order() {
        let keys = Query::parse_sort(r#"{"value": 1, "status": -1, "a": "desc"}"#).unwrap();
        assert_eq!(
            keys,
            vec![
                SortKey {
                    field: "value".into(),
                    order: Order::Asc
                },
                SortKey {
                    field: "status".into(),
                    order: Order::Desc
                },
                SortKey {
                    field: "a".into(),
                    order: Order::Desc
                },
            ]
        );
        assert!(matches!(
            Query::parse_sort(r#"{"value": 2}"#),
            Err(Error::BadRequest { .. })
        ));
        assert!(matches!(
            Query::parse_sort("{oops"),
            Err(Error::BadRequest { .. })
        ));
    }

    #[test]
    fn condition_for_pull() {
        let Value::Object(ops) = json!({"$gte": 5, "$lt": 8}) else {
            unreachable!()
        };
        let c = Condition::parse(&ops).unwrap();
        assert!(c.matches(&json!(5)));
        assert!(!c.matches(&json!(8)));
        assert!(!c.matches(&json!("6")));
    }
}
