//! [`Filter`]: a parsed MongoDB-style filter document, and matching documents against it.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::array_index;
use super::compare::{compare, compare_numbers, type_name, type_rank, values_equal};
use super::text::TextSearch;
use crate::error::{Error, Result};

/// A parsed filter.
///
/// Parse one with [`Filter::parse`] from a MongoDB-style filter document, then test documents
/// with [`Filter::matches`].
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Every clause must match.
    clauses: Vec<Clause>,
}

#[derive(Debug, Clone, PartialEq)]
enum Clause {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Nor(Vec<Filter>),
    Text(TextSearch),
    Field { path: String, ops: Vec<Op> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    fn accepts(self, o: Ordering) -> bool {
        match self {
            Self::Gt => o.is_gt(),
            Self::Gte => o.is_ge(),
            Self::Lt => o.is_lt(),
            Self::Lte => o.is_le(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(Value),
    Ne(Value),
    Cmp(CmpOp, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
    Size(usize),
    All(Vec<Value>),
    Not(Vec<Op>),
    ElemMatchValue(Vec<Op>),
    ElemMatchDoc(Filter),
}

/// A condition on a single value, as the operand of `$pull` (`{"$gte": 5}`) uses it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition(Vec<Op>);

impl Condition {
    /// Parses an operator object (`{"$gte": 5, "$lt": 9}`).
    pub(crate) fn parse(ops: &Map<String, Value>) -> Result<Self> {
        parse_ops("", ops).map(Self)
    }

    /// Whether `value` satisfies every operator.
    pub(crate) fn matches(&self, value: &Value) -> bool {
        ops_match(&self.0, &[Some(value)])
    }
}

/// Whether `v` is a non-empty object whose keys all start with `$`; an error if it mixes `$`
/// keys with plain ones.
pub(crate) fn is_operator_object(v: &Value, path: &str) -> Result<bool> {
    let Value::Object(map) = v else {
        return Ok(false);
    };
    let dollars = map.keys().filter(|k| k.starts_with('$')).count();
    if dollars == 0 {
        Ok(false)
    } else if dollars == map.len() {
        Ok(true)
    } else {
        Err(Error::bad_request(format!(
            "the condition on `{path}` mixes operators ($...) and plain fields"
        )))
    }
}

impl Filter {
    /// Parses a MongoDB-style filter document. `null` and `{}` match everything; anything else
    /// than an object, an unknown operator or a malformed operand is a bad request.
    pub fn parse(filter: &Value) -> Result<Filter> {
        match filter {
            Value::Null => Ok(Self::match_all()),
            Value::Object(map) => Self::parse_map(map),
            other => Err(Error::bad_request(format!(
                "a filter must be an object, got {}",
                type_name(other)
            ))),
        }
    }

    /// A filter that matches every document.
    pub fn match_all() -> Filter {
        Filter {
            clauses: Vec::new(),
        }
    }

    /// Whether `doc` matches this filter.
    pub fn matches(&self, doc: &Value) -> bool {
        self.clauses.iter().all(|c| c.matches(doc))
    }

    fn parse_map(map: &Map<String, Value>) -> Result<Filter> {
        let mut clauses = Vec::with_capacity(map.len());
        for (key, value) in map {
            let clause = match key.as_str() {
                "$and" => Clause::And(parse_filter_list(key, value)?),
                "$or" => Clause::Or(parse_filter_list(key, value)?),
                "$nor" => Clause::Nor(parse_filter_list(key, value)?),
                "$text" => Clause::Text(parse_text(value)?),
                "$comment" => continue,
                k if k.starts_with('$') => {
                    return Err(Error::bad_request(format!(
                        "unknown top-level filter operator `{k}`"
                    )));
                }
                path => {
                    let ops = if is_operator_object(value, path)? {
                        match value {
                            Value::Object(m) => parse_ops(path, m)?,
                            _ => Vec::new(),
                        }
                    } else {
                        vec![Op::Eq(value.clone())]
                    };
                    Clause::Field {
                        path: path.to_owned(),
                        ops,
                    }
                }
            };
            clauses.push(clause);
        }
        Ok(Filter { clauses })
    }
}

fn parse_filter_list(op: &str, value: &Value) -> Result<Vec<Filter>> {
    let Value::Array(items) = value else {
        return Err(Error::bad_request(format!(
            "`{op}` needs an array of filters, got {}",
            type_name(value)
        )));
    };
    if items.is_empty() {
        return Err(Error::bad_request(format!(
            "`{op}` needs a non-empty array of filters"
        )));
    }
    items
        .iter()
        .map(|item| match item {
            Value::Object(m) => Filter::parse_map(m),
            other => Err(Error::bad_request(format!(
                "each element of `{op}` must be a filter object, got {}",
                type_name(other)
            ))),
        })
        .collect()
}

fn parse_text(value: &Value) -> Result<TextSearch> {
    let Value::Object(map) = value else {
        return Err(Error::bad_request(
            "`$text` needs an object like {\"$search\": \"words\"}",
        ));
    };
    let mut search = None;
    for (k, v) in map {
        match k.as_str() {
            "$search" => match v {
                Value::String(s) => search = Some(s),
                other => {
                    return Err(Error::bad_request(format!(
                        "`$text.$search` must be a string, got {}",
                        type_name(other)
                    )));
                }
            },
            // Accepted for compatibility with MongoDB; matching is always case- and
            // diacritic-insensitive in the same simple way.
            "$language" | "$caseSensitive" | "$diacriticSensitive" => {}
            other => {
                return Err(Error::bad_request(format!(
                    "unknown `$text` option `{other}`"
                )));
            }
        }
    }
    search
        .map(|s| TextSearch::parse(s))
        .ok_or_else(|| Error::bad_request("`$text` needs a `$search` string"))
}

fn parse_ops(path: &str, map: &Map<String, Value>) -> Result<Vec<Op>> {
    let field = |op: &str| {
        if path.is_empty() {
            format!("`{op}`")
        } else {
            format!("`{op}` on `{path}`")
        }
    };
    let array = |op: &str, v: &Value| -> Result<Vec<Value>> {
        match v {
            Value::Array(items) => {
                for item in items {
                    if is_operator_object(item, path)? {
                        return Err(Error::bad_request(format!(
                            "{} cannot hold operator objects",
                            field(op)
                        )));
                    }
                }
                Ok(items.clone())
            }
            other => Err(Error::bad_request(format!(
                "{} needs an array, got {}",
                field(op),
                type_name(other)
            ))),
        }
    };
    let mut ops = Vec::with_capacity(map.len());
    for (key, arg) in map {
        let op = match key.as_str() {
            "$eq" => Op::Eq(arg.clone()),
            "$ne" => Op::Ne(arg.clone()),
            "$gt" => Op::Cmp(CmpOp::Gt, arg.clone()),
            "$gte" => Op::Cmp(CmpOp::Gte, arg.clone()),
            "$lt" => Op::Cmp(CmpOp::Lt, arg.clone()),
            "$lte" => Op::Cmp(CmpOp::Lte, arg.clone()),
            "$in" => Op::In(array(key, arg)?),
            "$nin" => Op::Nin(array(key, arg)?),
            "$all" => Op::All(array(key, arg)?),
            "$exists" => Op::Exists(match arg {
                Value::Bool(b) => *b,
                Value::Number(n) => !compare_numbers(n, &Number::from(0)).is_eq(),
                Value::Null => false,
                other => {
                    return Err(Error::bad_request(format!(
                        "{} needs a boolean, got {}",
                        field(key),
                        type_name(other)
                    )));
                }
            }),
            "$size" => {
                let size = match arg {
                    Value::Number(n) => n.as_u64().or_else(|| {
                        n.as_f64()
                            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 9.0e15)
                            .map(|f| f as u64)
                    }),
                    _ => None,
                };
                let size = size.and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                    Error::bad_request(format!("{} needs a non-negative integer", field(key)))
                })?;
                Op::Size(size)
            }
            "$not" => match arg {
                Value::Object(m) if !m.is_empty() && m.keys().all(|k| k.starts_with('$')) => {
                    Op::Not(parse_ops(path, m)?)
                }
                _ => {
                    return Err(Error::bad_request(format!(
                        "{} needs an operator object such as {{\"$gt\": 5}}",
                        field(key)
                    )));
                }
            },
            "$elemMatch" => match arg {
                Value::Object(m)
                    if !m.is_empty()
                        && m.keys().all(|k| k.starts_with('$'))
                        && !m
                            .keys()
                            .any(|k| matches!(k.as_str(), "$and" | "$or" | "$nor")) =>
                {
                    Op::ElemMatchValue(parse_ops(path, m)?)
                }
                Value::Object(m) => Op::ElemMatchDoc(Filter::parse_map(m)?),
                other => {
                    return Err(Error::bad_request(format!(
                        "{} needs an object, got {}",
                        field(key),
                        type_name(other)
                    )));
                }
            },
            "$regex" | "$options" => {
                return Err(Error::bad_request(format!(
                    "{} is not supported",
                    field(key)
                )));
            }
            other => {
                return Err(Error::bad_request(format!(
                    "unknown filter operator {}",
                    field(other)
                )));
            }
        };
        ops.push(op);
    }
    Ok(ops)
}

impl Clause {
    fn matches(&self, doc: &Value) -> bool {
        match self {
            Clause::And(fs) => fs.iter().all(|f| f.matches(doc)),
            Clause::Or(fs) => fs.iter().any(|f| f.matches(doc)),
            Clause::Nor(fs) => !fs.iter().any(|f| f.matches(doc)),
            Clause::Text(search) => search.matches(doc),
            Clause::Field { path, ops } => {
                let segs: Vec<&str> = path.split('.').collect();
                let cands = candidates(doc, &segs);
                ops_match(ops, &cands)
            }
        }
    }
}

/// The values a dotted path names in `doc`, fanning out over arrays as MongoDB does: a field
/// segment applied to an array looks into each object element, a numeric segment indexes it.
/// `None` stands for a missing value; the result is never empty.
pub(crate) fn candidates<'a>(doc: &'a Value, segs: &[&str]) -> Vec<Option<&'a Value>> {
    let mut out = Vec::new();
    collect(Some(doc), segs, &mut out);
    if out.is_empty() {
        out.push(None);
    }
    out
}

fn collect<'a>(cur: Option<&'a Value>, segs: &[&str], out: &mut Vec<Option<&'a Value>>) {
    let Some((seg, rest)) = segs.split_first() else {
        out.push(cur);
        return;
    };
    match cur {
        Some(Value::Object(map)) => collect(map.get(*seg), rest, out),
        Some(Value::Array(items)) => {
            if let Some(i) = array_index(seg) {
                collect(items.get(i), rest, out);
            } else {
                // Only one level of implicit traversal: nested arrays and scalars are skipped.
                for item in items {
                    if let Value::Object(map) = item {
                        collect(map.get(*seg), rest, out);
                    }
                }
            }
        }
        _ => out.push(None),
    }
}

fn ops_match(ops: &[Op], cands: &[Option<&Value>]) -> bool {
    ops.iter().all(|op| op_matches(op, cands))
}

/// A candidate and, if it is an array, its elements.
fn expanded(v: &Value) -> impl Iterator<Item = &Value> {
    std::iter::once(v).chain(v.as_array().into_iter().flatten())
}

fn eq_matches(cands: &[Option<&Value>], want: &Value) -> bool {
    cands.iter().any(|c| match c {
        None => want.is_null(),
        Some(v) => expanded(v).any(|x| values_equal(x, want)),
    })
}

fn op_matches(op: &Op, cands: &[Option<&Value>]) -> bool {
    match op {
        Op::Eq(want) => eq_matches(cands, want),
        Op::Ne(want) => !eq_matches(cands, want),
        Op::In(wants) => wants.iter().any(|w| eq_matches(cands, w)),
        Op::Nin(wants) => !wants.iter().any(|w| eq_matches(cands, w)),
        Op::All(wants) => !wants.is_empty() && wants.iter().all(|w| eq_matches(cands, w)),
        Op::Cmp(cmp, bound) => cands.iter().any(|c| match c {
            // A missing field compares as null (so `{$gte: null}` matches it).
            None => bound.is_null() && cmp.accepts(Ordering::Equal),
            Some(v) => expanded(v)
                .any(|x| type_rank(x) == type_rank(bound) && cmp.accepts(compare(x, bound))),
        }),
        Op::Exists(want) => cands.iter().any(Option::is_some) == *want,
        Op::Size(n) => cands
            .iter()
            .any(|c| matches!(c, Some(Value::Array(items)) if items.len() == *n)),
        Op::Not(inner) => !ops_match(inner, cands),
        Op::ElemMatchValue(inner) => array_elements(cands).any(|e| ops_match(inner, &[Some(e)])),
        Op::ElemMatchDoc(filter) => {
            array_elements(cands).any(|e| e.is_object() && filter.matches(e))
        }
    }
}

fn array_elements<'a>(cands: &[Option<&'a Value>]) -> impl Iterator<Item = &'a Value> {
    cands
        .iter()
        .filter_map(|c| c.and_then(Value::as_array))
        .flatten()
}
