//! The constraint keywords of a resource's JSON Schema, enforced by its owner: the rule written
//! once on the Rust type (`#[schemars(length(min = 1))]`, `range(...)`, `regex(pattern = ...)`)
//! is the rule the OpenAPI document shows and the rule every write is held to.
//!
//! serde already decides the shape of a document (types, required fields, enum values,
//! undeclared fields); what a JSON Schema adds on top are these keywords, which this module
//! checks on the document as the type writes it, before the store sees it:
//!
//! | Instance | Keywords |
//! |---|---|
//! | string | `minLength`, `maxLength` (Unicode code points), `pattern` |
//! | number | `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf` |
//! | array | `minItems`, `maxItems`, `uniqueItems`, and `items` / `prefixItems` for the elements |
//! | object | `minProperties`, `maxProperties`, and `properties` / `additionalProperties` for the values |
//!
//! It follows `$ref` (into `$defs` / `definitions`, or `#`), `allOf`, and `anyOf` / `oneOf` as
//! schemars writes them for `Option<T>` and enums: a keyword of an alternative applies when the
//! value has that alternative's shape (`type`, `const` / `enum`, `required`, and the `const`s of
//! its properties, as for a tagged enum). A value no alternative fits is serde's business, not a
//! constraint failure. Other keywords (`format`, `contains`, `patternProperties`,
//! `propertyNames`, `if`/`then`/`else`, ...) are documentation only.
//!
//! A schema is compiled once per resource (and per action argument) when the node is built or
//! the collection registered, regular expressions included. `pattern` is an ECMA-262 regular
//! expression in JSON Schema; the server supports the subset the Rust `regex` crate compiles
//! (no look-around, no backreferences; `\d`, `\w`, `\s` and `\b` are Unicode-aware, wider than
//! ECMA-262's ASCII classes) and refuses a pattern outside it at start-up rather than skip it.
//! A pattern matches anywhere in the string, as in JSON Schema: anchor it (`^...$`) to match
//! the whole string.
//!
//! The work is linear in the document (already bounded by `ZS_MAX_DEPTH` and
//! `ZS_MAX_DOCUMENT_BYTES`): counts (`maxItems`, `maxLength`) are checked before the elements,
//! `uniqueItems` sorts (n log n) rather than comparing every pair, and only the alternatives
//! whose shape fits a value are walked.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Write as _;

use regex::Regex;
use serde_json::{Map, Number, Value};

use crate::{Error, Result};

/// How many schema hops (through `$ref`, `allOf`, alternatives) a check follows without
/// descending into the value: a `$ref` cycle that consumes no value ends here.
const MAX_HOPS: usize = 64;

/// The compiled constraint keywords of one JSON Schema.
#[derive(Debug, Default)]
pub(crate) struct Constraints {
    nodes: Vec<Node>,
    /// The root node, when the schema has any constraint keyword (otherwise there is nothing
    /// to check).
    root: Option<usize>,
}

/// The JSON types a node admits (a bit each); `ANY` when the schema says nothing.
const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const INTEGER: u8 = 4;
const NUMBER: u8 = 8;
const STRING: u8 = 16;
const ARRAY: u8 = 32;
const OBJECT: u8 = 64;
const ANY: u8 = 127;

#[derive(Debug, Default)]
struct Node {
    // Shape: what selects an alternative.
    types: u8,
    /// `const` / `enum`: the values allowed.
    values: Option<Vec<Value>>,
    required: Vec<String>,
    // Composition.
    /// `$ref` and `allOf`: all must hold.
    all: Vec<usize>,
    /// `anyOf` and `oneOf`: one must hold.
    any: Vec<usize>,
    // Strings.
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<Regex>,
    // Numbers.
    minimum: Option<Number>,
    maximum: Option<Number>,
    exclusive_minimum: Option<Number>,
    exclusive_maximum: Option<Number>,
    multiple_of: Option<Number>,
    // Arrays.
    min_items: Option<u64>,
    max_items: Option<u64>,
    unique_items: bool,
    prefix_items: Vec<usize>,
    items: Option<usize>,
    // Objects.
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    properties: Vec<(String, usize)>,
    additional: Option<usize>,
    /// Whether this node or one it leads to has a constraint keyword.
    deep: bool,
}

impl Node {
    fn has_rules(&self) -> bool {
        self.min_length.is_some()
            || self.max_length.is_some()
            || self.pattern.is_some()
            || self.minimum.is_some()
            || self.maximum.is_some()
            || self.exclusive_minimum.is_some()
            || self.exclusive_maximum.is_some()
            || self.multiple_of.is_some()
            || self.min_items.is_some()
            || self.max_items.is_some()
            || self.unique_items
            || self.min_properties.is_some()
            || self.max_properties.is_some()
    }

    fn children(&self) -> impl Iterator<Item = usize> + '_ {
        self.all
            .iter()
            .chain(&self.any)
            .chain(&self.prefix_items)
            .chain(&self.items)
            .chain(self.properties.iter().map(|(_, id)| id))
            .chain(&self.additional)
            .copied()
    }
}

impl Constraints {
    /// Compiles the constraint keywords of `schema` (a root schema with its `$defs`). `what`
    /// names the schema in errors (`the resource power`).
    ///
    /// # Errors
    /// A message naming the schema location, for a `pattern` the regex crate cannot compile,
    /// a malformed constraint keyword or a `$ref` that leads nowhere.
    pub(crate) fn compile(schema: &Value, what: &str) -> std::result::Result<Self, String> {
        let mut compiler = Compiler {
            root: schema,
            nodes: Vec::new(),
            by_ref: HashMap::new(),
        };
        let root = compiler
            .node(schema, "#")
            .map_err(|e| format!("{what}: {e}"))?;
        let mut nodes = compiler.nodes;
        // Which nodes lead to a rule: a fixpoint over the graph (it may have cycles).
        for node in &mut nodes {
            node.deep = node.has_rules();
        }
        loop {
            let mut changed = false;
            for i in 0..nodes.len() {
                if !nodes[i].deep && nodes[i].children().any(|c| nodes[c].deep) {
                    nodes[i].deep = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let root = nodes[root].deep.then_some(root);
        Ok(Self { nodes, root })
    }

    /// Whether the schema has any constraint keyword to check.
    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Checks `value` (a document as the type writes it, or an action's argument).
    ///
    /// # Errors
    /// [`Error::Validation`] naming the field (`name`, `tags[2]`) and the rule
    /// (`shorter than 1 character (minLength)`).
    pub(crate) fn check(&self, value: &Value) -> Result<()> {
        let Some(root) = self.root else {
            return Ok(());
        };
        let mut path = Vec::new();
        match self.check_node(root, value, &mut path, 0) {
            Outcome::Broken(v) => Err(Error::validation(v.path, v.message)),
            // A value of another shape than the schema's is serde's to judge, and it accepted it.
            Outcome::Ok | Outcome::Mismatch => Ok(()),
        }
    }

    /// Whether `value` has the shape of node `id` at its top level (types, values, required
    /// fields, the `const`s of its properties).
    fn fits(&self, id: usize, value: &Value) -> bool {
        self.fits_within(id, value, 0)
    }

    fn fits_within(&self, id: usize, value: &Value, hops: usize) -> bool {
        let node = &self.nodes[id];
        if hops > MAX_HOPS {
            return true;
        }
        if !node
            .all
            .iter()
            .all(|&next| self.fits_within(next, value, hops + 1))
        {
            return false;
        }
        if node.types & type_of(value) == 0 {
            return false;
        }
        if let Some(values) = &node.values
            && !values.iter().any(|v| json_eq(v, value))
        {
            return false;
        }
        if let Value::Object(map) = value {
            if !node.required.iter().all(|k| map.contains_key(k)) {
                return false;
            }
            for (key, child) in &node.properties {
                if let (Some(v), Some(values)) = (map.get(key), &self.nodes[*child].values)
                    && !values.iter().any(|allowed| json_eq(allowed, v))
                {
                    return false;
                }
            }
        }
        true
    }

    fn check_node(
        &self,
        id: usize,
        value: &Value,
        path: &mut Vec<Segment>,
        hops: usize,
    ) -> Outcome {
        if !self.fits(id, value) {
            return Outcome::Mismatch;
        }
        let node = &self.nodes[id];
        if !node.deep || hops > MAX_HOPS {
            return Outcome::Ok;
        }
        for &next in &node.all {
            match self.check_node(next, value, path, hops + 1) {
                Outcome::Ok => {}
                other => return other,
            }
        }
        if !node.any.is_empty() {
            let mut broken = None;
            let mut held = false;
            for &alternative in &node.any {
                if !self.fits(alternative, value) {
                    continue;
                }
                match self.check_node(alternative, value, path, hops + 1) {
                    Outcome::Ok => {
                        held = true;
                        break;
                    }
                    Outcome::Broken(v) => {
                        broken.get_or_insert(v);
                    }
                    Outcome::Mismatch => {}
                }
            }
            if !held {
                return broken.map_or(Outcome::Mismatch, Outcome::Broken);
            }
        }
        let fail = |path: &[Segment], message: String| {
            Outcome::Broken(Violation {
                path: render(path),
                message,
            })
        };
        match value {
            Value::String(s) => {
                if let Some(min) = node.min_length
                    && (s.chars().take(cap(min)).count() as u64) < min
                {
                    return fail(
                        path,
                        format!("shorter than {} (minLength)", count(min, "character")),
                    );
                }
                if let Some(max) = node.max_length
                    && s.chars().take(cap(max).saturating_add(1)).count() as u64 > max
                {
                    return fail(
                        path,
                        format!("longer than {} (maxLength)", count(max, "character")),
                    );
                }
                if let Some(re) = &node.pattern
                    && !re.is_match(s)
                {
                    return fail(
                        path,
                        format!("does not match the pattern `{}` (pattern)", re.as_str()),
                    );
                }
                Outcome::Ok
            }
            Value::Number(n) => {
                let bounds = [
                    (&node.minimum, "less than", "minimum", Ordering::Less, false),
                    (
                        &node.maximum,
                        "greater than",
                        "maximum",
                        Ordering::Greater,
                        false,
                    ),
                    (
                        &node.exclusive_minimum,
                        "not greater than",
                        "exclusiveMinimum",
                        Ordering::Less,
                        true,
                    ),
                    (
                        &node.exclusive_maximum,
                        "not less than",
                        "exclusiveMaximum",
                        Ordering::Greater,
                        true,
                    ),
                ];
                for (bound, words, keyword, wrong, exclusive) in bounds {
                    if let Some(bound) = bound
                        && let Some(order) = compare_numbers(n, bound)
                        && (order == wrong || (exclusive && order == Ordering::Equal))
                    {
                        return fail(path, format!("{words} {bound} ({keyword})"));
                    }
                }
                if let Some(m) = &node.multiple_of
                    && !is_multiple(n, m)
                {
                    return fail(path, format!("not a multiple of {m} (multipleOf)"));
                }
                Outcome::Ok
            }
            Value::Array(items) => {
                let len = items.len() as u64;
                if let Some(min) = node.min_items
                    && len < min
                {
                    return fail(
                        path,
                        format!("fewer than {} (minItems)", count(min, "item")),
                    );
                }
                if let Some(max) = node.max_items
                    && len > max
                {
                    return fail(path, format!("more than {} (maxItems)", count(max, "item")));
                }
                let mut broken = None;
                for (i, item) in items.iter().enumerate() {
                    let schema = node.prefix_items.get(i).copied().or(node.items);
                    let Some(schema) = schema else { continue };
                    path.push(Segment::Index(i));
                    let outcome = self.check_node(schema, item, path, 0);
                    path.pop();
                    match outcome {
                        Outcome::Ok => {}
                        Outcome::Mismatch => return Outcome::Mismatch,
                        Outcome::Broken(v) => {
                            broken.get_or_insert(v);
                        }
                    }
                }
                if let Some(v) = broken {
                    return Outcome::Broken(v);
                }
                if node.unique_items
                    && let Some((a, b)) = first_duplicate(items)
                {
                    return fail(
                        path,
                        format!("items [{a}] and [{b}] are equal (uniqueItems)"),
                    );
                }
                Outcome::Ok
            }
            Value::Object(map) => {
                let len = map.len() as u64;
                if let Some(min) = node.min_properties
                    && len < min
                {
                    return fail(
                        path,
                        format!("fewer than {} (minProperties)", properties(min)),
                    );
                }
                if let Some(max) = node.max_properties
                    && len > max
                {
                    return fail(
                        path,
                        format!("more than {} (maxProperties)", properties(max)),
                    );
                }
                self.check_properties(node, map, path)
            }
            Value::Null | Value::Bool(_) => Outcome::Ok,
        }
    }

    fn check_properties(
        &self,
        node: &Node,
        map: &Map<String, Value>,
        path: &mut Vec<Segment>,
    ) -> Outcome {
        let mut broken = None;
        let mut visit = |schema: usize, key: &str, value: &Value| {
            if !self.nodes[schema].deep && self.fits(schema, value) {
                return None;
            }
            path.push(Segment::Key(key.to_owned()));
            let outcome = self.check_node(schema, value, path, 0);
            path.pop();
            match outcome {
                Outcome::Ok => None,
                Outcome::Mismatch => Some(Outcome::Mismatch),
                Outcome::Broken(v) => {
                    broken.get_or_insert(v);
                    None
                }
            }
        };
        for (key, schema) in &node.properties {
            if let Some(value) = map.get(key)
                && let Some(mismatch) = visit(*schema, key, value)
            {
                return mismatch;
            }
        }
        if let Some(additional) = node.additional {
            for (key, value) in map {
                if node.properties.iter().any(|(k, _)| k == key) {
                    continue;
                }
                if let Some(mismatch) = visit(additional, key, value) {
                    return mismatch;
                }
            }
        }
        broken.map_or(Outcome::Ok, Outcome::Broken)
    }
}

enum Outcome {
    /// The value has the node's shape and keeps its rules.
    Ok,
    /// The value does not have the node's shape (an alternative that does not apply).
    Mismatch,
    /// The value has the node's shape and breaks a rule.
    Broken(Violation),
}

struct Violation {
    path: String,
    message: String,
}

enum Segment {
    Key(String),
    Index(usize),
}

/// A path as the other validation errors write it: `a.b`, `items[2].name`.
fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

/// A count of characters as a bound for `take` (no more than a string can hold).
fn cap(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn properties(n: u64) -> String {
    if n == 1 {
        "1 property".to_owned()
    } else {
        format!("{n} properties")
    }
}

fn type_of(value: &Value) -> u8 {
    match value {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        // An integer is a number too; a float without a fraction is an integer (JSON Schema).
        Value::Number(n) if n.is_f64() && n.as_f64().is_some_and(|f| f.fract() != 0.0) => NUMBER,
        Value::Number(_) => NUMBER | INTEGER,
        Value::String(_) => STRING,
        Value::Array(_) => ARRAY,
        Value::Object(_) => OBJECT,
    }
}

/// A number as an exact integer, when it is one.
fn as_int(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    match (as_int(a), as_int(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn is_multiple(n: &Number, m: &Number) -> bool {
    if let (Some(n), Some(m)) = (as_int(n), as_int(m))
        && m != 0
    {
        return n % m == 0;
    }
    let (Some(n), Some(m)) = (n.as_f64(), m.as_f64()) else {
        return true;
    };
    let q = n / m;
    // Decimal multiples are not exact in binary (0.3 / 0.1): allow a rounding error.
    q.is_finite() && (q - q.round()).abs() <= 1e-9 * q.abs().max(1.0)
}

/// JSON Schema equality: numbers by value (`1` equals `1.0`), objects whatever their key order.
fn json_eq(a: &Value, b: &Value) -> bool {
    json_cmp(a, b) == Ordering::Equal
}

/// A total order of JSON values consistent with [`json_eq`].
fn json_cmp(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b).unwrap_or(Ordering::Equal),
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .map(|(a, b)| json_cmp(a, b))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.len().cmp(&b.len())),
        (Value::Object(a), Value::Object(b)) => {
            let mut ka: Vec<&String> = a.keys().collect();
            let mut kb: Vec<&String> = b.keys().collect();
            ka.sort();
            kb.sort();
            ka.cmp(&kb).then_with(|| {
                ka.iter()
                    .map(|k| json_cmp(&a[k.as_str()], &b[k.as_str()]))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            })
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The first two equal items (by index), sorting rather than comparing every pair.
fn first_duplicate(items: &[Value]) -> Option<(usize, usize)> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| json_cmp(&items[a], &items[b]).then(a.cmp(&b)));
    order
        .windows(2)
        .filter(|w| json_eq(&items[w[0]], &items[w[1]]))
        .map(|w| (w[0], w[1]))
        .min_by_key(|&(a, b)| (b, a))
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    /// The node of each `$ref` target compiled so far (so recursive types end).
    by_ref: HashMap<String, usize>,
}

impl Compiler<'_> {
    fn node(&mut self, schema: &Value, at: &str) -> std::result::Result<usize, String> {
        let id = self.nodes.len();
        self.nodes.push(Node {
            types: ANY,
            ..Node::default()
        });
        let Value::Object(map) = schema else {
            // `true`, `false` (serde decides what is allowed) or something that is no schema.
            return Ok(id);
        };
        let mut node = Node {
            types: ANY,
            ..Node::default()
        };
        if let Some(types) = map.get("type") {
            node.types = match types {
                Value::String(t) => type_bits(t),
                Value::Array(ts) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .map(type_bits)
                    .fold(0, |a, b| a | b),
                _ => ANY,
            };
            if node.types == 0 {
                node.types = ANY;
            }
        }
        if let Some(c) = map.get("const") {
            node.values = Some(vec![c.clone()]);
        } else if let Some(Value::Array(values)) = map.get("enum") {
            node.values = Some(values.clone());
        }
        if let Some(Value::Array(required)) = map.get("required") {
            node.required = required
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
        }
        if let Some(Value::String(target)) = map.get("$ref") {
            let target_id = self.reference(target, at)?;
            node.all.push(target_id);
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            let Some(list) = map.get(key) else { continue };
            let Value::Array(list) = list else {
                return Err(format!("`{key}` at `{at}` is not an array"));
            };
            for (i, sub) in list.iter().enumerate() {
                let sub = self.node(sub, &format!("{at}/{key}/{i}"))?;
                if key == "allOf" {
                    node.all.push(sub);
                } else {
                    node.any.push(sub);
                }
            }
        }
        node.min_length = count_keyword(map, "minLength", at)?;
        node.max_length = count_keyword(map, "maxLength", at)?;
        node.min_items = count_keyword(map, "minItems", at)?;
        node.max_items = count_keyword(map, "maxItems", at)?;
        node.min_properties = count_keyword(map, "minProperties", at)?;
        node.max_properties = count_keyword(map, "maxProperties", at)?;
        node.unique_items = match map.get("uniqueItems") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(format!("`uniqueItems` at `{at}` is not a boolean")),
        };
        node.minimum = number_keyword(map, "minimum", at)?;
        node.maximum = number_keyword(map, "maximum", at)?;
        // Draft 4 wrote `exclusiveMinimum: true` beside `minimum`; 2019-09 on, a number.
        match map.get("exclusiveMinimum") {
            Some(Value::Bool(true)) => node.exclusive_minimum = node.minimum.take(),
            Some(Value::Bool(false)) | None => {}
            Some(_) => node.exclusive_minimum = number_keyword(map, "exclusiveMinimum", at)?,
        }
        match map.get("exclusiveMaximum") {
            Some(Value::Bool(true)) => node.exclusive_maximum = node.maximum.take(),
            Some(Value::Bool(false)) | None => {}
            Some(_) => node.exclusive_maximum = number_keyword(map, "exclusiveMaximum", at)?,
        }
        node.multiple_of = number_keyword(map, "multipleOf", at)?;
        if node
            .multiple_of
            .as_ref()
            .is_some_and(|m| m.as_f64().is_none_or(|f| f <= 0.0))
        {
            return Err(format!("`multipleOf` at `{at}` is not a positive number"));
        }
        if let Some(pattern) = map.get("pattern") {
            let Value::String(pattern) = pattern else {
                return Err(format!("`pattern` at `{at}` is not a string"));
            };
            let re = Regex::new(pattern).map_err(|e| {
                format!(
                    "the pattern `{pattern}` at `{at}` cannot be enforced: the server supports \
                     the regular expressions of the Rust regex crate (no look-around, no \
                     backreferences): {e}"
                )
            })?;
            node.pattern = Some(re);
        }
        match map.get("items") {
            Some(Value::Array(tuple)) => {
                // Draft 4-7 tuples: `items` as an array.
                for (i, sub) in tuple.iter().enumerate() {
                    let sub = self.node(sub, &format!("{at}/items/{i}"))?;
                    node.prefix_items.push(sub);
                }
            }
            Some(items) => node.items = Some(self.node(items, &format!("{at}/items"))?),
            None => {}
        }
        if let Some(Value::Array(tuple)) = map.get("prefixItems") {
            for (i, sub) in tuple.iter().enumerate() {
                let sub = self.node(sub, &format!("{at}/prefixItems/{i}"))?;
                node.prefix_items.push(sub);
            }
        }
        if let Some(Value::Object(properties)) = map.get("properties") {
            for (key, sub) in properties {
                let sub = self.node(sub, &format!("{at}/properties/{}", escape(key)))?;
                node.properties.push((key.clone(), sub));
            }
        }
        if let Some(additional @ Value::Object(_)) = map.get("additionalProperties") {
            node.additional = Some(self.node(additional, &format!("{at}/additionalProperties"))?);
        }
        self.nodes[id] = node;
        Ok(id)
    }

    /// The node of a local `$ref` (`#`, `#/$defs/X`, `#/definitions/X`, any JSON pointer into
    /// the root schema).
    fn reference(&mut self, target: &str, at: &str) -> std::result::Result<usize, String> {
        if let Some(&id) = self.by_ref.get(target) {
            return Ok(id);
        }
        let Some(pointer) = target.strip_prefix('#') else {
            return Err(format!(
                "the `$ref` `{target}` at `{at}` is not local to the schema"
            ));
        };
        let Some(schema) = self.root.pointer(&decode(pointer)) else {
            return Err(format!("the `$ref` `{target}` at `{at}` leads nowhere"));
        };
        // Reserve the id first: a recursive type refers to itself.
        let id = self.nodes.len();
        self.by_ref.insert(target.to_owned(), id);
        let compiled = self.node(schema, target)?;
        debug_assert_eq!(compiled, id);
        Ok(id)
    }
}

fn type_bits(name: &str) -> u8 {
    match name {
        "null" => NULL,
        "boolean" => BOOLEAN,
        "integer" => INTEGER,
        "number" => NUMBER | INTEGER,
        "string" => STRING,
        "array" => ARRAY,
        "object" => OBJECT,
        _ => ANY,
    }
}

/// A JSON pointer in a `$ref` may be percent-encoded (a URI fragment).
fn decode(pointer: &str) -> String {
    let bytes = pointer.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = pointer.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| pointer.to_owned())
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn count_keyword(
    map: &Map<String, Value>,
    key: &str,
    at: &str,
) -> std::result::Result<Option<u64>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let whole = n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                    .map(|f| f as u64)
            });
            whole
                .map(Some)
                .ok_or_else(|| format!("`{key}` at `{at}` is not a non-negative integer"))
        }
        Some(_) => Err(format!("`{key}` at `{at}` is not a non-negative integer")),
    }
}

fn number_keyword(
    map: &Map<String, Value>,
    key: &str,
    at: &str,
) -> std::result::Result<Option<Number>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n.clone())),
        Some(_) => Err(format!("`{key}` at `{at}` is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(schema: Value, value: Value) -> std::result::Result<(), (String, String)> {
        let c = Constraints::compile(&schema, "test").unwrap();
        match c.check(&value) {
            Ok(()) => Ok(()),
            Err(Error::Validation { path, message }) => Err((path, message)),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn strings_numbers_arrays_objects() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^[a-z]+$"},
                "n": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10, "multipleOf": 2},
                "x": {"type": "number", "multipleOf": 0.1},
                "tags": {"type": "array", "maxItems": 2, "uniqueItems": true,
                         "items": {"type": "string", "minLength": 2}},
                "m": {"type": "object", "maxProperties": 1,
                      "additionalProperties": {"type": "integer", "maximum": 5}},
            }
        });
        let ok = |v| check(schema.clone(), v);
        assert_eq!(
            ok(json!({"name": "a", "n": 0, "x": 0.3, "tags": ["ab"], "m": {"k": 5}})),
            Ok(())
        );
        assert_eq!(ok(json!({"name": "abc", "n": 8})), Ok(()));
        let err = |v: Value, path: &str, rule: &str| {
            let (p, m) = ok(v.clone()).unwrap_err();
            assert_eq!(p, path, "{v}: {m}");
            assert!(m.ends_with(&format!("({rule})")), "{v}: {m}");
        };
        err(json!({"name": ""}), "name", "minLength");
        err(json!({"name": "abcd"}), "name", "maxLength");
        err(json!({"name": "A"}), "name", "pattern");
        err(json!({"n": -1}), "n", "minimum");
        err(json!({"n": 10}), "n", "exclusiveMaximum");
        err(json!({"n": 3}), "n", "multipleOf");
        err(json!({"x": 0.25}), "x", "multipleOf");
        err(json!({"tags": ["ab", "cd", "ef"]}), "tags", "maxItems");
        err(json!({"tags": ["ab", "ab"]}), "tags", "uniqueItems");
        err(json!({"tags": ["ab", "c"]}), "tags[1]", "minLength");
        err(json!({"m": {"a": 1, "b": 2}}), "m", "maxProperties");
        err(json!({"m": {"a": 6}}), "m.a", "maximum");
        assert_eq!(
            ok(json!({"name": ""})).unwrap_err().1,
            "shorter than 1 character (minLength)"
        );
        // Code points, not bytes.
        assert_eq!(
            ok(json!({"name": "ééé"})).map_err(|e| e.1),
            Err("does not match the pattern `^[a-z]+$` (pattern)".into())
        );
    }

    #[test]
    fn refs_and_options_as_schemars_writes_them() {
        let schema = json!({
            "type": "object",
            "properties": {
                "inner": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}]},
                "label": {"type": ["string", "null"], "minLength": 2},
                "list": {"type": "array", "items": {"$ref": "#/$defs/Inner"}},
            },
            "$defs": {
                "Inner": {"type": "object", "properties": {
                    "v": {"type": "integer", "minimum": 1},
                    "next": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}]},
                }}
            }
        });
        assert_eq!(
            check(schema.clone(), json!({"inner": null, "label": null})),
            Ok(())
        );
        assert_eq!(
            check(schema.clone(), json!({"inner": {"v": 1, "next": {"v": 2}}})),
            Ok(())
        );
        let (path, _) =
            check(schema.clone(), json!({"inner": {"v": 1, "next": {"v": 0}}})).unwrap_err();
        assert_eq!(path, "inner.next.v");
        let (path, _) = check(schema.clone(), json!({"list": [{"v": 1}, {"v": 0}]})).unwrap_err();
        assert_eq!(path, "list[1].v");
        let (path, _) = check(schema, json!({"label": "x"})).unwrap_err();
        assert_eq!(path, "label");
    }

    #[test]
    fn tagged_alternatives_apply_by_shape() {
        let schema = json!({"oneOf": [
            {"type": "object", "properties": {"kind": {"const": "a"}, "s": {"type": "string", "minLength": 3}}, "required": ["kind"]},
            {"type": "object", "properties": {"kind": {"const": "b"}, "s": {"type": "string"}}, "required": ["kind"]},
        ]});
        assert_eq!(check(schema.clone(), json!({"kind": "b", "s": ""})), Ok(()));
        assert_eq!(
            check(schema.clone(), json!({"kind": "a", "s": "abc"})),
            Ok(())
        );
        assert_eq!(
            check(schema.clone(), json!({"kind": "a", "s": ""}))
                .unwrap_err()
                .0,
            "s"
        );
        // No alternative fits: serde's to judge, not a constraint failure.
        assert_eq!(check(schema, json!({"kind": "c", "s": ""})), Ok(()));
    }

    #[test]
    fn bad_schemas_are_refused() {
        let bad = |schema: Value| Constraints::compile(&schema, "the resource t").unwrap_err();
        let e = bad(json!({"properties": {"s": {"type": "string", "pattern": "(?=a)b"}}}));
        assert!(
            e.contains("the resource t")
                && e.contains("#/properties/s")
                && e.contains("look-around"),
            "{e}"
        );
        assert!(bad(json!({"$ref": "#/$defs/Nope"})).contains("leads nowhere"));
        assert!(bad(json!({"minLength": -1})).contains("minLength"));
        assert!(bad(json!({"multipleOf": 0})).contains("multipleOf"));
        // A self-reference compiles and ends.
        let c = Constraints::compile(&json!({"$ref": "#", "minLength": 1}), "t").unwrap();
        assert!(c.check(&json!("")).is_err());
        assert!(
            Constraints::compile(&json!({"type": "object"}), "t")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn huge_arrays_are_counted_before_their_items() {
        let schema = json!({"type": "array", "maxItems": 3, "uniqueItems": true, "items": {"type": "string", "pattern": "^a"}});
        let huge = Value::Array(vec![json!("a"); 200_000]);
        assert!(
            check(schema.clone(), huge)
                .unwrap_err()
                .1
                .contains("maxItems")
        );
        let schema = json!({"type": "array", "uniqueItems": true});
        let distinct = Value::Array((0..100_000).map(Value::from).collect());
        assert_eq!(check(schema.clone(), distinct), Ok(()));
        assert_eq!(
            check(schema, json!([1, {"a": [1.0]}, 2, {"a": [1]}]))
                .unwrap_err()
                .1,
            "items [1] and [3] are equal (uniqueItems)"
        );
    }
}
