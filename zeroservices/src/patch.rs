//! A MongoDB-subset update language: `$set`, `$unset`, `$inc`, `$push` and `$pull`.
//!
//! A [`Patch`] is kept raw, as the user sent it, so the MongoDB store can pass it through
//! natively; [`Patch::compile`] validates it into an [`Update`] that the other stores apply
//! with MongoDB's semantics:
//!
//! * the patch is a non-empty object of known operators, each with a non-empty object of
//!   `path: value`;
//! * a path touched twice, or a path and one of its prefixes (`a` and `a.b`), is a conflict;
//! * `_id` cannot be modified;
//! * `$set` creates missing intermediate objects, indexes arrays with numeric segments (padding
//!   with nulls past the end) and refuses to traverse scalars;
//! * applying is atomic: on error the document is left unchanged.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};
use crate::limits::{DEPTH_CEILING, Limits};
use crate::query::{
    Condition, Filter, array_index, compare, get_path, is_operator_object, type_name, values_equal,
};

/// The largest array index an update may create, as MongoDB limits backfilling with nulls.
const MAX_ARRAY_INDEX: usize = 1_500_000;

/// The operators an update may use.
const OPERATORS: &str = "$set, $unset, $inc, $push, $pull";

/// An update document, raw (as sent by users, passed natively to MongoDB), such as
/// `{"$set": {"status": "on"}, "$inc": {"count": 1}}`. Serializes transparently as the JSON
/// object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Patch(pub Value);

impl Patch {
    /// Wraps a raw update document (validated later, by [`Patch::compile`]).
    pub fn new(v: Value) -> Self {
        Self(v)
    }

    /// The raw update document.
    pub fn as_value(&self) -> &Value {
        &self.0
    }

    /// Validates the update document into an [`Update`]; a malformed one is a bad request.
    ///
    /// Only the hard ceiling of 100 segments per path applies here (a deeper
    /// document could not be stored and read back); the owner of a collection compiles with
    /// its node's [`Limits`] ([`Patch::compile_with`]).
    pub fn compile(&self) -> Result<Update> {
        let ceiling = Limits {
            max_patch_paths: usize::MAX,
            max_path_segments: DEPTH_CEILING,
            ..Limits::default()
        };
        Update::parse(&self.0, &ceiling)
    }

    /// Validates the update document within `limits`: at most `max_patch_paths` paths, each
    /// of at most `max_path_segments` segments ([`Error::Limit`] otherwise, before any other
    /// work on the paths).
    pub fn compile_with(&self, limits: &Limits) -> Result<Update> {
        Update::parse(&self.0, limits)
    }

    /// Compiles and applies the update to `doc`, atomically.
    pub fn apply(&self, doc: &mut Value) -> Result<()> {
        self.compile()?.apply(doc)
    }
}

/// A parsed, validated update.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    ops: Vec<FieldUpdate>,
}

/// One operator applied to one path.
#[derive(Debug, Clone, PartialEq)]
struct FieldUpdate {
    path: Vec<String>,
    action: Action,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Set(Value),
    Unset,
    Inc(Number),
    Push(Push),
    Pull(Pull),
}

#[derive(Debug, Clone, PartialEq)]
struct Push {
    each: Vec<Value>,
    position: Option<i64>,
    slice: Option<i64>,
    sort: Option<PushSort>,
}

#[derive(Debug, Clone, PartialEq)]
enum PushSort {
    /// Sort the elements themselves: `true` ascending.
    Values(bool),
    /// Sort object elements by fields: `(path, ascending)`.
    Fields(Vec<(String, bool)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Pull {
    /// Remove elements equal to the value.
    Equal(Value),
    /// Remove elements satisfying an operator object (`{"$gte": 5}`).
    Condition(Condition),
    /// Remove object elements matching a filter (`{"name": "x"}`).
    Filter(Filter),
}

impl Update {
    fn parse(patch: &Value, limits: &Limits) -> Result<Update> {
        let Value::Object(operators) = patch else {
            return Err(Error::bad_request(format!(
                "an update must be an object of operators such as {{\"$set\": {{...}}}}, got {}",
                type_name(patch)
            )));
        };
        if operators.is_empty() {
            return Err(Error::bad_request(format!(
                "an update must not be empty; use one of {OPERATORS}"
            )));
        }
        let mut ops = Vec::new();
        let mut paths = 0usize;
        for (op, fields) in operators {
            if !op.starts_with('$') {
                return Err(Error::bad_request(format!(
                    "`{op}` is not an update operator; to change a field write \
                     {{\"$set\": {{\"{op}\": ...}}}}"
                )));
            }
            if !matches!(op.as_str(), "$set" | "$unset" | "$inc" | "$push" | "$pull") {
                return Err(Error::bad_request(format!(
                    "unknown update operator `{op}`; supported: {OPERATORS}"
                )));
            }
            let fields = match fields {
                Value::Object(f) if !f.is_empty() => f,
                other => {
                    return Err(Error::bad_request(format!(
                        "`{op}` needs a non-empty object of path: value, got {}",
                        if other.is_object() {
                            "an empty object"
                        } else {
                            type_name(other)
                        }
                    )));
                }
            };
            paths += fields.len();
            if paths > limits.max_patch_paths {
                return Err(Error::limit(
                    "ZS_MAX_PATCH_PATHS",
                    limits.max_patch_paths,
                    format!("a patch touching {paths} or more paths"),
                ));
            }
            for (path, arg) in fields {
                // Counted before splitting: a path of 20,000 segments costs nothing more.
                let segments = path.bytes().filter(|b| *b == b'.').count() + 1;
                if segments > limits.max_path_segments {
                    return Err(Error::limit(
                        "ZS_MAX_PATH_SEGMENTS",
                        limits.max_path_segments,
                        format!("a patch path of {segments} segments"),
                    ));
                }
                let segs = parse_path(op, path)?;
                let action = match op.as_str() {
                    "$set" => Action::Set(arg.clone()),
                    "$unset" => Action::Unset,
                    "$inc" => match arg {
                        Value::Number(n) => Action::Inc(n.clone()),
                        other => {
                            return Err(Error::bad_request(format!(
                                "`$inc` on `{path}` needs a number, got {}",
                                type_name(other)
                            )));
                        }
                    },
                    "$push" => Action::Push(parse_push(path, arg)?),
                    _ => Action::Pull(parse_pull(path, arg)?),
                };
                ops.push(FieldUpdate { path: segs, action });
            }
        }
        check_conflicts(&ops)?;
        Ok(Update { ops })
    }

    /// Applies the update to `doc`. Atomic: on error `doc` is unchanged.
    pub fn apply(&self, doc: &mut Value) -> Result<()> {
        if !doc.is_object() {
            return Err(Error::bad_request(format!(
                "can only update an object, not {}",
                type_name(doc)
            )));
        }
        let mut work = doc.clone();
        for op in &self.ops {
            op.apply(&mut work)?;
        }
        *doc = work;
        Ok(())
    }

    /// The dotted paths this update touches, in the order it applies them.
    pub fn fields(&self) -> Vec<String> {
        self.ops.iter().map(|op| op.path.join(".")).collect()
    }
}

fn parse_path(op: &str, path: &str) -> Result<Vec<String>> {
    if path.is_empty() {
        return Err(Error::bad_request(format!("`{op}` has an empty path")));
    }
    let segs: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segs.iter().any(String::is_empty) {
        return Err(Error::bad_request(format!(
            "`{op}` path `{path}` has an empty segment"
        )));
    }
    if let Some(seg) = segs.iter().find(|s| s.starts_with('$')) {
        return Err(Error::bad_request(format!(
            "`{op}` path `{path}`: positional and `$` segments (`{seg}`) are not supported"
        )));
    }
    if segs.first().is_some_and(|s| s == "_id") {
        return Err(Error::bad_request(format!(
            "`{op}` cannot modify `_id` (path `{path}`)"
        )));
    }
    Ok(segs)
}

/// Two paths conflict when they are equal or one is a prefix of the other. Sorted by segments,
/// a path is directly followed by the paths it prefixes, so comparing neighbours finds every
/// conflict: O(n log n), not O(n²), in the number of paths.
fn check_conflicts(ops: &[FieldUpdate]) -> Result<()> {
    let mut sorted: Vec<&FieldUpdate> = ops.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for pair in sorted.windows(2) {
        let (short, long) = (pair[0], pair[1]);
        if long.path.starts_with(&short.path) {
            return Err(Error::bad_request(format!(
                "updating the path `{}` would create a conflict at `{}`",
                long.path.join("."),
                short.path.join(".")
            )));
        }
    }
    Ok(())
}

fn parse_push(path: &str, arg: &Value) -> Result<Push> {
    let plain = |v: &Value| Push {
        each: vec![v.clone()],
        position: None,
        slice: None,
        sort: None,
    };
    let Value::Object(map) = arg else {
        return Ok(plain(arg));
    };
    if !map.contains_key("$each") {
        if map.keys().any(|k| k.starts_with('$')) {
            return Err(Error::bad_request(format!(
                "`$push` on `{path}`: modifiers need `$each`, and values cannot hold `$` fields"
            )));
        }
        return Ok(plain(arg));
    }
    let mut push = Push {
        each: Vec::new(),
        position: None,
        slice: None,
        sort: None,
    };
    let int = |key: &str, v: &Value| {
        v.as_i64().ok_or_else(|| {
            Error::bad_request(format!("`$push` on `{path}`: `{key}` needs an integer"))
        })
    };
    let direction = |v: &Value| match v.as_i64() {
        Some(1) => Some(true),
        Some(-1) => Some(false),
        _ => None,
    };
    for (key, v) in map {
        match key.as_str() {
            "$each" => match v {
                Value::Array(items) => push.each = items.clone(),
                other => {
                    return Err(Error::bad_request(format!(
                        "`$push` on `{path}`: `$each` needs an array, got {}",
                        type_name(other)
                    )));
                }
            },
            "$position" => push.position = Some(int(key, v)?),
            "$slice" => push.slice = Some(int(key, v)?),
            "$sort" => {
                let sort = match v {
                    Value::Object(fields) if !fields.is_empty() => fields
                        .iter()
                        .map(|(f, d)| direction(d).map(|asc| (f.clone(), asc)))
                        .collect::<Option<Vec<_>>>()
                        .map(PushSort::Fields),
                    other => direction(other).map(PushSort::Values),
                };
                push.sort = Some(sort.ok_or_else(|| {
                    Error::bad_request(format!(
                        "`$push` on `{path}`: `$sort` needs 1, -1 or {{field: 1 | -1}}"
                    ))
                })?);
            }
            other => {
                return Err(Error::bad_request(format!(
                    "`$push` on `{path}`: unknown modifier `{other}`"
                )));
            }
        }
    }
    Ok(push)
}

fn parse_pull(path: &str, arg: &Value) -> Result<Pull> {
    match arg {
        Value::Object(map) if is_operator_object(arg, path)? => Ok(Pull::Condition(
            Condition::parse(map).map_err(|e| match e {
                Error::BadRequest { message } => {
                    Error::bad_request(format!("`$pull` on `{path}`: {message}"))
                }
                other => other,
            })?,
        )),
        Value::Object(_) => Ok(Pull::Filter(Filter::parse(arg)?)),
        other => Ok(Pull::Equal(other.clone())),
    }
}

impl Push {
    fn apply(&self, items: &mut Vec<Value>) {
        let len = items.len();
        let at = match self.position {
            None => len,
            Some(p) if p >= 0 => usize::try_from(p).unwrap_or(usize::MAX).min(len),
            Some(p) => len.saturating_sub(usize::try_from(p.unsigned_abs()).unwrap_or(usize::MAX)),
        };
        items.splice(at..at, self.each.iter().cloned());
        match &self.sort {
            None => {}
            Some(PushSort::Values(asc)) => items.sort_by(|a, b| directed(compare(a, b), *asc)),
            Some(PushSort::Fields(keys)) => items.sort_by(|a, b| {
                keys.iter()
                    .map(|(field, asc)| {
                        let x = get_path(a, field).unwrap_or(&Value::Null);
                        let y = get_path(b, field).unwrap_or(&Value::Null);
                        directed(compare(x, y), *asc)
                    })
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            }),
        }
        match self.slice {
            None => {}
            Some(n) if n >= 0 => items.truncate(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(n) => {
                let keep = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
                let drop = items.len().saturating_sub(keep);
                items.drain(..drop);
            }
        }
    }
}

fn directed(o: Ordering, asc: bool) -> Ordering {
    if asc { o } else { o.reverse() }
}

impl Pull {
    fn removes(&self, element: &Value) -> bool {
        match self {
            Pull::Equal(v) => values_equal(element, v),
            Pull::Condition(c) => c.matches(element),
            Pull::Filter(f) => element.is_object() && f.matches(element),
        }
    }
}

impl FieldUpdate {
    fn dotted(&self) -> String {
        self.path.join(".")
    }

    fn apply(&self, doc: &mut Value) -> Result<()> {
        let Some((last, parents)) = self.path.split_last() else {
            return Err(Error::internal("empty update path"));
        };
        match &self.action {
            Action::Set(v) => {
                let parent = self.parent_creating(doc, parents)?;
                self.set_leaf(parent, last, v.clone())
            }
            Action::Inc(by) => {
                let parent = self.parent_creating(doc, parents)?;
                let new = match self.get_leaf(parent, last)? {
                    None => Value::Number(by.clone()),
                    Some(Value::Number(cur)) => Value::Number(add(cur, by).ok_or_else(|| {
                        Error::bad_request(format!(
                            "`$inc` on `{}` overflows ({cur} + {by})",
                            self.dotted()
                        ))
                    })?),
                    Some(other) => {
                        return Err(Error::bad_request(format!(
                            "cannot apply `$inc` to `{}`, which is {}",
                            self.dotted(),
                            type_name(other)
                        )));
                    }
                };
                self.set_leaf(parent, last, new)
            }
            Action::Push(push) => {
                let parent = self.parent_creating(doc, parents)?;
                let mut items = match self.get_leaf(parent, last)? {
                    None => Vec::new(),
                    Some(Value::Array(items)) => items.clone(),
                    Some(other) => {
                        return Err(Error::bad_request(format!(
                            "cannot apply `$push` to `{}`, which is {}, not an array",
                            self.dotted(),
                            type_name(other)
                        )));
                    }
                };
                push.apply(&mut items);
                self.set_leaf(parent, last, Value::Array(items))
            }
            Action::Unset => {
                match existing_mut(doc, parents) {
                    Some(Value::Object(map)) => {
                        map.remove(last.as_str());
                    }
                    Some(Value::Array(items)) => {
                        // As MongoDB: unsetting an array element nulls it, keeping positions.
                        if let Some(slot) = array_index(last).and_then(|i| items.get_mut(i)) {
                            *slot = Value::Null;
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
            Action::Pull(pull) => {
                let target = match existing_mut(doc, parents) {
                    Some(Value::Object(map)) => map.get_mut(last.as_str()),
                    Some(Value::Array(items)) => array_index(last).and_then(|i| items.get_mut(i)),
                    _ => None,
                };
                match target {
                    None => Ok(()),
                    Some(Value::Array(items)) => {
                        items.retain(|e| !pull.removes(e));
                        Ok(())
                    }
                    Some(other) => Err(Error::bad_request(format!(
                        "cannot apply `$pull` to `{}`, which is {}, not an array",
                        self.dotted(),
                        type_name(other)
                    ))),
                }
            }
        }
    }

    /// The container of the leaf, creating missing intermediate objects.
    fn parent_creating<'a>(&self, doc: &'a mut Value, parents: &[String]) -> Result<&'a mut Value> {
        let mut cur = doc;
        for (depth, seg) in parents.iter().enumerate() {
            cur = match cur {
                Value::Object(map) => map
                    .entry(seg.clone())
                    .or_insert_with(|| Value::Object(Map::new())),
                Value::Array(items) => {
                    let i = self.index(seg, depth)?;
                    if i >= items.len() {
                        items.resize(i, Value::Null);
                        items.push(Value::Object(Map::new()));
                    }
                    items
                        .get_mut(i)
                        .ok_or_else(|| Error::internal("array index out of range after padding"))?
                }
                other => return Err(self.cannot_create(seg, depth, other)),
            };
        }
        Ok(cur)
    }

    fn get_leaf<'a>(&self, parent: &'a Value, last: &str) -> Result<Option<&'a Value>> {
        let depth = self.path.len() - 1;
        match parent {
            Value::Object(map) => Ok(map.get(last)),
            Value::Array(items) => Ok(items.get(self.index(last, depth)?)),
            other => Err(self.cannot_create(last, depth, other)),
        }
    }

    fn set_leaf(&self, parent: &mut Value, last: &str, value: Value) -> Result<()> {
        let depth = self.path.len() - 1;
        match parent {
            Value::Object(map) => {
                map.insert(last.to_owned(), value);
            }
            Value::Array(items) => {
                let i = self.index(last, depth)?;
                if i >= items.len() {
                    items.resize(i, Value::Null);
                    items.push(value);
                } else if let Some(slot) = items.get_mut(i) {
                    *slot = value;
                }
            }
            other => return Err(self.cannot_create(last, depth, other)),
        }
        Ok(())
    }

    /// The array index named by the segment at `depth`.
    fn index(&self, seg: &str, depth: usize) -> Result<usize> {
        let prefix = self.path[..depth].join(".");
        match array_index(seg) {
            Some(i) if i < MAX_ARRAY_INDEX => Ok(i),
            Some(_) => Err(Error::bad_request(format!(
                "`{}`: index {seg} into array `{prefix}` is too large (at most {})",
                self.dotted(),
                MAX_ARRAY_INDEX - 1
            ))),
            None => Err(Error::bad_request(format!(
                "`{}`: cannot create field `{seg}` in array `{prefix}`; use a numeric index",
                self.dotted()
            ))),
        }
    }

    fn cannot_create(&self, seg: &str, depth: usize, parent: &Value) -> Error {
        Error::bad_request(format!(
            "`{}`: cannot create field `{seg}` in `{}`, which is {}",
            self.dotted(),
            self.path[..depth].join("."),
            type_name(parent)
        ))
    }
}

/// The existing value at `parents`, without creating anything.
fn existing_mut<'a>(doc: &'a mut Value, parents: &[String]) -> Option<&'a mut Value> {
    parents.iter().try_fold(doc, |cur, seg| match cur {
        Value::Object(map) => map.get_mut(seg.as_str()),
        Value::Array(items) => array_index(seg).and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

/// `a + b` as MongoDB's `$inc` does it: integers stay integers (`None` on overflow), any float
/// makes a float.
fn add(a: &Number, b: &Number) -> Option<Number> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => {
            let sum = x + y;
            if let Ok(i) = i64::try_from(sum) {
                Some(Number::from(i))
            } else if a.as_i64().is_none() || b.as_i64().is_none() {
                // An operand beyond i64 already: stay in u64 if possible.
                u64::try_from(sum).ok().map(Number::from)
            } else {
                None
            }
        }
        _ => Number::from_f64(a.as_f64()? + b.as_f64()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn applied(patch: Value, mut doc: Value) -> Value {
        Patch::new(patch.clone())
            .apply(&mut doc)
            .unwrap_or_else(|e| panic!("{patch} should apply: {e}"));
        doc
    }

    fn compile_err(patch: Value) -> String {
        match Patch::new(patch.clone()).compile() {
            Err(Error::BadRequest { message }) => message,
            other => panic!("expected bad_request compiling {patch}, got {other:?}"),
        }
    }

    fn apply_err(patch: Value, doc: Value) -> String {
        let mut after = doc.clone();
        match Patch::new(patch.clone()).apply(&mut after) {
            Err(Error::BadRequest { message }) => {
                assert_eq!(
                    after, doc,
                    "a failed update must leave the document unchanged"
                );
                message
            }
            other => panic!("expected bad_request applying {patch}, got {other:?}"),
        }
    }

    // ---- validation ----

    #[test]
    fn patch_must_be_a_non_empty_object() {
        assert!(compile_err(json!(null)).contains("object"));
        assert!(compile_err(json!([1])).contains("object"));
        assert!(compile_err(json!({})).contains("empty"));
    }

    #[test]
    fn plain_keys_suggest_set() {
        let msg = compile_err(json!({"value": 3}));
        assert!(msg.contains("$set") && msg.contains("value"), "{msg}");
        let msg = compile_err(json!({"$set": {"a": 1}, "b": 2}));
        assert!(msg.contains("$set"), "{msg}");
    }

    #[test]
    fn unknown_operator_is_named() {
        let msg = compile_err(json!({"$rename": {"a": "b"}}));
        assert!(msg.contains("$rename"), "{msg}");
    }

    #[test]
    fn operands_must_be_non_empty_objects() {
        assert!(compile_err(json!({"$set": {}})).contains("$set"));
        assert!(compile_err(json!({"$set": 1})).contains("$set"));
        assert!(compile_err(json!({"$unset": ["a"]})).contains("$unset"));
    }

    #[test]
    fn conflicting_paths_are_rejected() {
        assert!(compile_err(json!({"$set": {"a": 1}, "$unset": {"a": ""}})).contains("conflict"));
        assert!(compile_err(json!({"$set": {"a": 1}, "$inc": {"a.b": 1}})).contains("conflict"));
        assert!(compile_err(json!({"$set": {"a.b.c": 1, "a.b": 2}})).contains("conflict"));
        assert!(
            Patch::new(json!({"$set": {"a.b": 1, "a.c": 2}}))
                .compile()
                .is_ok()
        );
        assert!(
            Patch::new(json!({"$set": {"ab": 1, "a": 2}}))
                .compile()
                .is_ok()
        );
    }

    #[test]
    fn limits_are_checked_before_the_paths_are_split() {
        let limits = Limits::default();
        let long = vec!["a"; 20_000].join(".");
        let e = Patch::new(json!({"$set": {long.clone(): 1}}))
            .compile_with(&limits)
            .unwrap_err();
        assert!(matches!(e, Error::Limit { .. }), "{e:?}");
        assert!(e.to_string().contains("ZS_MAX_PATH_SEGMENTS=32"), "{e}");
        // Without node limits, the hard ceiling still applies.
        assert!(matches!(
            Patch::new(json!({"$set": {long: 1}})).compile(),
            Err(Error::Limit { .. })
        ));
        let at_limit = vec!["a"; 32].join(".");
        assert!(
            Patch::new(json!({"$set": {at_limit: 1}}))
                .compile_with(&limits)
                .is_ok()
        );

        let many: Map<String, Value> = (0..257).map(|i| (format!("f{i}"), json!(i))).collect();
        let e = Patch::new(json!({"$set": many}))
            .compile_with(&limits)
            .unwrap_err();
        assert!(e.to_string().contains("ZS_MAX_PATCH_PATHS=256"), "{e}");
    }

    #[test]
    fn conflicts_among_many_paths_are_found() {
        // 20,000 distinct paths: sorted once, not compared pairwise.
        let mut fields: Map<String, Value> =
            (0..20_000).map(|i| (format!("f{i}.x"), json!(i))).collect();
        assert!(
            Patch::new(json!({"$set": fields.clone()}))
                .compile()
                .is_ok()
        );
        fields.insert("f19999".into(), json!(0));
        let msg = compile_err(json!({"$set": fields}));
        assert!(msg.contains("conflict at `f19999`"), "{msg}");
    }

    #[test]
    fn id_cannot_be_modified() {
        assert!(compile_err(json!({"$set": {"_id": 1}})).contains("_id"));
        assert!(compile_err(json!({"$unset": {"_id": ""}})).contains("_id"));
        assert!(compile_err(json!({"$set": {"_id.x": 1}})).contains("_id"));
        assert!(Patch::new(json!({"$set": {"a._id": 1}})).compile().is_ok());
    }

    #[test]
    fn bad_paths_are_rejected() {
        assert!(compile_err(json!({"$set": {"": 1}})).contains("empty"));
        assert!(compile_err(json!({"$set": {"a..b": 1}})).contains("empty"));
        assert!(compile_err(json!({"$set": {"a.$.b": 1}})).contains("$"));
        assert!(compile_err(json!({"$set": {"a.$[].b": 1}})).contains("$"));
    }

    #[test]
    fn fields_lists_touched_paths() {
        let u = Patch::new(json!({"$set": {"a.b": 1, "c": 2}, "$inc": {"n": 1}}))
            .compile()
            .unwrap();
        let mut fields = u.fields();
        fields.sort();
        assert_eq!(fields, ["a.b", "c", "n"]);
    }

    #[test]
    fn patch_serializes_transparently() {
        let p = Patch::new(json!({"$set": {"a": 1}}));
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({"$set": {"a": 1}}));
        let back: Patch = serde_json::from_value(json!({"$inc": {"n": 2}})).unwrap();
        assert_eq!(back.as_value(), &json!({"$inc": {"n": 2}}));
    }

    #[test]
    fn update_applies_only_to_objects() {
        let u = Patch::new(json!({"$set": {"a": 1}})).compile().unwrap();
        let mut doc = json!([1]);
        assert!(matches!(u.apply(&mut doc), Err(Error::BadRequest { .. })));
    }

    // ---- $set ----

    #[test]
    fn set_top_level_and_replace() {
        assert_eq!(
            applied(json!({"$set": {"a": 1}}), json!({})),
            json!({"a": 1})
        );
        assert_eq!(
            applied(json!({"$set": {"a": {"x": [1]}}}), json!({"a": 5, "b": 2})),
            json!({"a": {"x": [1]}, "b": 2})
        );
    }

    #[test]
    fn set_creates_intermediate_objects() {
        assert_eq!(
            applied(json!({"$set": {"a.b.c": 1}}), json!({"x": 0})),
            json!({"x": 0, "a": {"b": {"c": 1}}})
        );
        assert_eq!(
            applied(json!({"$set": {"a.b": 1}}), json!({"a": {"c": 2}})),
            json!({"a": {"b": 1, "c": 2}})
        );
    }

    #[test]
    fn set_numeric_segment_on_object_is_a_key() {
        assert_eq!(
            applied(json!({"$set": {"a.0": 1}}), json!({})),
            json!({"a": {"0": 1}})
        );
    }

    #[test]
    fn set_through_scalar_is_rejected() {
        let msg = apply_err(json!({"$set": {"a.b": 1}}), json!({"a": "str"}));
        assert!(msg.contains("a.b") && msg.contains("string"), "{msg}");
        apply_err(json!({"$set": {"a.b.c": 1}}), json!({"a": {"b": 5}}));
        apply_err(json!({"$set": {"a.b": 1}}), json!({"a": null}));
    }

    #[test]
    fn set_indexes_arrays() {
        assert_eq!(
            applied(json!({"$set": {"a.1": "x"}}), json!({"a": [0, 1, 2]})),
            json!({"a": [0, "x", 2]})
        );
        assert_eq!(
            applied(
                json!({"$set": {"a.0.n": 9}}),
                json!({"a": [{"n": 1}, {"n": 2}]})
            ),
            json!({"a": [{"n": 9}, {"n": 2}]})
        );
    }

    #[test]
    fn set_beyond_array_end_pads_with_null() {
        assert_eq!(
            applied(json!({"$set": {"a.3": "x"}}), json!({"a": [0]})),
            json!({"a": [0, null, null, "x"]})
        );
        assert_eq!(
            applied(json!({"$set": {"a.2.b": 1}}), json!({"a": []})),
            json!({"a": [null, null, {"b": 1}]})
        );
    }

    #[test]
    fn set_non_numeric_field_in_array_is_rejected() {
        let msg = apply_err(json!({"$set": {"a.x": 1}}), json!({"a": [1]}));
        assert!(msg.contains("numeric"), "{msg}");
    }

    #[test]
    fn set_huge_index_is_rejected() {
        let msg = apply_err(json!({"$set": {"a.99999999999": 1}}), json!({"a": []}));
        assert!(msg.contains("too large"), "{msg}");
    }

    // ---- $unset ----

    #[test]
    fn unset_removes_fields() {
        assert_eq!(
            applied(json!({"$unset": {"a": ""}}), json!({"a": 1, "b": 2})),
            json!({"b": 2})
        );
        assert_eq!(
            applied(
                json!({"$unset": {"a.b": 1}}),
                json!({"a": {"b": 1, "c": 2}})
            ),
            json!({"a": {"c": 2}})
        );
    }

    #[test]
    fn unset_missing_is_a_noop() {
        let doc = json!({"a": {"c": 1}, "s": "x"});
        assert_eq!(applied(json!({"$unset": {"z": ""}}), doc.clone()), doc);
        assert_eq!(applied(json!({"$unset": {"a.z.y": ""}}), doc.clone()), doc);
        assert_eq!(applied(json!({"$unset": {"s.x": ""}}), doc.clone()), doc);
    }

    #[test]
    fn unset_array_element_nulls_it() {
        assert_eq!(
            applied(json!({"$unset": {"a.1": ""}}), json!({"a": [1, 2, 3]})),
            json!({"a": [1, null, 3]})
        );
        assert_eq!(
            applied(json!({"$unset": {"a.9": ""}}), json!({"a": [1]})),
            json!({"a": [1]})
        );
    }

    // ---- $inc ----

    #[test]
    fn inc_integers() {
        assert_eq!(
            applied(json!({"$inc": {"n": 2}}), json!({"n": 3})),
            json!({"n": 5})
        );
        assert_eq!(
            applied(json!({"$inc": {"n": -5}}), json!({"n": 3})),
            json!({"n": -2})
        );
        let out = applied(json!({"$inc": {"n": 1}}), json!({"n": 1}));
        assert!(out["n"].is_i64());
    }

    #[test]
    fn inc_missing_sets_operand() {
        assert_eq!(
            applied(json!({"$inc": {"n": 4}}), json!({})),
            json!({"n": 4})
        );
        assert_eq!(
            applied(json!({"$inc": {"a.b": 1.5}}), json!({})),
            json!({"a": {"b": 1.5}})
        );
    }

    #[test]
    fn inc_with_float_makes_float() {
        let out = applied(json!({"$inc": {"n": 0.5}}), json!({"n": 1}));
        assert_eq!(out["n"].as_f64(), Some(1.5));
        let out = applied(json!({"$inc": {"n": 1}}), json!({"n": 1.5}));
        assert_eq!(out["n"].as_f64(), Some(2.5));
        let out = applied(json!({"$inc": {"n": 0.5}}), json!({"n": 1.5}));
        assert!(out["n"].is_f64());
        assert_eq!(out["n"].as_f64(), Some(2.0));
    }

    #[test]
    fn inc_overflow_is_rejected() {
        let msg = apply_err(json!({"$inc": {"n": 1}}), json!({"n": i64::MAX}));
        assert!(msg.contains("overflow"), "{msg}");
        apply_err(json!({"$inc": {"n": -1}}), json!({"n": i64::MIN}));
    }

    #[test]
    fn inc_non_numeric_is_rejected() {
        assert!(compile_err(json!({"$inc": {"n": "1"}})).contains("number"));
        assert!(compile_err(json!({"$inc": {"n": null}})).contains("number"));
        let msg = apply_err(json!({"$inc": {"n": 1}}), json!({"n": "5"}));
        assert!(msg.contains("$inc") && msg.contains("string"), "{msg}");
        apply_err(json!({"$inc": {"n": 1}}), json!({"n": null}));
        apply_err(json!({"$inc": {"n": 1}}), json!({"n": [1]}));
    }

    #[test]
    fn inc_array_element() {
        assert_eq!(
            applied(json!({"$inc": {"a.1": 10}}), json!({"a": [1, 2]})),
            json!({"a": [1, 12]})
        );
        assert_eq!(
            applied(json!({"$inc": {"a.3": 10}}), json!({"a": [1]})),
            json!({"a": [1, null, null, 10]})
        );
    }

    #[test]
    fn add_handles_u64() {
        let big = Number::from(u64::MAX - 1);
        assert_eq!(add(&big, &Number::from(1)), Some(Number::from(u64::MAX)));
        assert_eq!(add(&Number::from(u64::MAX), &Number::from(1)), None);
        assert_eq!(
            add(&Number::from(u64::MAX), &Number::from(-1)),
            Some(Number::from(u64::MAX - 1))
        );
    }

    // ---- $push ----

    #[test]
    fn push_appends() {
        assert_eq!(
            applied(json!({"$push": {"a": 3}}), json!({"a": [1, 2]})),
            json!({"a": [1, 2, 3]})
        );
        assert_eq!(
            applied(json!({"$push": {"a": [9]}}), json!({"a": [1]})),
            json!({"a": [1, [9]]})
        );
        assert_eq!(
            applied(json!({"$push": {"a": {"x": 1}}}), json!({"a": []})),
            json!({"a": [{"x": 1}]})
        );
    }

    #[test]
    fn push_missing_creates_array() {
        assert_eq!(
            applied(json!({"$push": {"a": 1}}), json!({})),
            json!({"a": [1]})
        );
        assert_eq!(
            applied(json!({"$push": {"x.y": "v"}}), json!({})),
            json!({"x": {"y": ["v"]}})
        );
    }

    #[test]
    fn push_non_array_is_rejected() {
        let msg = apply_err(json!({"$push": {"a": 1}}), json!({"a": 5}));
        assert!(msg.contains("$push") && msg.contains("array"), "{msg}");
        apply_err(json!({"$push": {"a": 1}}), json!({"a": null}));
    }

    #[test]
    fn push_each() {
        assert_eq!(
            applied(
                json!({"$push": {"a": {"$each": [3, 4]}}}),
                json!({"a": [1]})
            ),
            json!({"a": [1, 3, 4]})
        );
        assert_eq!(
            applied(json!({"$push": {"a": {"$each": []}}}), json!({})),
            json!({"a": []})
        );
        assert!(compile_err(json!({"$push": {"a": {"$each": 3}}})).contains("$each"));
    }

    #[test]
    fn push_modifiers() {
        let doc = json!({"a": [1, 2, 3]});
        assert_eq!(
            applied(
                json!({"$push": {"a": {"$each": [0], "$position": 0}}}),
                doc.clone()
            ),
            json!({"a": [0, 1, 2, 3]})
        );
        assert_eq!(
            applied(
                json!({"$push": {"a": {"$each": [9], "$position": -1}}}),
                doc.clone()
            ),
            json!({"a": [1, 2, 9, 3]})
        );
        assert_eq!(
            applied(
                json!({"$push": {"a": {"$each": [4, 5], "$slice": -3}}}),
                doc.clone()
            ),
            json!({"a": [3, 4, 5]})
        );
        assert_eq!(
            applied(
                json!({"$push": {"a": {"$each": [0], "$sort": -1, "$slice": 2}}}),
                doc
            ),
            json!({"a": [3, 2]})
        );
        assert_eq!(
            applied(
                json!({"$push": {"a": {"$each": [{"n": 2}], "$sort": {"n": 1}}}}),
                json!({"a": [{"n": 3}, {"n": 1}]})
            ),
            json!({"a": [{"n": 1}, {"n": 2}, {"n": 3}]})
        );
    }

    #[test]
    fn push_bad_modifiers_are_rejected() {
        assert!(compile_err(json!({"$push": {"a": {"$slice": 2}}})).contains("$each"));
        assert!(
            compile_err(json!({"$push": {"a": {"$each": [1], "$bogus": 1}}})).contains("$bogus")
        );
        assert!(compile_err(json!({"$push": {"a": {"$each": [1], "$sort": 2}}})).contains("$sort"));
        assert!(
            compile_err(json!({"$push": {"a": {"$each": [1], "$slice": "x"}}})).contains("$slice")
        );
    }

    // ---- $pull ----

    #[test]
    fn pull_removes_equal_elements() {
        assert_eq!(
            applied(json!({"$pull": {"a": 2}}), json!({"a": [1, 2, 3, 2, 2.0]})),
            json!({"a": [1, 3]})
        );
        assert_eq!(
            applied(
                json!({"$pull": {"a": [1, 2]}}),
                json!({"a": [[1, 2], [2, 1], 1]})
            ),
            json!({"a": [[2, 1], 1]})
        );
    }

    #[test]
    fn pull_missing_is_a_noop() {
        let doc = json!({"b": 1});
        assert_eq!(applied(json!({"$pull": {"a": 1}}), doc.clone()), doc);
        assert_eq!(applied(json!({"$pull": {"x.y": 1}}), doc.clone()), doc);
    }

    #[test]
    fn pull_non_array_is_rejected() {
        let msg = apply_err(json!({"$pull": {"a": 1}}), json!({"a": "x"}));
        assert!(msg.contains("$pull") && msg.contains("array"), "{msg}");
    }

    #[test]
    fn pull_with_condition() {
        assert_eq!(
            applied(
                json!({"$pull": {"a": {"$gte": 5}}}),
                json!({"a": [1, 5, 7, "x", 3]})
            ),
            json!({"a": [1, "x", 3]})
        );
        assert_eq!(
            applied(
                json!({"$pull": {"a": {"$in": ["x", 1]}}}),
                json!({"a": [1, 5, "x"]})
            ),
            json!({"a": [5]})
        );
        assert!(compile_err(json!({"$pull": {"a": {"$bad": 1}}})).contains("$bad"));
        assert!(compile_err(json!({"$pull": {"a": {"$gt": 1, "b": 2}}})).contains("mixes"));
    }

    #[test]
    fn pull_with_filter_on_objects() {
        let doc = json!({"items": [
            {"name": "a", "qty": 1},
            {"name": "b", "qty": 5},
            {"name": "a", "qty": 9},
            "a"
        ]});
        assert_eq!(
            applied(json!({"$pull": {"items": {"name": "a"}}}), doc.clone()),
            json!({"items": [{"name": "b", "qty": 5}, "a"]})
        );
        assert_eq!(
            applied(
                json!({"$pull": {"items": {"name": "a", "qty": {"$gt": 3}}}}),
                doc
            ),
            json!({"items": [{"name": "a", "qty": 1}, {"name": "b", "qty": 5}, "a"]})
        );
        assert!(compile_err(json!({"$pull": {"items": {"q": {"$nope": 1}}}})).contains("$nope"));
    }

    #[test]
    fn pull_nested_path() {
        assert_eq!(
            applied(
                json!({"$pull": {"a.b": "x"}}),
                json!({"a": {"b": ["x", "y"]}})
            ),
            json!({"a": {"b": ["y"]}})
        );
        assert_eq!(
            applied(json!({"$pull": {"a.0": 1}}), json!({"a": [[1, 2]]})),
            json!({"a": [[2]]})
        );
    }

    // ---- combined & atomicity ----

    #[test]
    fn several_operators_at_once() {
        let out = applied(
            json!({
                "$set": {"status": "on", "meta.by": "me"},
                "$inc": {"count": 1},
                "$unset": {"old": ""},
                "$push": {"log": "x"},
                "$pull": {"tags": "t1"}
            }),
            json!({"count": 1, "old": true, "tags": ["t1", "t2"]}),
        );
        assert_eq!(
            out,
            json!({"status": "on", "meta": {"by": "me"}, "count": 2, "log": ["x"], "tags": ["t2"]})
        );
    }

    #[test]
    fn failure_leaves_document_unchanged() {
        // `$set` on `a` would succeed, `$inc` on `s` fails: nothing is applied.
        apply_err(
            json!({"$set": {"a": 1, "z.y": 2}, "$inc": {"s": 1}}),
            json!({"s": "text", "a": 0}),
        );
        apply_err(
            json!({"$set": {"m.n": 1}, "$push": {"p": 1}}),
            json!({"p": 3}),
        );
    }

    #[test]
    fn compiled_update_is_reusable() {
        let u = Patch::new(json!({"$inc": {"n": 1}})).compile().unwrap();
        let mut doc = json!({"n": 0});
        u.apply(&mut doc).unwrap();
        u.apply(&mut doc).unwrap();
        assert_eq!(doc, json!({"n": 2}));
    }
}
